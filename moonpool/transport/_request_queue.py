"""Requests waiting for the server application, taken in turn by connection.

One queue for every connection, first come first served, let a client that
pipelines hundreds of requests put them all ahead of everyone else's: another
client's request then waited behind the whole batch (its latency rose 40-90x).
Here each connection has its own line and the application takes from them in
turn -- one request from each connection that has any, round and round -- so a
request waits behind at most one request per other busy connection.

The queue is bounded in requests and in bytes.  When it is full, connections
wait for room first come first served, each with its one read task, so a greedy
connection cannot take every freed place either.  One request always fits in
an empty queue, whatever its size.

Pure logic plus anyio events; no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar, final

import anyio

__all__ = ["FairQueue"]

T = TypeVar("T")


@final
class _Waiter(Generic[T]):
    """A connection waiting for room, with the request it wants to add."""

    __slots__ = ("admitted", "event", "item", "key", "size")

    def __init__(self, key: str, item: T, size: int) -> None:
        self.key = key
        self.item = item
        self.size = size
        self.event = anyio.Event()
        self.admitted = False


@final
class FairQueue(Generic[T]):
    """Items from many sources (connections), taken round-robin by source."""

    __slots__ = (
        "_bytes",
        "_closed",
        "_items",
        "_lines",
        "_max_bytes",
        "_max_items",
        "_readable",
        "_waiters",
    )

    def __init__(self, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError(
                f"need max_items >= 1 and max_bytes >= 1, got {max_items}, {max_bytes}"
            )
        self._max_items = max_items
        self._max_bytes = max_bytes
        # One line per source with something waiting, in the order they get their
        # next turn (a dict keeps insertion order: moving a source to the end is a
        # pop and a re-insert, both O(1)).
        self._lines: dict[str, deque[tuple[T, int]]] = {}
        self._items = 0
        self._bytes = 0
        self._waiters: deque[_Waiter[T]] = deque()
        self._readable: anyio.Event | None = None
        self._closed = False

    def __len__(self) -> int:
        return self._items

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def _fits(self, size: int) -> bool:
        if not self._items:
            return True  # one item always fits in an empty queue
        return self._items < self._max_items and self._bytes + size <= self._max_bytes

    def _add(self, key: str, item: T, size: int) -> None:
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = deque()
        line.append((item, size))
        self._items += 1
        self._bytes += size
        if self._readable is not None:
            self._readable.set()
            self._readable = None

    def put_nowait(self, key: str, item: T, size: int) -> bool:
        """Add ``item`` from source ``key`` if there is room now (and nobody is
        waiting for it); False otherwise.  Raises ``anyio.ClosedResourceError``
        once closed."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._waiters or not self._fits(size):
            return False
        self._add(key, item, size)
        return True

    async def put(self, key: str, item: T, size: int) -> None:
        """Add ``item``, waiting (first come first served) for room."""
        if self.put_nowait(key, item, size):
            await anyio.lowlevel.checkpoint()
            return
        waiter = _Waiter(key, item, size)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        finally:
            if not waiter.admitted and waiter in self._waiters:
                self._waiters.remove(waiter)
                self._admit()  # it may have been the one holding up the others
        if not waiter.admitted:
            raise anyio.ClosedResourceError

    def get_nowait(self) -> T:
        """The next item in turn; ``anyio.WouldBlock`` if none, ``anyio.EndOfStream``
        once closed."""
        if self._closed:
            raise anyio.EndOfStream
        lines = self._lines
        if not lines:
            raise anyio.WouldBlock
        key = next(iter(lines))
        line = lines.pop(key)
        item, size = line.popleft()
        if line:
            lines[key] = line  # its next item waits for the others' turns
        self._items -= 1
        self._bytes -= size
        if self._waiters:
            self._admit()
        return item

    async def get(self) -> T:
        while True:
            try:
                return self.get_nowait()
            except anyio.WouldBlock:
                pass
            if self._readable is None:
                self._readable = anyio.Event()
            await self._readable.wait()

    def drop(self, key: str) -> int:
        """Forget what source ``key`` has waiting (its connection closed); how many."""
        line = self._lines.pop(key, None)
        dropped = 0
        if line:
            dropped = len(line)
            self._items -= dropped
            self._bytes -= sum(size for _, size in line)
        if self._waiters:
            for waiter in [w for w in self._waiters if w.key == key]:
                self._waiters.remove(waiter)
                waiter.event.set()  # not admitted: its put raises ClosedResourceError
            self._admit()
        return dropped

    def close(self) -> None:
        """Drop everything; getters see ``EndOfStream``, putters ``ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        self._lines.clear()
        self._items = self._bytes = 0
        while self._waiters:
            self._waiters.popleft().event.set()
        if self._readable is not None:
            self._readable.set()
            self._readable = None

    def _admit(self) -> None:
        """Let waiting sources in, in the order they came, while there is room."""
        waiters = self._waiters
        while waiters and self._fits(waiters[0].size):
            waiter = waiters.popleft()
            waiter.admitted = True
            self._add(waiter.key, waiter.item, waiter.size)
            waiter.event.set()

"""A bounded queue of outgoing frames, the loop that writes it, and its fast path.

Both sides of the transport have the same shape of writer: callers append frames
synchronously (``Peer.send``, ``ServerTransport.send_reply``) and one task writes
them to the connection.  A plain deque with a wake-up event does this with less
work per frame than a memory object stream: appending never schedules anything
unless the writer is actually parked, and the writer takes everything queued in
one go, so frames that pile up while a write is in progress leave in a single
``send`` (pipelined requests and replies cost one system call per batch, not one
per frame).

The fast path, ``FrameQueue.put(frame, write_now=True)``, skips the writer task altogether:
while a connection is live its owner sets :attr:`FrameQueue.sender` (see
:func:`moonpool.net._nowait.nonblocking_sender`), and a caller that knows no
more frames are coming soon writes the queue itself, from its own task, with a
non-blocking send.  What the kernel does not take at once stays queued -- as a
fragment that must leave before anything else -- for the writer task.  That takes
two trips through the scheduler off every request/reply exchange on an idle
connection (the writer waking up, and its ``send`` yielding), which is most of
what a lone round trip costs beyond the system calls themselves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container
from typing import final

import anyio
import anyio.abc

from moonpool.net._nowait import NonBlockingSender

__all__ = ["ByteBudget", "COALESCE_BYTES", "FrameQueue", "write_frames"]

#: Frames joined into one write at most (a larger single frame is written alone).
COALESCE_BYTES = 256 * 1024


@final
class ByteBudget:
    """Bytes queued across several frame queues (a server's replies to all clients)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a byte budget must be >= 1, got {limit}")
        self.limit = limit
        self.used = 0


class FrameQueue:
    """FIFO of frames with a capacity in frames, one consumer, never-blocking producers.

    ``on_sent(frames, size)`` is called for everything handed to the connection,
    whichever path wrote it.
    """

    __slots__ = (
        "_batch",
        "_bytes",
        "_closed",
        "_fragment",
        "_fragment_tag",
        "_frames",
        "_in_flight",
        "_in_flight_batch",
        "_room",
        "_waiter",
        "budget",
        "byte_limit",
        "dirty",
        "limit",
        "live",
        "on_sent",
        "sender",
        "writing",
    )

    def __init__(
        self,
        limit: int,
        on_sent: Callable[[int, int], None] | None = None,
        *,
        byte_limit: int | None = None,
        budget: ByteBudget | None = None,
        live: Container[int] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"a frame queue needs room for at least 1 frame, got {limit}")
        if byte_limit is not None and byte_limit < 1:
            raise ValueError(f"a frame queue's byte limit must be >= 1, got {byte_limit}")
        self.limit = limit
        #: Bytes of queued frames beyond which the queue is full (one frame always
        #: fits in an empty queue, however large), and a budget shared with others.
        self.byte_limit = byte_limit
        self.budget = budget
        self._bytes = 0
        self.on_sent = on_sent
        #: Writes to the live connection without waiting; ``None`` while there is
        #: no connection (or it cannot).  Set and cleared by the connection owner.
        self.sender: NonBlockingSender | None = None
        #: True while the writer task is inside ``await stream.send()``: the fast
        #: path must not write then, or the two writes could interleave.
        self.writing = False
        # Bytes of that write: counted until it returns (see take_for_write).
        self._in_flight = 0
        # (frame, the caller's tag: a request's correlation id, see unsent_tags())
        self._frames: deque[tuple[bytes, int | None]] = deque()
        # The unwritten tail of the one frame a short write cut in two: it is
        # already half on the wire, so it goes before any frame; and its tag.
        self._fragment: tuple[bytes, int] | None = None
        self._fragment_tag: int | None = None
        # The (frame, tag) items of the last write taken (see _next_write), and
        # of the write in progress in the writer task, if any.
        self._batch: tuple[tuple[bytes, int | None], ...] | list[tuple[bytes, int | None]] = ()
        self._in_flight_batch: (
            tuple[tuple[bytes, int | None], ...] | list[tuple[bytes, int | None]]
        ) = ()
        self._waiter: anyio.Event | None = None
        # Set when a full queue gets room again (see wait_room).
        self._room: anyio.Event | None = None
        self._closed = False
        #: The tags still worth writing (a client's pending requests): a tagged
        #: frame whose tag is no longer in it -- its call timed out or was
        #: cancelled -- is dropped unwritten.  ``None``: every frame is.
        self.live = live
        #: Set by the owner when a tag may have left :attr:`live`: the next
        #: :meth:`wait`, or a :attr:`full` that would be true, purges first.
        self.dirty = False

    def __len__(self) -> int:
        if self.dirty:
            self.purge()
        return len(self._frames) + (self._fragment is not None)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_bytes(self) -> int:
        """Bytes of the frames queued and not yet taken for writing."""
        return self._bytes

    @property
    def full(self) -> bool:
        if not self._over_limit():
            return False
        if self.dirty:
            self.purge()
            return self._over_limit()
        return True

    def _over_limit(self) -> bool:
        if len(self._frames) >= self.limit:
            return True
        if self._frames and self.byte_limit is not None and self._bytes >= self.byte_limit:
            return True
        budget = self.budget
        return budget is not None and budget.used >= budget.limit

    def purge(self) -> int:
        """Drop the queued frames whose tag is no longer :attr:`live`; returns how many.

        This is what makes "a call that timed out is never written later" hold: its
        frame may still be queued behind a connect that takes longer than the call.
        """
        self.dirty = False
        live = self.live
        if live is None:
            return 0
        kept: deque[tuple[bytes, int | None]] = deque()
        dropped = 0
        for item in self._frames:
            tag = item[1]
            if tag is None or tag in live:
                kept.append(item)
            else:
                dropped += 1
                self._count(-len(item[0]))
        if dropped:
            self._frames = kept
            if self._room is not None:
                self._made_room()
        return dropped

    def put(self, frame: bytes, *, write_now: bool = False, tag: int | None = None) -> None:
        """Append ``frame``; the caller has checked :attr:`closed` and :attr:`full`.

        With ``write_now``, everything queued is written at once from the calling
        task if the connection takes it without waiting (see the module doc);
        only what is left wakes the writer task.  ``tag`` comes back from
        :meth:`unsent_tags` if the frame is still queued when the connection ends.
        """
        self._frames.append((frame, tag))
        self._count(len(frame))
        if write_now and self.sender is not None and not self.writing and self._fragment is None:
            self._write_now(self.sender)
        else:
            self._wake()

    def _write_now(self, send: NonBlockingSender) -> None:
        if self.dirty:
            self.purge()
        frames = self._frames
        while frames:
            data, count = self._next_write()
            sent = send(data)
            self._taken(sent)  # what the kernel did not take stays counted
            if sent < len(data):
                count = self._cut(self._batch, sent, count)
                if sent and self.on_sent is not None:
                    self.on_sent(count, sent)
                self._wake()
                return
            if self.on_sent is not None:
                self.on_sent(count, sent)

    def _cut(
        self,
        batch: tuple[tuple[bytes, int | None], ...] | list[tuple[bytes, int | None]],
        sent: int,
        count: int,
    ) -> int:
        """A short write took ``sent`` bytes of ``batch``: keep the cut frame's rest as
        the fragment and put the frames no byte of which left back at the head.
        Returns how many frames began (each is counted with its first byte).

        Only the cut frame must finish on this connection; the others can still be
        dropped if their request ends first (see :meth:`purge`).
        """
        offset = 0
        for index, (frame, tag) in enumerate(batch):
            end = offset + len(frame)
            if sent < end:
                if sent > offset or count == 0:  # count 0: a fragment's rest, cut again
                    self._fragment = (frame[sent - offset :], 0)
                    self._fragment_tag = tag
                    rest = batch[index + 1 :]
                    began = index + (count != 0)
                else:
                    rest = batch[index:]
                    began = index
                self._frames.extendleft(reversed(rest))
                return began if count else 0
            offset = end
        return count

    def one_way_count(self) -> int:
        """Queued one-way messages (negative tags) no write has started on."""
        return sum(1 for _, tag in self._frames if tag is not None and tag < 0)

    def count_tag(self, wanted: int) -> int:
        """Queued frames tagged ``wanted`` (the fragment included)."""
        count = sum(1 for _, tag in self._frames if tag == wanted)
        return count + (self._fragment is not None and self._fragment_tag == wanted)

    def unsent_tags(self) -> list[int]:
        """Tags of the queued frames no write has started on, oldest first.

        Their bytes never reached any connection, so they can go out on the next
        one as first attempts.  (A batch handed to a ``send`` that failed may or
        may not have arrived, and the fragment of a short write certainly began
        to: neither is listed.)
        """
        return [tag for _, tag in self._frames if tag is not None]

    def started_dead(self) -> bool:
        """Whether a frame whose write has begun (the writer's write in progress, or
        the fragment of a cut one) belongs to a request no longer :attr:`live`.

        Its bytes cannot be taken back: the owner closes the connection instead,
        so that the rest is never written after its call has ended.
        """
        live = self.live
        if live is None:
            return False
        tag = self._fragment_tag
        if self._fragment is not None and tag is not None and tag not in live:
            return True
        return any(tag is not None and tag not in live for _, tag in self._in_flight_batch)

    def clear(self) -> int:
        """Drop every queued frame (and any unfinished fragment); returns how many."""
        dropped = len(self)
        self._frames.clear()
        self._fragment = None
        self._fragment_tag = None
        self._in_flight_batch = ()
        self._count(-self._bytes)  # a write in progress gives its own bytes back
        if self._room is not None:
            self._made_room()
        return dropped

    async def wait_room(self) -> None:
        """Return once the queue is not :attr:`full` (or is closed)."""
        while self.full and not self._closed:
            room = self._room = self._room or anyio.Event()
            await room.wait()

    def _made_room(self) -> None:
        room = self._room
        if room is not None and (not self.full or self._closed):
            self._room = None
            room.set()

    def close(self) -> None:
        """No more frames will come; the writer finishes what is queued, then stops."""
        self._closed = True
        self._wake()
        self._made_room()

    async def wait(self) -> bool:
        """Wait until a frame is queued (True) or the queue is closed and empty (False)."""
        while True:
            # Also after each wake-up: the frame that woke us may have ended since.
            if self.dirty:
                self.purge()
            if self._frames or self._fragment is not None:
                return True
            if self._closed:
                return False
            waiter = self._waiter = anyio.Event()
            await waiter.wait()

    def has_frames(self) -> bool:
        """Whether anything is queued (after dropping frames no longer live)."""
        if self.dirty:
            self.purge()
        return bool(self._frames) or self._fragment is not None

    def take(self) -> tuple[bytes, int]:
        """The next write: everything queued (up to :data:`COALESCE_BYTES`) as one
        buffer, and how many frames start in it (0 for the rest of a batch the
        fast path could only partly write).  Its bytes are no longer counted."""
        data, count = self._next_write()
        self._taken(len(data))
        return data, count

    def take_for_write(self) -> tuple[bytes, int]:
        """Like :meth:`take`, for the writer's ``send``: the bytes leave this queue
        but stay counted in the shared :attr:`budget` until :meth:`end_write` (on
        asyncio they sit in the transport's buffer meanwhile; not counting them let
        a server with many connections hold a write per connection beyond its
        total).  The queue's own ``byte_limit`` does not count them: one write in
        progress per queue is the price of a writer, and counting it there made a
        window of large frames that just fits the limit wait for every write."""
        data, count = self._next_write()
        size = len(data)
        self._bytes -= size
        self._in_flight = size
        self._in_flight_batch = self._batch
        self.writing = True
        if self._room is not None:
            self._made_room()
        return data, count

    def end_write(self) -> None:
        """That ``send`` returned (or failed): its bytes are the kernel's now."""
        self.writing = False
        self._in_flight_batch = ()
        size, self._in_flight = self._in_flight, 0
        budget = self.budget
        if budget is not None and size:
            budget.used -= size
            if self._room is not None:
                self._made_room()

    def _next_write(self) -> tuple[bytes, int]:
        fragment = self._fragment
        if fragment is not None:
            self._fragment = None
            self._batch = ((fragment[0], self._fragment_tag),)
            self._fragment_tag = None
            return fragment
        frames = self._frames
        first = frames.popleft()
        if not frames or len(first[0]) >= COALESCE_BYTES:
            self._batch = (first,)
            return first[0], 1
        batch = [first]
        size = len(first[0])
        while frames and size + len(frames[0][0]) <= COALESCE_BYTES:
            item = frames.popleft()
            batch.append(item)
            size += len(item[0])
        self._batch = batch
        return b"".join([frame for frame, _ in batch]), len(batch)

    def _count(self, size: int) -> None:
        self._bytes += size
        if self.budget is not None:
            self.budget.used += size

    def _taken(self, size: int) -> None:
        self._count(-size)
        if self._room is not None:
            self._made_room()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()


async def write_frames(stream: anyio.abc.ByteStream, queue: FrameQueue) -> None:
    """Write ``queue`` to ``stream`` until the queue is closed and drained.

    Stream errors propagate to the caller, which owns the connection and decides
    what a failure means.
    """
    while await queue.wait():
        data, count = queue.take_for_write()
        try:
            await stream.send(data)
        finally:
            queue.end_write()
        if queue.on_sent is not None:
            queue.on_sent(count, len(data))

"""A bounded queue of outgoing frames and the one loop that writes it.

Both sides of the transport have the same shape of writer: callers append frames
synchronously (``Peer.send``, ``ServerTransport.send_reply``) and one task writes
them to the connection.  A plain deque with a wake-up event does this with less
work per frame than a memory object stream: appending never schedules anything
unless the writer is actually parked, and the writer takes everything queued in
one go, so frames that pile up while a write is in progress leave in a single
``send`` (pipelined requests and replies cost one system call per batch, not one
per frame).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import final

import anyio
import anyio.abc

__all__ = ["COALESCE_BYTES", "FrameQueue", "write_frames"]

#: Frames joined into one write at most (a larger single frame is written alone).
COALESCE_BYTES = 256 * 1024


@final
class FrameQueue:
    """FIFO of frames with a capacity in frames, one consumer, never-blocking producers."""

    __slots__ = ("_closed", "_frames", "_waiter", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a frame queue needs room for at least 1 frame, got {limit}")
        self.limit = limit
        self._frames: deque[bytes] = deque()
        self._waiter: anyio.Event | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def full(self) -> bool:
        return len(self._frames) >= self.limit

    def put(self, frame: bytes) -> None:
        """Append ``frame``; the caller has checked :attr:`closed` and :attr:`full`."""
        self._frames.append(frame)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def clear(self) -> int:
        """Drop every queued frame; returns how many were dropped."""
        dropped = len(self._frames)
        self._frames.clear()
        return dropped

    def close(self) -> None:
        """No more frames will come; the writer finishes what is queued, then stops."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    async def wait(self) -> bool:
        """Wait until a frame is queued (True) or the queue is closed and empty (False)."""
        while not self._frames:
            if self._closed:
                return False
            waiter = self._waiter = anyio.Event()
            await waiter.wait()
        return True

    def take(self) -> tuple[bytes, int]:
        """Everything queued (up to :data:`COALESCE_BYTES`) as one buffer, and its frame count."""
        frames = self._frames
        first = frames.popleft()
        if not frames or len(first) >= COALESCE_BYTES:
            return first, 1
        batch = [first]
        size = len(first)
        while frames and size + len(frames[0]) <= COALESCE_BYTES:
            frame = frames.popleft()
            batch.append(frame)
            size += len(frame)
        return b"".join(batch), len(batch)


async def write_frames(
    stream: anyio.abc.ByteStream,
    queue: FrameQueue,
    on_sent: Callable[[int, int], None] | None = None,
) -> None:
    """Write ``queue`` to ``stream`` until the queue is closed and drained.

    ``on_sent(frames, size)`` is called after each write.  Stream errors propagate
    to the caller, which owns the connection and decides what a failure means.
    """
    while await queue.wait():
        data, count = queue.take()
        await stream.send(data)
        if on_sent is not None:
            on_sent(count, len(data))

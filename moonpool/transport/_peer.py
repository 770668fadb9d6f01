"""``Peer``: one actor task owning the connection to one remote address.

This is FoundationDB's peer pattern (and the plan's "Phase 10"): callers never
touch the socket.  ``send()`` is synchronous -- it appends a frame to a bounded
queue and returns -- and a single actor task connects, writes the queue, reads
replies and reconnects after failures.  Because only the actor awaits on the
connection, no caller can deadlock on it, and a slow remote shows up as a full
queue (:class:`~moonpool.transport.SendQueueFull`) instead of a blocked caller.

Connections are opened lazily, when there is something to send, and retried with
exponential backoff and jitter after failures.  When a connection breaks, the
queue is cleared: frames it never wrote are reported back by tag (``on_lost``'s
``unsent``) to go out on the next connection, and the protocol above decides
whether to resend the rest, with the same correlation id.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

import anyio
import anyio.abc

from moonpool.net import NetworkProvider
from moonpool.net._nowait import nonblocking_sender, push_receiver
from moonpool.transport._errors import SendQueueFull, SerializationError, TransportClosed
from moonpool.transport._frame_queue import FrameQueue, write_frames

__all__ = ["Peer", "PeerConfig", "PeerStats"]

log = logging.getLogger("moonpool.transport")


@final
@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Limits and timings of one peer connection.

    ``max_queued_frames`` and ``max_queued_bytes`` bound memory per remote (a
    frame always fits in an empty queue): a call finding the queue full waits
    for room within its timeout, then fails with ``SendQueueFull``, rather than
    let the queue grow without end.
    Reconnect delays double from ``reconnect_initial`` up to ``reconnect_max``,
    each shortened by up to ``reconnect_jitter`` of itself.
    ``receive_size`` caps each read where the transport reads with ``receive()``
    (trio, simulations); asyncio streams push whatever the loop read (up to
    256 KiB) and ignore it.  ``frame_timeout`` mirrors the server's: a remote
    that stops in the middle of a reply for that long has its connection closed
    (None: never), so a half-sent frame cannot hold the connection for ever.
    """

    max_queued_frames: int = 4096
    max_queued_bytes: int = 16 * 1024 * 1024
    connect_timeout: float = 5.0
    reconnect_initial: float = 0.02
    reconnect_max: float = 2.0
    reconnect_jitter: float = 0.5
    receive_size: int = 65536
    frame_timeout: float | None = 30.0

    def __post_init__(self) -> None:
        if self.frame_timeout is not None and not 0 < self.frame_timeout < math.inf:
            raise ValueError(
                f"frame_timeout must be positive and finite, or None, got {self.frame_timeout!r}"
            )
        if self.max_queued_frames < 1:
            raise ValueError(f"max_queued_frames must be >= 1, got {self.max_queued_frames}")
        if self.max_queued_bytes < 1:
            raise ValueError(f"max_queued_bytes must be >= 1, got {self.max_queued_bytes}")
        if not (0 < self.connect_timeout < math.inf):
            raise ValueError(
                f"connect_timeout must be positive and finite, got {self.connect_timeout}"
            )
        if not 0 <= self.reconnect_initial <= self.reconnect_max:
            raise ValueError("need 0 <= reconnect_initial <= reconnect_max")
        if not 0 <= self.reconnect_jitter <= 1:
            raise ValueError(f"reconnect_jitter must be within [0, 1], got {self.reconnect_jitter}")

    def reconnect_delay(self, failures: int, rng: random.Random) -> float:
        """Delay before the next connect after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        base = min(self.reconnect_max, self.reconnect_initial * 2.0 ** min(failures - 1, 60))
        return base * (1.0 - self.reconnect_jitter * rng.random())


@dataclass(slots=True)
class PeerStats:
    connects: int = 0
    connect_failures: int = 0
    connections_lost: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    slow_frames: int = 0  # connections closed for stopping mid-frame


class _ConnectionLost(Exception):
    """Internal: the current connection ended; carries a human-readable reason."""


@final
class Peer:
    """The connection to one remote address, driven by its own actor task.

    The owner starts :meth:`run` in a task group and stops it by cancelling that
    group (or with :meth:`close`).  ``on_data`` receives every chunk read;
    ``on_lost(reason, unsent)`` is called after a connect failure or a broken
    connection, once the queue has been cleared; ``unsent`` lists the tags (see
    :meth:`send`) of frames the broken connection never carried.  Both run
    synchronously, so the owner's state never changes under it between two
    awaits.  ``on_lost`` runs in the actor task.
    ``on_data`` does too on trio and in simulations; on asyncio, with
    :class:`~moonpool.net.RealNetwork`'s streams, it runs in the event loop's read
    callback (push mode, one loop iteration less per reply), outside any task: it
    must only parse and wake, not call anyio functions that need a current task.
    An exception it raises ends the connection exactly as in the actor task.
    """

    def __init__(
        self,
        network: NetworkProvider,
        address: str,
        *,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[str, list[int]], None],
        config: PeerConfig | None = None,
        rng: random.Random | None = None,
        buffered: Callable[[], int] | None = None,
    ) -> None:
        self.address = address
        # How many bytes of an unfinished frame from this remote are buffered
        # (the protocol's count): what the frame timeout watches.
        self._buffered = buffered
        self.config = config or PeerConfig()
        self.stats = PeerStats()
        self._network = network
        self._on_data = on_data
        self._on_lost = on_lost
        self._rng = rng or random.Random()
        self._queue = FrameQueue(
            self.config.max_queued_frames,
            on_sent=self._count_sent,
            byte_limit=self.config.max_queued_bytes,
        )
        self._closed = False
        self._connected = False
        self._failures = 0
        self._answered = False  # whether the current connection delivered good bytes

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._connected else "idle"
        return f"<Peer {self.address} {state} queued={self.queued}>"

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def connected(self) -> bool:
        return self._connected

    def send(self, frame: bytes, *, write_now: bool = False, tag: int | None = None) -> None:
        """Queue ``frame`` for the remote; never blocks.

        ``write_now`` writes it from the calling task when the connection is idle
        and takes it at once, instead of waking the actor: right for a lone
        request, wrong for one of many (they would each cost a system call
        instead of sharing one).  ``tag`` (a request's correlation id) is reported
        to ``on_lost`` if the connection breaks before the frame was written.

        Raises :class:`SendQueueFull` when ``max_queued_frames`` are already
        waiting, and :class:`TransportClosed` after :meth:`close`.
        """
        if self._closed:
            raise TransportClosed(f"peer {self.address} is closed")
        self.check_room()
        self._queue.put(frame, write_now=write_now, tag=tag)

    @property
    def full(self) -> bool:
        """True while a ``send`` would overflow the queue (see :meth:`wait_room`)."""
        return self._queue.full

    def check_room(self) -> None:
        """Raise :class:`SendQueueFull` if a ``send`` now would overflow the queue."""
        if self._queue.full:
            raise self.queue_full()

    async def wait_room(self) -> None:
        """Return once a frame can be queued (or the peer is closed): backpressure."""
        await self._queue.wait_room()

    def queue_full(self, waited: float | None = None) -> SendQueueFull:
        """The error for a queue that is (still) full, saying which limit and what to do."""
        how_long = "" if waited is None else f" and stayed full for the call's {waited:.3g}s"
        return SendQueueFull(
            f"send queue to {self.address} is full: {len(self._queue)} frames, "
            f"{self._queue.queued_bytes} bytes waiting (PeerConfig.max_queued_frames="
            f"{self.config.max_queued_frames}, max_queued_bytes={self.config.max_queued_bytes})"
            f"{how_long}; the remote is not keeping up or cannot be reached -- raise those "
            f"limits or the call's timeout, or send less at once"
        )

    def close(self) -> None:
        """Stop accepting frames; the actor exits at its next wait."""
        if not self._closed:
            self._closed = True
            self._queue.close()

    async def run(self) -> None:
        """The actor: connect when there is work, pump the connection, recover."""
        try:
            # Connect only when there is something to send.
            while not self._closed and await self._queue.wait():
                await anyio.sleep(self.config.reconnect_delay(self._failures, self._rng))
                try:
                    stream = await self._connect()
                except _ConnectionLost as lost:
                    self._lose(str(lost), connected=False)
                    continue
                try:
                    await self._serve(stream)
                except _ConnectionLost as lost:
                    self._lose(str(lost), connected=True)
        finally:
            self._connected = False
            self.close()

    def _lose(self, reason: str, *, connected: bool) -> None:
        self._connected = False
        # The queue goes with the connection.  Frames a write had begun on may have
        # arrived: the protocol decides whether to resend those (on_lost).  Frames
        # never handed to the lost connection are reported as unsent, and go out
        # again on the next one -- unless there was no connection at all: then
        # the remote cannot be reached, and their requests fail or retry by policy.
        unsent = self._queue.unsent_tags() if connected else []
        self.stats.frames_dropped += self._queue.clear() - len(unsent)
        if connected:
            # A connection that got a good answer resets the backoff; one that did
            # not counts as a failure, so a remote that accepts and hangs up at once
            # (or answers garbage) is not reconnected to in a tight loop.
            self._failures = 0 if self._answered else self._failures + 1
        log.debug("peer %s: %s", self.address, reason)
        self._on_lost(reason, unsent)

    async def _connect(self) -> anyio.abc.ByteStream:
        try:
            with anyio.fail_after(self.config.connect_timeout):
                stream = await self._network.connect(self.address)
        except (OSError, anyio.BrokenResourceError) as exc:
            # TimeoutError (ours or the network's) is an OSError too.
            self._failures += 1
            self.stats.connect_failures += 1
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError) and not str(exc):
                detail = f"connect timed out after {self.config.connect_timeout}s"
            raise _ConnectionLost(f"cannot connect to {self.address}: {detail}") from exc
        self._connected = True
        self._answered = False
        self.stats.connects += 1
        return stream

    async def _serve(self, stream: anyio.abc.ByteStream) -> None:
        """Write the queue and read replies until the connection ends."""
        failure: list[str] = []
        receive_into = push_receiver(stream)
        frame_timeout, buffered = self.config.frame_timeout, self._buffered
        # Its deadline is armed while a frame is half received (see PeerConfig).
        half_frame = anyio.CancelScope()
        async with stream, anyio.create_task_group() as group:

            def on_data(data: bytes) -> None:
                self.stats.bytes_received += len(data)
                self._on_data(data)
                self._answered = True  # and its bytes made sense
                if frame_timeout is not None and buffered is not None:
                    partial = buffered() > 0
                    if partial != (half_frame.deadline < math.inf):
                        half_frame.deadline = (
                            anyio.current_time() + frame_timeout if partial else math.inf
                        )

            async def reader() -> None:
                try:
                    with half_frame:
                        if receive_into is not None:
                            await receive_into(on_data)  # from the loop's read callback
                        while True:
                            on_data(await stream.receive(self.config.receive_size))
                    # Only the half-frame deadline ends the block without an error.
                    self.stats.slow_frames += 1
                    failure.append(
                        f"connection to {self.address} closed: the remote stopped in the "
                        f"middle of a frame for {frame_timeout}s (PeerConfig.frame_timeout)"
                    )
                except anyio.EndOfStream:
                    failure.append(f"connection to {self.address} closed by the remote")
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    failure.append(
                        f"connection to {self.address} broken: {str(exc) or type(exc).__name__}"
                    )
                except SerializationError as exc:
                    log.warning("closing connection to %s: %s", self.address, exc)
                    failure.append(f"closed connection to {self.address} after bad input: {exc}")
                group.cancel_scope.cancel()

            group.start_soon(reader)
            self._queue.sender = nonblocking_sender(stream)
            try:
                await write_frames(stream, self._queue)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                failure.append(f"write to {self.address} failed: {str(exc) or type(exc).__name__}")
            finally:
                self._queue.sender = None
            group.cancel_scope.cancel()
        self.stats.connections_lost += 1
        if failure:
            raise _ConnectionLost(failure[0])
        if not self._closed:
            raise _ConnectionLost(f"connection to {self.address} ended")

    def _count_sent(self, frames: int, size: int) -> None:
        self.stats.frames_sent += frames
        self.stats.bytes_sent += size

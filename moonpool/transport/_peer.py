"""``Peer``: one actor task owning the connection to one remote address.

This is FoundationDB's peer pattern (and the plan's "Phase 10"): callers never
touch the socket.  ``send()`` is synchronous -- it appends a frame to a bounded
queue and returns -- and a single actor task connects, writes the queue, reads
replies and reconnects after failures.  Because only the actor awaits on the
connection, no caller can deadlock on it, and a slow remote shows up as a full
queue (:class:`~moonpool.transport.SendQueueFull`) instead of a blocked caller.

Lifecycle (the plan's PR5).  A connection is opened lazily, when there is
something to send, and reopened with exponential backoff and jitter after a
failure.  While an idle connection is open, a remote that has sent nothing for
``ping_interval`` gets a health ping; after
``ping_max_missed`` pings in a row go unanswered for ``ping_timeout`` each, the
connection is closed as failed (a crashed machine sends no reset).  A
connection with nothing pending for ``idle_timeout`` is closed and the actor
ends; the next request starts a new one, and the caller does not notice.
When a connection breaks, the queue is cleared: frames it never wrote are
reported back by tag (``on_lost``'s ``unsent``), and the protocol above decides
what each request's contract allows.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import final

import anyio
import anyio.abc

from moonpool.net import NetworkProvider
from moonpool.net._nowait import nonblocking_sender, push_receiver
from moonpool.transport._errors import SendQueueFull, SerializationError, TransportClosed
from moonpool.transport._frame_queue import FrameQueue, write_frames
from moonpool.transport._framing import DEFAULT_MAX_FRAME_SIZE
from moonpool.transport._loop_bindings import bind_running_loop

__all__ = ["Peer", "PeerConfig", "PeerStats"]

log = logging.getLogger("moonpool.transport")

#: A connection lost right after a frame at least this large went out, with no
#: answer since, is reported with a hint about the remote's ``max_frame_size``:
#: a server closes the connection on a frame above its limit, and all the client
#: sees is a reset.  Below that size a lost connection far more often has another
#: cause (in a simulation, an injected reset), and the hint would mislead.
SUSPECT_FRAME_SIZE = 64 * 1024


@final
@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Limits and timings of one peer connection.

    ``max_queued_frames`` and ``max_queued_bytes`` bound memory per remote (a
    frame always fits in an empty queue): a call finding the queue full waits
    for room within its timeout, then fails with ``SendQueueFull``, rather than
    let the queue grow without end.
    Reconnect delays double from ``reconnect_initial`` up to ``reconnect_max``,
    each shortened by up to ``reconnect_jitter`` of itself: by default 1, "full
    jitter" (uniform up to the cap), so that clients that lost one server spread
    out instead of coming back in waves.
    ``receive_size`` caps each read where the transport reads with ``receive()``
    (trio, simulations); asyncio streams push whatever the loop read (up to
    256 KiB) and ignore it.  ``frame_timeout`` mirrors the server's: a remote
    that stops in the middle of a reply for that long has its connection closed
    (None: never), so a half-sent frame cannot hold the connection for ever.

    Health: a connected remote silent for ``ping_interval`` seconds is pinged
    (None: never); ``ping_max_missed`` pings in a row unanswered within
    ``ping_timeout`` each fail the connection and mark the remote failed in the
    failure monitor.  Pings work with every envelope type, and the server
    answers them itself: they never reach its application.
    ``idle_timeout``: a connection with nothing pending for that long is closed
    (None: never); ``max_peers`` bounds the remotes a transport keeps a
    connection to, evicting the least recently used idle one.
    Circuit breaker: ``circuit_threshold`` consecutive failures towards one
    remote (None: no breaker) open its circuit for about ``circuit_cooldown``
    seconds, during which calls fail at once with ``CircuitOpen``.
    """

    max_queued_frames: int = 4096
    max_queued_bytes: int = 16 * 1024 * 1024
    connect_timeout: float = 5.0
    reconnect_initial: float = 0.02
    reconnect_max: float = 2.0
    reconnect_jitter: float = 1.0
    receive_size: int = 65536
    frame_timeout: float | None = 30.0
    ping_interval: float | None = 1.0
    ping_timeout: float = 1.0
    ping_max_missed: int = 3
    idle_timeout: float | None = 60.0
    max_peers: int = 1024
    circuit_threshold: int | None = None
    circuit_cooldown: float = 5.0

    def __post_init__(self) -> None:
        for name in ("ping_interval", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ValueError(f"{name} must be positive and finite, or None, got {value!r}")
        for name in ("ping_timeout", "circuit_cooldown"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        for name in ("ping_max_missed", "max_peers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.circuit_threshold is not None and self.circuit_threshold < 1:
            raise ValueError(
                f"circuit_threshold must be >= 1 or None, got {self.circuit_threshold}"
            )
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
        if not 0 < self.reconnect_initial <= self.reconnect_max:
            # Zero would reconnect to a refusing remote in a tight loop: on real
            # TCP a busy core, in a simulation a clock that never advances.
            raise ValueError(
                "need 0 < reconnect_initial <= reconnect_max, got "
                f"reconnect_initial={self.reconnect_initial}, reconnect_max={self.reconnect_max}"
            )
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
    """Counters of one destination's connections and traffic (``Peer.stats``)."""

    connects: int = 0
    connect_failures: int = 0
    connections_lost: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    slow_frames: int = 0  # connections closed for stopping mid-frame
    pings_sent: int = 0
    pings_missed: int = 0
    idle_closes: int = 0
    #: Chunks read from a connection after it was replaced (dropped).
    stale_chunks: int = 0


class _ConnectionLost(Exception):
    """Internal: the current connection ended; carries a human-readable reason."""


@final
class Peer:
    """The connection to one remote address, driven by its own actor task.

    The owner starts :meth:`run` in a task group and stops it by cancelling that
    group (or with :meth:`close`); the actor also ends by itself once the
    connection has been idle for ``idle_timeout`` (see the module doc).
    ``on_data`` receives every chunk read;
    ``on_lost(reason, unsent)`` is called after a connect failure or a broken
    connection, once the queue has been cleared; ``unsent`` lists the tags (see
    :meth:`send`) of frames no connection ever carried.  ``on_connected()``
    follows the first good bytes of each connection (a remote that accepts and
    hangs up is not up).  All run
    synchronously, so the owner's state never changes under it between two
    awaits.  ``on_lost`` runs in the actor task.
    ``on_data`` does too on trio and in simulations; on asyncio, with
    :class:`~moonpool.net.RealNetwork`'s streams, it runs in the event loop's read
    callback (push mode, one loop iteration less per reply), outside any task: it
    must only parse and wake, not call anyio functions that need a current task.
    An exception it raises ends the connection exactly as in the actor task.
    ``live`` (the owner's pending requests by tag) lets the queue drop, unwritten,
    the frame of a request that ended first; ``pending()`` counts the requests
    still owed an answer (the connection is not idle while there are any).
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
        on_connected: Callable[[], None] | None = None,
        live: Container[int] | None = None,
        pending: Callable[[], int] | None = None,
        ping_frame: bytes | None = None,
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
        self._on_connected = on_connected
        self._pending = pending
        self._ping_frame = ping_frame
        self._rng = rng or random.Random()
        self._queue = FrameQueue(
            self.config.max_queued_frames,
            on_sent=self._count_sent,
            byte_limit=self.config.max_queued_bytes,
            live=live,
        )
        self._closed = False
        self._connected = False
        self._failures = 0
        self._answered = False  # whether the current connection delivered good bytes
        # Bumped per connection: a chunk from an older one is stale and dropped.
        self._generation = 0
        # Frames the owner sent (pings excluded): the idle watch compares counts.
        self._sends = 0
        self._idle = False
        # Closes the current connection as failed (see forget_ended); None between.
        self._abort: Callable[[str], None] | None = None
        # The largest frame of SUSPECT_FRAME_SIZE or more sent since the remote
        # last sent anything, and its tag: if the connection now breaks, that frame
        # may be above the remote's max_frame_size (see _oversize_hint).
        self._suspect_size = 0
        self._suspect_tag: int | None = None
        #: For the owner's least-recently-used eviction.
        self.last_used = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._connected else "idle"
        return f"<Peer {self.address} {state} queued={self.queued}>"

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def consecutive_failures(self) -> int:
        """Connects (or connections without a good answer) failed in a row: the
        backoff's exponent; 0 again after a good exchange."""
        return self._failures

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing pending: closing it now loses nothing."""
        return not self._queue.has_frames() and (self._pending is None or self._pending() == 0)

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
        self._sends += 1
        if len(frame) >= SUSPECT_FRAME_SIZE and len(frame) > self._suspect_size:
            self._suspect_size, self._suspect_tag = len(frame), tag
        self._queue.put(frame, write_now=write_now, tag=tag)

    def queued_one_way(self) -> int:
        """One-way messages still queued (none of their bytes written)."""
        return self._queue.one_way_count()

    def forget_ended(self) -> None:
        """A request ended (timed out, cancelled): drop its frame if still queued.

        If its frame is already partly written (a write stalled on a remote that
        does not read), the rest cannot be taken back: the connection is closed,
        so that it is never completed after its call has ended.
        """
        queue = self._queue
        queue.dirty = True
        if self._abort is not None and queue.started_dead():
            self._abort(
                f"connection to {self.address} closed: a request ended while its frame "
                f"was still being written (the remote is not reading)"
            )

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
            while not self._closed and await self._wait_for_work():
                await anyio.sleep(self.config.reconnect_delay(self._failures, self._rng))
                if self._closed:
                    break
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

    async def _wait_for_work(self) -> bool:
        """True when there is a reason to connect; False when the actor should end."""
        queue = self._queue
        if queue.has_frames():
            return True
        if self._idle:
            return False  # the connection just closed for idleness and nothing came
        idle_timeout = self.config.idle_timeout
        if idle_timeout is None:
            return await queue.wait()
        with anyio.move_on_after(idle_timeout):
            return await queue.wait()
        return False

    def _lose(self, reason: str, *, connected: bool) -> None:
        self._connected = False
        # The queue goes with the connection.  Frames a write had begun on may have
        # arrived: the protocol decides what to do with those (on_lost).  Frames
        # never handed to a connection are reported as unsent.
        unsent = self._queue.unsent_tags()
        self.stats.frames_dropped += self._queue.clear() - len(unsent)
        if connected:
            # A connection that got a good answer resets the backoff; one that did
            # not counts as a failure, so a remote that accepts and hangs up at once
            # (or answers garbage) is not reconnected to in a tight loop.
            self._failures = 0 if self._answered else self._failures + 1
        if self._suspect_size:
            if connected and self._suspect_tag not in unsent:
                reason += self._oversize_hint(self._suspect_size)
            self._suspect_size, self._suspect_tag = 0, None
        log.debug("peer %s: %s", self.address, reason)
        self._on_lost(reason, unsent)

    @staticmethod
    def _oversize_hint(size: int) -> str:
        """What to add to the reason a connection broke just after a large frame.

        A server refuses a frame above its ``max_frame_size`` by closing the
        connection: it cannot answer on a stream it can no longer parse, so the
        client only sees a reset.  A client whose own limit is higher than the
        server's sends such frames (its check is against its own limit), and this
        is the only place that can connect the reset to the frame.
        """
        if size > DEFAULT_MAX_FRAME_SIZE:
            limit = (
                f"that is above the default max_frame_size of {DEFAULT_MAX_FRAME_SIZE} "
                f"bytes, and a server with that limit closes the connection on it"
            )
        else:
            limit = f"a server whose max_frame_size is below {size} closes the connection on it"
        return (
            f" (right after an unanswered {size}-byte frame, header included: {limit}; "
            f"give the client and the server the same max_frame_size, "
            f"or send less at once)"
        )

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
        self._generation += 1
        self._idle = False
        self.stats.connects += 1
        return stream

    async def _serve(self, stream: anyio.abc.ByteStream) -> None:
        """Write the queue and read replies until the connection ends."""
        failure: list[str] = []
        receive_into = push_receiver(stream)
        frame_timeout, buffered = self.config.frame_timeout, self._buffered
        generation = self._generation
        # Bound here, in the actor task: on asyncio on_data runs in the loop's read
        # callback, outside any task, where anyio cannot tell which library runs
        # (under a plain asyncio.run, anyio.current_time() raised there, and a reply
        # split across two reads ended the whole transport).
        now = bind_running_loop().now
        # Its deadline is armed while a frame is half received (see PeerConfig).
        half_frame = anyio.CancelScope()
        async with stream, anyio.create_task_group() as group:

            def on_data(data: bytes) -> None:
                if self._generation != generation:
                    self.stats.stale_chunks += 1  # from a connection already replaced
                    return
                self.stats.bytes_received += len(data)
                self._suspect_size = 0  # the remote still talks: it did not refuse the frame
                self._on_data(data)
                if not self._answered:  # the first good bytes of this connection
                    self._answered = True
                    self._failures = 0  # a good exchange resets the backoff
                    # Up is "answers", not "accepts": a server at its connection
                    # limit accepts and hangs up, and counting each accept as a
                    # recovery made the failure monitor flap.
                    if self._on_connected is not None:
                        self._on_connected()
                if frame_timeout is not None and buffered is not None:
                    partial = buffered() > 0
                    if partial != (half_frame.deadline < math.inf):
                        half_frame.deadline = now() + frame_timeout if partial else math.inf

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
                    failure.append(f"connection to {self.address} broken: {_describe(exc)}")
                except SerializationError as exc:
                    log.warning("closing connection to %s: %s", self.address, exc)
                    failure.append(f"closed connection to {self.address} after bad input: {exc}")
                group.cancel_scope.cancel()

            def abort(reason: str) -> None:
                failure.append(reason)
                group.cancel_scope.cancel()

            self._abort = abort
            group.start_soon(reader)
            if self.config.ping_interval is not None or self.config.idle_timeout is not None:
                group.start_soon(self._watch, group.cancel_scope, failure)
            self._queue.sender = nonblocking_sender(stream)
            try:
                await write_frames(stream, self._queue)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                failure.append(f"write to {self.address} failed: {_describe(exc)}")
            finally:
                self._queue.sender = None
                self._abort = None
            group.cancel_scope.cancel()
        self.stats.connections_lost += 1
        if failure:
            raise _ConnectionLost(failure[0])
        if not self._closed and not self._idle:
            raise _ConnectionLost(f"connection to {self.address} ended")

    async def _watch(self, connection: anyio.CancelScope, failure: list[str]) -> None:
        """Health pings and the idle timeout of one idle connection.

        Idleness is judged from counts (frames sent, requests pending) at each
        tick, not from a clock read per frame, so the hot path pays nothing.
        """
        config = self.config
        ping_interval, idle_timeout = config.ping_interval, config.idle_timeout
        tick = min(x for x in (ping_interval, idle_timeout) if x is not None)
        stats = self.stats
        heard = stats.bytes_received
        sends = self._sends
        busy_at = anyio.current_time()
        missed = 0
        ping_out = False
        while True:
            await anyio.sleep(config.ping_timeout if ping_out else tick)
            now = anyio.current_time()
            if self._sends != sends or (self._pending is not None and self._pending()):
                # Busy: its requests' own deadlines watch the remote.  Pings are for
                # idle connections only -- a server running a slow handler in line
                # (serve()) reads nothing meanwhile, pings included.
                sends, busy_at = self._sends, now
                heard, missed, ping_out = stats.bytes_received, 0, False
                continue
            mid_frame = self._buffered is not None and self._buffered() > 0
            if idle_timeout is not None and now - busy_at >= idle_timeout and not mid_frame:
                # From here on, a request arriving before the close lands stays
                # queued (no fast-path write onto a closing connection) and goes
                # out on the next one: the idle close must not lose it.
                self._queue.sender = None
                self._idle = True
                self._suspect_size = 0  # an orderly close: no frame of it was refused
                stats.idle_closes += 1
                log.debug("peer %s: closing the connection, idle %ss", self.address, idle_timeout)
                connection.cancel()
                return
            if ping_interval is None or self._ping_frame is None:
                continue
            if stats.bytes_received != heard:
                heard, missed, ping_out = stats.bytes_received, 0, False
                continue
            if ping_out:
                missed += 1
                stats.pings_missed += 1
                if missed >= config.ping_max_missed:
                    failure.append(
                        f"connection to {self.address} failed: {missed} health pings in a row "
                        f"unanswered for {config.ping_timeout}s each (PeerConfig.ping_timeout)"
                    )
                    connection.cancel()
                    return
            stats.pings_sent += 1
            ping_out = True
            if not self._queue.closed:
                self._queue.put(self._ping_frame, write_now=True)

    def _count_sent(self, frames: int, size: int) -> None:
        self.stats.frames_sent += frames
        self.stats.bytes_sent += size


def _describe(exc: BaseException) -> str:
    """``exc``'s message, or its cause's: anyio raises ``BrokenResourceError``
    without one, chained to the ``OSError`` that says what happened (a reset)."""
    seen: BaseException | None = exc
    while seen is not None:
        if text := str(seen):
            return text
        seen = seen.__cause__
    return type(exc).__name__

"""The in-memory simulated network.

``SimNetwork`` behaves like TCP where programs rely on it -- ordered, reliable
byte streams, half-close, backpressure, refused connects -- and misbehaves like a
real network where programs must cope, as :class:`~moonpool.net.ChaosConfig`
says.  It never starts a background task: a write computes when each byte will
arrive (latency, clogging, partitions) and queues it; a read waits until the head
of its queue is due.  Time is trio's clock, so under the simulation's autojump
``MockClock`` a one-second latency costs no wall time, and all randomness comes
from the seed, so a run replays exactly.
"""

from __future__ import annotations

import errno
import math
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, NoReturn, Self, final

import anyio
import anyio.abc
import sniffio
import trio
from anyio.abc import SocketAttribute

from moonpool._ground._buggify import buggify
from moonpool._ground._run import current_run
from moonpool._ground._wakeups import Wakeups
from moonpool.net._address import Address, parse_address
from moonpool.net._chaos import ChaosConfig
from moonpool.net._faults import FaultInjector, Partition
from moonpool.net._provider import AddressInUse

__all__ = ["SimListener", "SimNetwork", "SimStream"]

DEFAULT_BUFFER_SIZE = 256 * 1024
DEFAULT_CONNECT_TIMEOUT = 10.0
#: The most bytes one push hands over (SimStream.receive_into).
PUSH_SIZE = 65536
_EPHEMERAL_PORT_START = 40000


def _ignore(data: bytes) -> None:
    pass


class _Direction:
    """Bytes travelling one way over a connection, each chunk with its arrival time."""

    __slots__ = (
        "broken",
        "chunks",
        "clogged_until",
        "consumer_error",
        "eof_at",
        "in_flight",
        "last_arrival",
        "push",
        "readable",
        "reader_deadline",
        "waiting",
        "wake_at",
        "wakeups",
        "writable",
    )

    def __init__(self, wakeups: Wakeups | None) -> None:
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.in_flight = 0  # bytes queued and not yet received: the backpressure measure
        self.last_arrival = 0.0
        self.clogged_until = 0.0
        self.eof_at: float | None = None
        self.broken = False
        self.readable = trio.lowlevel.ParkingLot()
        # How the parked reader (at most one: a second is a BusyResourceError) is
        # woken when its bytes arrive.  In a simulation the run's instrument fires
        # ``wakeups`` (see moonpool._ground._wakeups): ``waiting`` while it is
        # parked, ``wake_at`` the arrival it waits for.  Elsewhere it parks under
        # the cancel scope ``reader_deadline``.  Either way, bytes arriving sooner
        # move the wake-up instead of waking it early to park again.
        self.wakeups = wakeups
        self.waiting = False
        self.wake_at = math.inf
        self.reader_deadline: trio.CancelScope | None = None
        self.writable = trio.lowlevel.ParkingLot()
        # While the reader takes its bytes by push (SimStream.receive_into): what
        # hands it the bytes due at a time, and what its callback raised.
        self.push: Callable[[float], None] | None = None
        self.consumer_error: BaseException | None = None

    def arrived(self, arrival: float, now: float) -> None:
        """Bytes (or the end) will be readable at ``arrival``: wake the reader then."""
        if arrival > now or self.push is not None:
            # A push reader gets even the bytes due now from the wake-ups, between
            # two turns of the run loop, never from inside the writer's call.
            if self.waiting:
                if arrival < self.wake_at:
                    self.wake_at = arrival
                    assert self.wakeups is not None
                    self.wakeups.at(arrival, self)
                return
            scope = self.reader_deadline
            if scope is not None:
                if arrival < scope.deadline:
                    scope.deadline = arrival
                return
        self.readable.unpark_all()

    def wants(self, time: float) -> bool:
        """Whether the parked reader still waits for a wake-up at ``time`` (a WakeupTarget)."""
        return self.waiting and self.wake_at == time

    def wake(self, time: float) -> None:
        self.wake_at = math.inf
        push = self.push
        if push is not None and len(self.readable):
            push(time)  # the reader stays parked: no task step per delivery
        else:
            self.readable.unpark_all()

    def wake_next(self, now: float) -> None:
        """Ask the wake-ups for the parked reader's next arrival (or its end)."""
        at = self.chunks[0][0] if self.chunks else self.eof_at
        if at is not None and at < self.wake_at:
            assert self.wakeups is not None
            self.wake_at = max(at, now)
            self.wakeups.at(self.wake_at, self)

    def wake_all(self) -> None:
        self.readable.unpark_all()
        self.writable.unpark_all()


class _Connection:
    """Both directions of one connection and the reset that breaks them together."""

    __slots__ = ("client", "forward", "id", "open_ends", "reverse", "server", "world")

    def __init__(self, world: _World, connection_id: int, client: Address, server: Address) -> None:
        self.world = world
        self.id = connection_id
        self.client = client
        self.server = server
        self.forward = _Direction(world.wakeups)  # client -> server
        self.reverse = _Direction(world.wakeups)  # server -> client
        self.open_ends = 2
        world.live[connection_id] = self

    def reset(self) -> None:
        run = self.world.run
        if run is not None and self.id in self.world.live:
            run.note("net", f"connection reset {self.client}<->{self.server}", self.client.host)
        for direction in (self.forward, self.reverse):
            direction.broken = True
            direction.chunks.clear()
            direction.in_flight = 0
            direction.wake_all()
        self.world.live.pop(self.id, None)

    def end_closed(self) -> None:
        self.open_ends -= 1
        if self.open_ends <= 0:
            self.world.live.pop(self.id, None)


class _HostLife:
    """One life of a host: the streams and listeners it owns, and whether it is alive.

    A simulated process gets a new life at every boot.  When it crashes, its
    life ends at once: every connection it owns is reset for the other side,
    its listeners close, and nothing it still does -- ``finally`` blocks
    included -- reaches the network.  When it exits gracefully, what it left
    open is closed the way an operating system closes a dead process's
    sockets: bytes already written still arrive, then the end of the stream.
    """

    __slots__ = ("alive", "children", "host", "listeners", "streams")

    def __init__(self, host: str) -> None:
        self.host = host
        self.alive = True
        # Lives of the views this one made (for_host): they end with it.
        self.children: list[_HostLife] = []
        # Dicts, not sets: ending a life touches them in a deterministic order.
        self.streams: dict[int, SimStream] = {}
        self.listeners: dict[Address, SimListener] = {}

    def check_alive(self, action: str) -> None:
        if not self.alive:
            raise OSError(
                errno.ENETDOWN,
                f"{self.host} cannot {action}: this process has crashed or exited, and "
                f"nothing it does reaches the network any more",
            )

    def end(self, *, crash: bool) -> None:
        if not self.alive:
            return
        self.alive = False
        for child in self.children:
            child.end(crash=crash)
        for listener in list(self.listeners.values()):
            listener._close_now()
        for stream in list(self.streams.values()):
            if crash:
                stream._connection.reset()
            else:
                stream._close_now()
        self.streams.clear()


@final
class SimStream(anyio.abc.ByteStream):
    """One end of a simulated TCP connection; an ``anyio.abc.ByteStream``."""

    def __init__(
        self,
        world: _World,
        connection: _Connection,
        outgoing: _Direction,
        incoming: _Direction,
        local: Address,
        remote: Address,
        life: _HostLife,
    ) -> None:
        self._world = world
        self._life = life
        life.streams[id(self)] = self
        self._connection = connection
        self._out = outgoing
        self._in = incoming
        self._local = local
        self._remote = remote
        self._closed = False
        self._eof_sent = False
        self._receiving = False
        self._sending = False
        self._on_data: Callable[[bytes], object] = _ignore  # receive_into's

    def __repr__(self) -> str:
        return f"<SimStream {self._local} -> {self._remote} #{self._connection.id}>"

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            SocketAttribute.local_address: lambda: (self._local.host, self._local.port),
            SocketAttribute.remote_address: lambda: (self._remote.host, self._remote.port),
        }

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            return await self._receive(max_bytes)
        finally:
            self._receiving = False

    async def _receive(self, max_bytes: int) -> bytes:
        direction = self._in
        waited = False
        while True:
            self._check_receivable()
            now = trio.current_time()
            chunks = direction.chunks
            if chunks and chunks[0][0] <= now:
                data = self._take_ready(now, max_bytes)
                if not waited:
                    # Every receive yields once (trio's checkpoint convention); a wait
                    # above already did.  The bytes are taken: a cancellation here
                    # would lose them, so the yield is not cancellable -- as trio's
                    # own sockets do it.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            if not chunks and direction.eof_at is not None and direction.eof_at <= now:
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                raise anyio.EndOfStream
            wake_at = chunks[0][0] if chunks else (direction.eof_at or math.inf)
            wakeups = direction.wakeups
            if wakeups is not None:
                direction.waiting = True
                if wake_at < math.inf:
                    direction.wake_at = wake_at
                    wakeups.at(wake_at, direction)
                try:
                    await direction.readable.park()
                finally:
                    direction.waiting = False
                    direction.wake_at = math.inf
            else:
                with trio.move_on_at(wake_at) as deadline:
                    direction.reader_deadline = deadline
                    try:
                        await direction.readable.park()
                    finally:
                        direction.reader_deadline = None
            waited = True

    @property
    def pushes(self) -> bool:
        """Whether :meth:`receive_into` hands bytes over outside any task (in a simulation)."""
        return self._in.wakeups is not None

    async def receive_into(self, on_data: Callable[[bytes], object]) -> NoReturn:
        """Call ``on_data(chunk)`` for every chunk received, until the stream ends.

        The contract of :meth:`AsyncioSocketStream.receive_into
        <moonpool.net._asyncio_stream.AsyncioSocketStream.receive_into>`: it never
        returns; it raises what :meth:`receive` would (``EndOfStream``,
        ``BrokenResourceError``, ``ClosedResourceError``) or what ``on_data``
        raised (delivery stops at that chunk: the later ones stay for
        :meth:`receive`); a cancelled call loses nothing.  In a simulation
        (:attr:`pushes`), the run's wake-ups hand each arrival to ``on_data``
        between two turns of the run loop, outside any task -- where asyncio's
        read callback runs -- so a reader that only parses and wakes costs no
        task step per chunk; ``on_data`` must not await.  Each hand-over is one
        read of up to 64 KiB, short reads included.  Elsewhere it loops over
        :meth:`receive`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        if not self.pushes:
            while True:
                on_data(await self.receive())
        direction = self._in
        self._receiving = True
        self._on_data = on_data
        direction.push = self._push
        try:
            while True:
                error = direction.consumer_error
                if error is not None:
                    raise error
                self._check_receivable()
                now = trio.current_time()
                eof_at = direction.eof_at
                if not direction.chunks and eof_at is not None and eof_at <= now:
                    raise anyio.EndOfStream
                # Bytes already due are handed over at the start of the next turn.
                direction.waiting = True
                direction.wake_next(now)
                try:
                    await direction.readable.park()
                except trio.Cancelled:
                    error = direction.consumer_error
                    if error is not None:  # on_data failed, then cancelled its reader:
                        raise error from None  # its failure is what the caller must see
                    raise
                finally:
                    direction.waiting = False
                    direction.wake_at = math.inf
        finally:
            direction.push = None
            direction.consumer_error = None
            self._on_data = _ignore
            self._receiving = False

    def _push(self, now: float) -> None:
        """Hand the parked push reader what is due; wake its task only to end it."""
        direction = self._in
        chunks = direction.chunks
        run = self._world.run
        while chunks and chunks[0][0] <= now:
            data = self._take_ready(now, PUSH_SIZE)
            if run is not None:
                run.trace(len(data))  # a delivery no task step records
            try:
                self._on_data(data)
            except BaseException as exc:  # raised by the reader's task, not into the run loop
                direction.consumer_error = exc
                break
            if not len(direction.readable) or self._closed or direction.broken:
                return  # it was cancelled or woken meanwhile: the bytes left wait
        if direction.consumer_error is not None or (
            not chunks and direction.eof_at is not None and direction.eof_at <= now
        ):
            direction.readable.unpark_all()  # to raise the error, or EndOfStream
        else:
            direction.wake_next(now)

    def _take_ready(self, now: float, max_bytes: int) -> bytes:
        """Coalesce every due chunk (up to ``max_bytes``), as a kernel buffer would."""
        direction = self._in
        chunks = direction.chunks
        parts: list[bytes] = []
        taken = 0
        while chunks and chunks[0][0] <= now and taken < max_bytes:
            arrival, data = chunks[0]
            room = max_bytes - taken
            if len(data) > room:
                parts.append(data[:room])
                chunks[0] = (arrival, data[room:])
                taken += room
            else:
                chunks.popleft()
                parts.append(data)
                taken += len(data)
        result = parts[0] if len(parts) == 1 else b"".join(parts)
        world, pair = self._world, (self._remote.host, self._local.host)
        offset = world.read.get(pair, 0)
        # Buggify is asked first, on every read it could shorten: whether the
        # partial_io dice then say "fault" (or a fault plan suppresses it) must not
        # change how often this site is asked, or suppressing one fault would move
        # every later firing of the site.
        shorten = len(result) > 1 and buggify()
        keep = world.faults.short_read(len(result), *pair, at=offset)
        if keep == len(result) and shorten:
            keep = 1
        if keep < len(result):
            chunks.appendleft((now, result[keep:]))
            result = result[:keep]
        world.read[pair] = offset + len(result)
        direction.in_flight -= len(result)
        direction.writable.unpark_all()
        return result

    async def send(self, item: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._sending:
            raise anyio.BusyResourceError("sending")
        self._sending = True
        try:
            await self._send(bytes(item))
        finally:
            self._sending = False
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, data: bytes) -> int:
        """Write what the connection takes right now; never waits, yields or raises.

        Returns the bytes written: all of ``data``, a prefix (a simulated short
        write, or the receive buffer filling up) or 0 (buffer full, connection
        closed or reset -- ``send`` then reports why).  The contract is
        :func:`moonpool.net._nowait.nonblocking_sender`'s.
        """
        if not data or self._sending or self._closed or self._eof_sent or self._out.broken:
            return 0
        room = self._world.buffer_size - self._out.in_flight
        if room <= 0:
            return 0  # decides nothing: a full buffer is retried at the same byte
        offset = self._written()
        if self._draw_reset(offset):
            return 0
        points = self._split_points(len(data), offset)
        size = min(points[0] if points else len(data), room)
        self._enqueue(bytes(data[:size]))
        return size

    def _written(self) -> int:
        """Bytes written so far from this host to the other: where this write starts."""
        return self._world.written.get((self._local.host, self._remote.host), 0)

    def _draw_reset(self, offset: int) -> bool:
        """Whether the fault injector resets the connection at this write (it then is)."""
        if self._world.faults.resets(self._local.host, self._remote.host, offset):
            self._connection.reset()
            return True
        return False

    def _split_points(self, size: int, offset: int) -> list[int]:
        """Where a write of ``size`` bytes, at ``offset``, is cut into separate pieces
        (the buggify line's offset in this function names its site: keep it)."""
        src, dst = self._local.host, self._remote.host
        halve = size > 1 and buggify()  # asked on every write (see _take_ready)
        points = self._world.faults.split_points(size, src, dst, offset)
        if not points and halve:
            points = [size // 2]
        return points

    def _check_receivable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._in.broken:
            raise anyio.BrokenResourceError(f"connection {self} was reset")

    def _check_sendable(self) -> None:
        if self._closed or self._eof_sent:
            raise anyio.ClosedResourceError
        if self._out.broken:
            raise anyio.BrokenResourceError(f"connection {self} was reset")

    async def _send(self, data: bytes) -> None:
        self._check_sendable()
        world, direction = self._world, self._out
        offset = self._written()
        if self._draw_reset(offset):
            raise anyio.BrokenResourceError(f"connection {self} was reset (simulated)")
        points = self._split_points(len(data), offset)
        pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
        capacity = world.buffer_size
        for piece in pieces:
            view = piece
            while view:
                # Backpressure: wait while the receiver has a full buffer of unread bytes.
                while direction.in_flight >= capacity:
                    await direction.writable.park()
                    self._check_sendable()
                room = capacity - direction.in_flight
                part, view = view[:room], view[room:]
                self._enqueue(part)

    def _enqueue(self, data: bytes) -> None:
        world, direction = self._world, self._out
        src, dst = self._local.host, self._remote.host
        now = trio.current_time()
        offset = world.written.get((src, dst), 0)
        world.written[src, dst] = offset + len(data)
        arrival = now + world.faults.latency(src, dst)
        clog = world.faults.clog_duration(src, dst, offset)
        if clog:
            direction.clogged_until = max(direction.clogged_until, now + clog)
        blocked_until = world.faults.partition_until(src, dst, now)
        arrival = max(
            arrival, direction.last_arrival, direction.clogged_until, blocked_until or 0.0
        )
        direction.last_arrival = arrival
        direction.chunks.append((arrival, world.faults.maybe_flip_bit(data, src, dst, offset)))
        direction.in_flight += len(data)
        direction.arrived(arrival, now)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise anyio.ClosedResourceError
        if self._eof_sent or self._out.broken:
            return
        self._eof_sent = True
        self._queue_eof()

    def _queue_eof(self) -> None:
        direction, faults = self._out, self._world.faults
        src, dst = self._local.host, self._remote.host
        now = trio.current_time()
        latency = faults.latency(src, dst)
        # The FIN travels like data: a partition holds it until healed, as it holds
        # every byte, or the peer would see a clean close straight through the cut.
        blocked_until = faults.partition_until(src, dst, now)
        direction.eof_at = max(
            now + latency, direction.last_arrival, direction.clogged_until, blocked_until or 0.0
        )
        direction.arrived(direction.eof_at, now)

    async def aclose(self) -> None:
        self._close_now()
        await trio.lowlevel.checkpoint()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._life.streams.pop(id(self), None)
        run = self._world.run
        if run is not None and self._connection.id in self._world.live:
            run.note("net", f"close {self._local}->{self._remote}", self._local.host)
        self._connection.end_closed()
        if not self._eof_sent and not self._out.broken:
            self._eof_sent = True
            self._queue_eof()
        # Whatever the other side still sends has nowhere to go: its writes break,
        # like writes to a closed TCP socket draw a reset.
        incoming = self._in
        incoming.broken = True
        incoming.chunks.clear()
        incoming.in_flight = 0
        incoming.wake_all()
        self._out.writable.unpark_all()


@final
class SimListener:
    """A listening endpoint of the simulated network (see :class:`~moonpool.net.Listener`)."""

    def __init__(self, world: _World, address: Address, life: _HostLife) -> None:
        self._world = world
        self._address = address
        self._life = life
        life.listeners[address] = self
        self._pending: deque[SimStream] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    @property
    def address(self) -> str:
        return str(self._address)

    def _deliver(self, stream: SimStream) -> None:
        self._pending.append(stream)
        self._lot.unpark()

    async def accept(self) -> SimStream:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._pending:
            if self._closed:
                raise anyio.ClosedResourceError
            await self._lot.park()
        if self._closed:
            raise anyio.ClosedResourceError
        stream = self._pending.popleft()
        run = self._world.run
        if run is not None:
            run.note("net", f"accept {stream._remote}->{self._address}", self._address.host)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stream

    async def aclose(self) -> None:
        self._close_now()
        await trio.lowlevel.checkpoint()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._life.listeners.pop(self._address, None)
        if self._world.listeners.get(self._address) is self:
            del self._world.listeners[self._address]
        while self._pending:
            self._pending.popleft()._connection.reset()
        self._lot.unpark_all()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _World:
    """State shared by every host's view of one simulated network."""

    def __init__(self, seed: int, chaos: ChaosConfig, buffer_size: int) -> None:
        self.hosts: list[str] = []
        run = self.run = current_run()
        admit = run.admit_fault if run is not None else None
        self.wakeups = run.wakeups if run is not None else None
        self.faults = FaultInjector(seed, chaos, lambda: self.hosts, admit)
        self.buffer_size = buffer_size
        # Bytes written and read so far per (source host, destination host), over
        # every connection: where data-path fault decisions are made (see _faults).
        self.written: dict[tuple[str, str], int] = {}
        self.read: dict[tuple[str, str], int] = {}
        self.listeners: dict[Address, SimListener] = {}
        self.next_port: dict[str, int] = {}
        self.connections = 0
        # Connections with at least one end open and not reset, by id (in order).
        self.live: dict[int, _Connection] = {}
        self.calmed = trio.Event()  # set by stop_chaos: connects waiting on faults go on

    def stop_chaos(self) -> None:
        """No more faults; partitions and clogs end now, and bytes they held move on.

        Held bytes (and end-of-stream marks) get one fresh latency from now, as if
        the link had just come back; the order on each connection is kept.
        """
        self.faults.calm()
        self.calmed.set()
        now = trio.current_time()
        for connection in list(self.live.values()):
            for direction, (src, dst) in (
                (connection.forward, (connection.client.host, connection.server.host)),
                (connection.reverse, (connection.server.host, connection.client.host)),
            ):
                direction.clogged_until = min(direction.clogged_until, now)
                due = now + self.faults.latency(src, dst, count=False)
                if direction.chunks and direction.chunks[-1][0] > due:
                    direction.chunks = deque(
                        (min(arrival, due), data) for arrival, data in direction.chunks
                    )
                direction.last_arrival = min(direction.last_arrival, due)
                if direction.eof_at is not None:
                    direction.eof_at = min(direction.eof_at, due)
                direction.readable.unpark_all()

    def manual_fault(self, family: str, text: str) -> None:
        """A fault a test asked for by hand: counted and traced, never suppressed."""
        faults = self.faults
        faults.counts[family] = faults.counts.get(family, 0) + 1
        if self.run is not None:
            self.run.trace_text(f"fault:{family}:{text}")
            self.run.note("fault", text)

    def add_host(self, host: str) -> None:
        if host not in self.hosts:
            self.hosts.append(host)

    def ephemeral_port(self, host: str) -> int:
        port = self.next_port.get(host, _EPHEMERAL_PORT_START)
        self.next_port[host] = port + 1
        return port


@final
class SimNetwork:
    """An in-memory network with seeded fault injection; a ``NetworkProvider``.

    One ``SimNetwork`` is one host's view: ``connect`` originates from
    :attr:`host`.  :meth:`for_host` returns the view of another host on the same
    network -- the simulation gives each workload its own.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        chaos: ChaosConfig | None = None,
        host: str = "local",
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        _world: _World | None = None,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        # Checked here: zero made every connect time out, and a negative value
        # surfaced as a ValueError from deep inside trio.sleep on the first connect.
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
        self._world = _world or _World(seed, chaos or ChaosConfig.none(), buffer_size)
        self._world.add_host(host)
        self.host = host
        self.connect_timeout = connect_timeout
        self._life = _HostLife(host)
        self._derived = False  # made by for_host (a process's or workload's view)

    def __repr__(self) -> str:
        return f"<SimNetwork host={self.host!r}>"

    def for_host(self, host: str) -> SimNetwork:
        """This network as seen from ``host``.

        Each view is one life of that host: the simulation gives every boot of a
        process its own view, so that a crash ends exactly what that boot opened.
        A view whose life has ended cannot open another: a dead process reaches
        nobody, through any view.
        """
        self._life.check_alive(f"open a view of {host}")
        view = SimNetwork(host=host, connect_timeout=self.connect_timeout, _world=self._world)
        view._derived = True
        if self._derived:
            # A view made from a process's view dies with that process (the first
            # view, made by the network's creator, outlives everything and keeps
            # no list).
            self._life.children.append(view._life)
        return view

    def end_life(self, *, crash: bool) -> None:
        """End this view's life: what the runtime does when a process dies.

        ``crash=True`` resets every connection it opened or accepted (the other
        side sees a reset at once, bytes in flight are gone) and closes its
        listeners; ``crash=False`` closes them like an exiting process's sockets.
        Either way, every later ``connect``, ``listen`` or write through this
        view fails: a dead process reaches nobody.
        """
        self._life.end(crash=crash)

    def stop_chaos(self) -> None:
        """Stop injecting faults on the whole network (every host's view).

        Partitions heal and clogs clear now, and the bytes they held are
        delivered after an ordinary latency; from then on only latency remains.
        The simulation calls this when every workload's ``run`` has returned.
        """
        self._world.stop_chaos()

    @property
    def chaos(self) -> ChaosConfig:
        return self._world.faults.chaos

    @property
    def fault_counts(self) -> dict[str, int]:
        """Faults injected so far, per family."""
        return dict(self._world.faults.counts)

    # -- manual faults, for tests that need one at a known time --------------------

    def partition(self, a: str, b: str, duration: float) -> None:
        """Cut traffic between hosts ``a`` and ``b`` for ``duration`` seconds from now."""
        self._life.check_alive("partition the network")
        now = trio.current_time()
        self._world.faults.partitions.add(Partition(a, b, now, now + duration))
        self._world.manual_fault("partition", f"partition {a}|{b} for {duration:.3f}s (by hand)")

    def isolate(self, host: str, duration: float) -> None:
        """Cut ``host`` off from every other host for ``duration`` seconds from now."""
        self._life.check_alive("partition the network")
        now = trio.current_time()
        self._world.faults.partitions.add(Partition(host, None, now, now + duration))
        self._world.manual_fault(
            "partition", f"partition {host} isolated for {duration:.3f}s (by hand)"
        )

    # -- NetworkProvider ------------------------------------------------------------

    async def listen(self, address: str) -> SimListener:
        parsed = _parse_on_trio("listen", address)
        await trio.lowlevel.checkpoint()
        self._life.check_alive(f"listen on {address}")
        world = self._world
        if parsed.port == 0:
            port = world.ephemeral_port(parsed.host)
            while Address(parsed.host, port) in world.listeners:
                port = world.ephemeral_port(parsed.host)
            parsed = Address(parsed.host, port)
        if parsed in world.listeners:
            raise AddressInUse(f"cannot listen on {parsed}: address already in use")
        world.add_host(parsed.host)
        listener = SimListener(world, parsed, self._life)
        world.listeners[parsed] = listener
        return listener

    async def connect(self, address: str) -> SimStream:
        target = _parse_on_trio("connect", address)
        world, faults = self._world, self._world.faults
        await trio.lowlevel.checkpoint()
        self._life.check_alive(f"connect to {address}")
        delay = faults.connect_delay(self.host, address)
        if buggify():
            delay += 0.5
        # The handshake is a round trip; a partition holds it until healed or timed out.
        handshake = faults.latency(self.host, target.host) + faults.latency(target.host, self.host)
        started = trio.current_time()
        deadline = started + self.connect_timeout
        blocked = faults.partition_until(self.host, target.host, started)
        due = max(started + delay + handshake, blocked or 0.0)
        if not world.calmed.is_set() and due > started:
            with trio.move_on_at(min(due, deadline)):
                await world.calmed.wait()
            now = trio.current_time()
            if world.calmed.is_set() and now < due:
                # Chaos stopped meanwhile: random partitions and injected delays are
                # gone; only the handshake, and partitions asked for by hand, remain.
                blocked = faults.partition_until(self.host, target.host, now)
                due = max(started + handshake, blocked or 0.0)
        if due > deadline:
            await trio.sleep_until(deadline)
            if world.run is not None:
                world.run.note("net", f"connect to {address} timed out", self.host)
            raise TimeoutError(
                f"connect to {address} from {self.host} timed out after "
                f"{self.connect_timeout}s" + (" (network partition)" if blocked else "")
            )
        await trio.sleep_until(due)
        self._life.check_alive(f"connect to {address}")  # it may have died meanwhile
        if faults.connect_fails(self.host, address):
            raise ConnectionRefusedError(f"connection to {address} refused (simulated fault)")
        listener = world.listeners.get(target)
        if listener is None or listener._closed:
            if world.run is not None:
                world.run.note("net", f"connect to {address} refused: nothing listens", self.host)
            raise ConnectionRefusedError(f"connection to {address} refused: nothing listens there")
        world.connections += 1
        local = Address(self.host, world.ephemeral_port(self.host))
        connection = _Connection(world, world.connections, local, target)
        client = SimStream(
            world, connection, connection.forward, connection.reverse, local, target, self._life
        )
        server = SimStream(
            world,
            connection,
            connection.reverse,
            connection.forward,
            target,
            local,
            listener._life,
        )
        run = world.run
        if run is not None:
            run.trace_text(f"connect:{local}->{target}")
            run.note("net", f"connect {local}->{target}", self.host)
        listener._deliver(server)
        return client


def _parse_on_trio(method: str, address: str) -> Address:
    """``parse_address(address)``, after refusing to run outside trio, saying so.

    The simulated network parks and sleeps with trio's primitives; awaited under
    asyncio, the first of them failed with asyncio's "Task got bad yield", which
    says nothing about the cause.  Checked in ``connect`` and ``listen`` only:
    every stream and listener comes from one of them, so the data path pays
    nothing.  One call, not a line of its own: buggify names a site by its line's
    offset within its function, and which sites are active for a seed depends on
    the names, so one more line in ``connect`` would change every seed's run.
    """
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = "an event loop sniffio does not know"
    if library != "trio":
        raise RuntimeError(
            f"SimNetwork.{method}({address!r}) was called under {library}: SimNetwork runs "
            "on trio (inside a simulation or trio.run); under asyncio use RealNetwork"
        )
    return parse_address(address)

"""moonpool's transport on real loopback TCP vs raw sockets with the same framing.

Every scenario runs both sides -- an echo server and a client -- in one process
and one event loop, like a unit benchmark: the figures are CPU cost per request
of the whole stack (client + server), which is what the ratio compares.  The
baselines speak the same ``[u64 LE id][u32 LE len][payload]`` frames: the server
reads with 64 KiB reads, parses every complete frame and echoes a reply frame
per request (one write per read); the clients are the obvious efficient loops.

Scenarios (``N`` requests per sample, payload echoed back):

* sequential: one ``get_reply`` at a time vs write-frame/read-reply on a socket;
* pipelined: 64 requests in flight on one connection (64 tasks calling
  ``get_reply``) vs a raw writer keeping 64 frames outstanding and a raw reader
  (the target); for information also vs 64 raw tasks each awaiting its own
  reply through a raw reader/writer task pair -- the same concurrency model as
  moonpool's, so that ratio isolates moonpool's own overhead;
* on trio (``RealNetwork`` through anyio, raw ``trio.open_tcp_stream`` /
  ``trio.serve_tcp``) and on asyncio (moonpool through anyio's asyncio backend,
  raw ``asyncio.open_connection`` / ``asyncio.start_server``);
* memory: tracemalloc bytes per idle server connection (clients in a child
  process) and per pending ``get_reply`` (server never answers).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import struct
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Protocol

import anyio
import anyio.abc
import trio
from anyio.streams.buffered import BufferedByteReceiveStream

from benchmarks._core import (
    Figure,
    Outcome,
    Settings,
    compare_many_async,
    median,
    rate,
    settle,
)
from moonpool.net import RealNetwork
from moonpool.transport import (
    ClientTransport,
    PeerConfig,
    ReceivedEnvelope,
    ServerTransport,
    TransportError,
)

NAME: Final = "real_tcp"
DESCRIPTION: Final = (
    "ClientTransport/ServerTransport on loopback TCP vs raw sockets (trio, asyncio)"
)

TARGET: Final = 0.7
HOST: Final = "127.0.0.1"
WINDOW: Final = 64
RECEIVE_SIZE: Final = 65536
COALESCE: Final = 64 * 1024  # raw pipelined writer batches up to this much (like moonpool)
TIMEOUT: Final = 60.0
_HEADER: Final = struct.Struct("<QI")
_HEADER_SIZE: Final = _HEADER.size

KiB: Final = 1024


@dataclass(frozen=True, slots=True)
class Scenario:
    backend: str  # "trio" | "asyncio"
    mode: str  # "sequential" | "pipelined"
    size: int
    requests: int  # per moonpool sample, at scale 1.0 (about a second of work)
    # The raw baseline is much faster on small frames; it does this many times
    # more requests per sample so that its samples are not a few milliseconds
    # long (rates are per request, so the counts need not match).
    baseline_factor: int = 1

    @property
    def label(self) -> str:
        size = f"{self.size} B" if self.size < KiB else f"{self.size // KiB} KiB"
        shape = "sequential get_reply" if self.mode == "sequential" else f"{WINDOW} in flight"
        return f"{self.backend}: {shape}, {size}"


SCENARIOS: Final = (
    Scenario("trio", "sequential", 16, 4000, baseline_factor=3),
    Scenario("trio", "sequential", 4 * KiB, 3000, baseline_factor=3),
    Scenario("trio", "sequential", 256 * KiB, 600, baseline_factor=2),
    Scenario("trio", "pipelined", 16, 8192, baseline_factor=16),
    Scenario("trio", "pipelined", 4 * KiB, 8192, baseline_factor=8),
    Scenario("trio", "pipelined", 256 * KiB, 640, baseline_factor=2),
    Scenario("asyncio", "sequential", 16, 3000, baseline_factor=4),
    Scenario("asyncio", "sequential", 4 * KiB, 3000, baseline_factor=4),
    Scenario("asyncio", "sequential", 256 * KiB, 600, baseline_factor=2),
    Scenario("asyncio", "pipelined", 16, 6400, baseline_factor=16),
    Scenario("asyncio", "pipelined", 4 * KiB, 6400, baseline_factor=8),
    Scenario("asyncio", "pipelined", 256 * KiB, 640, baseline_factor=2),
)


# -- the baseline's framing --------------------------------------------------------


class FrameBuffer:
    """A competent hand-written frame parser: bytearray, offset, one unpack per frame."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        offset = 0
        available = len(buffer)
        unpack_from = _HEADER.unpack_from
        while available - offset >= _HEADER_SIZE:
            cid, length = unpack_from(buffer, offset)
            end = offset + _HEADER_SIZE + length
            if end > available:
                break
            frames.append((cid, bytes(buffer[offset + _HEADER_SIZE : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames

    def take_in_order(self, data: bytes, first: int) -> int:
        """Feed received bytes; how many replies completed, checked to carry the ids
        ``first``, ``first + 1``, ... (empty ``data`` means the server hung up)."""
        if not data:
            raise ConnectionError("server closed the connection")
        got = 0
        for cid, _ in self.feed(data):
            if cid != first + got:
                raise AssertionError(f"reply {cid} out of order")
            got += 1
        return got

    def echo(self, data: bytes) -> bytes:
        """Reply frames (same id, same payload) for every complete request in ``data``."""
        pack = _HEADER.pack
        return b"".join([pack(cid, len(body)) + body for cid, body in self.feed(data)])


def _frames(first_id: int, count: int, payload: bytes) -> bytes:
    pack, size = _HEADER.pack, len(payload)
    return b"".join([pack(first_id + i, size) + payload for i in range(count)])


def _batch(payload: bytes) -> int:
    return max(1, COALESCE // (len(payload) + _HEADER_SIZE))


class Client(Protocol):
    """One connected client of one implementation; each call is one timed sample."""

    async def sequential(self, payload: bytes, count: int) -> float: ...

    async def pipelined(self, payload: bytes, count: int) -> float: ...


class RawClient(Client, Protocol):
    async def multiplexed(self, payload: bytes, count: int) -> float:
        """64 tasks, each awaiting its own reply, over one connection: the same
        concurrency model as 64 ``get_reply`` callers, with nothing else."""
        ...


# -- raw trio ----------------------------------------------------------------------


async def _trio_echo_handler(stream: trio.SocketStream) -> None:
    frames = FrameBuffer()
    try:
        while data := await stream.receive_some(RECEIVE_SIZE):
            replies = frames.echo(data)
            if replies:
                await stream.send_all(replies)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class _Window:
    """Shared state of a raw pipelined writer and reader."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0


class RawTrioClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.frames = FrameBuffer()

    async def _expect(self, first: int, count: int) -> None:
        got = 0
        while got < count:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            got += self.frames.take_in_order(data, first + got)

    async def sequential(self, payload: bytes, count: int) -> float:
        pack, size, stream = _HEADER.pack, len(payload), self.stream
        started = time.perf_counter()
        for cid in range(count):
            await stream.send_all(pack(cid, size) + payload)
            await self._expect(cid, 1)
        return rate(count, started)

    async def pipelined(self, payload: bytes, count: int) -> float:
        window, batch = _Window(), _batch(payload)
        wake: list[trio.Event] = []

        async def writer() -> None:
            while window.sent < count:
                room = min(WINDOW - (window.sent - window.received), count - window.sent, batch)
                if room <= 0:
                    event = trio.Event()
                    wake.append(event)
                    await event.wait()
                    continue
                first = window.sent
                window.sent += room
                await self.stream.send_all(_frames(first, room, payload))

        async def reader() -> None:
            while window.received < count:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                window.received += self.frames.take_in_order(data, window.received)
                if wake:
                    wake.pop().set()

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)
        return rate(count, started)

    async def multiplexed(self, payload: bytes, count: int) -> float:
        stream, frames = self.stream, self.frames
        pack, size = _HEADER.pack, len(payload)
        waiting: dict[int, trio.Event] = {}
        replies: dict[int, bytes] = {}
        outgoing: list[bytes] = []
        writer_idle: list[trio.Event] = []
        next_id = [0]

        async def writer() -> None:
            while True:
                if not outgoing:
                    event = trio.Event()
                    writer_idle.append(event)
                    await event.wait()
                    continue
                data = b"".join(outgoing)
                outgoing.clear()
                await stream.send_all(data)

        async def reader() -> None:
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise ConnectionError("server closed the connection")
                for cid, body in frames.feed(data):
                    replies[cid] = body
                    waiting.pop(cid).set()

        async def worker(calls: int) -> None:
            for _ in range(calls):
                cid = next_id[0]
                next_id[0] += 1
                event = waiting[cid] = trio.Event()
                outgoing.append(pack(cid, size) + payload)
                if writer_idle:
                    writer_idle.pop().set()
                await event.wait()
                if len(replies.pop(cid)) != size:
                    raise AssertionError("wrong reply")

        per_task = count // WINDOW
        started = time.perf_counter()
        async with trio.open_nursery() as background:
            background.start_soon(reader)
            background.start_soon(writer)
            async with trio.open_nursery() as workers:
                for _ in range(WINDOW):
                    workers.start_soon(worker, per_task)
            background.cancel_scope.cancel()
        return rate(per_task * WINDOW, started)


@asynccontextmanager
async def raw_trio() -> AsyncIterator[RawClient]:
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            partial(trio.serve_tcp, _trio_echo_handler, 0, host=HOST)
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream(HOST, port)
        try:
            yield RawTrioClient(stream)
        finally:
            await stream.aclose()
            nursery.cancel_scope.cancel()


# -- raw asyncio -------------------------------------------------------------------


async def _asyncio_echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    frames = FrameBuffer()
    try:
        while data := await reader.read(RECEIVE_SIZE):
            replies = frames.echo(data)
            if replies:
                writer.write(replies)
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class RawAsyncioClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = FrameBuffer()

    async def _expect(self, first: int, count: int) -> None:
        got = 0
        while got < count:
            data = await self.reader.read(RECEIVE_SIZE)
            got += self.frames.take_in_order(data, first + got)

    async def sequential(self, payload: bytes, count: int) -> float:
        pack, size, writer = _HEADER.pack, len(payload), self.writer
        started = time.perf_counter()
        for cid in range(count):
            writer.write(pack(cid, size) + payload)
            await writer.drain()
            await self._expect(cid, 1)
        return rate(count, started)

    async def pipelined(self, payload: bytes, count: int) -> float:
        window, batch = _Window(), _batch(payload)
        wake: list[asyncio.Event] = []

        async def writer() -> None:
            while window.sent < count:
                room = min(WINDOW - (window.sent - window.received), count - window.sent, batch)
                if room <= 0:
                    event = asyncio.Event()
                    wake.append(event)
                    await event.wait()
                    continue
                first = window.sent
                window.sent += room
                self.writer.write(_frames(first, room, payload))
                await self.writer.drain()

        async def reader() -> None:
            while window.received < count:
                data = await self.reader.read(RECEIVE_SIZE)
                window.received += self.frames.take_in_order(data, window.received)
                if wake:
                    wake.pop().set()

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            group.create_task(reader())
            group.create_task(writer())
        return rate(count, started)

    async def multiplexed(self, payload: bytes, count: int) -> float:
        frames, stream_reader, stream_writer = self.frames, self.reader, self.writer
        pack, size = _HEADER.pack, len(payload)
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[bytes]] = {}
        outgoing: list[bytes] = []
        writer_idle: list[asyncio.Event] = []
        next_id = [0]

        async def writer() -> None:
            while True:
                if not outgoing:
                    event = asyncio.Event()
                    writer_idle.append(event)
                    await event.wait()
                    continue
                stream_writer.write(b"".join(outgoing))
                outgoing.clear()
                await stream_writer.drain()

        async def reader() -> None:
            while True:
                data = await stream_reader.read(RECEIVE_SIZE)
                if not data:
                    raise ConnectionError("server closed the connection")
                for cid, body in frames.feed(data):
                    waiting.pop(cid).set_result(body)

        async def worker(calls: int) -> None:
            for _ in range(calls):
                cid = next_id[0]
                next_id[0] += 1
                future = waiting[cid] = loop.create_future()
                outgoing.append(pack(cid, size) + payload)
                if writer_idle:
                    writer_idle.pop().set()
                if len(await future) != size:
                    raise AssertionError("wrong reply")

        per_task = count // WINDOW
        started = time.perf_counter()
        background = [loop.create_task(reader()), loop.create_task(writer())]
        try:
            async with asyncio.TaskGroup() as workers:
                for _ in range(WINDOW):
                    workers.create_task(worker(per_task))
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        return rate(per_task * WINDOW, started)


@asynccontextmanager
async def raw_asyncio() -> AsyncIterator[RawClient]:
    server = await asyncio.start_server(_asyncio_echo_handler, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        yield RawAsyncioClient(reader, writer)
    finally:
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()


# -- moonpool ----------------------------------------------------------------------


async def _moonpool_echo_server(
    network: RealNetwork, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    async with ServerTransport.bind(network, f"{HOST}:0") as server:
        task_status.started(server.address)
        await server.serve(_echo)


async def _echo(request: ReceivedEnvelope[Any]) -> bytes:
    return request.payload


class MoonpoolClient:
    def __init__(self, client: ClientTransport, address: str) -> None:
        self.client = client
        self.address = address

    async def sequential(self, payload: bytes, count: int) -> float:
        get_reply, address, size = self.client.get_reply, self.address, len(payload)
        started = time.perf_counter()
        for _ in range(count):
            if len(await get_reply(address, payload)) != size:
                raise AssertionError("wrong reply")
        return rate(count, started)

    async def pipelined(self, payload: bytes, count: int) -> float:
        get_reply, address, size = self.client.get_reply, self.address, len(payload)
        per_task = count // WINDOW

        async def worker() -> None:
            for _ in range(per_task):
                if len(await get_reply(address, payload)) != size:
                    raise AssertionError("wrong reply")

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(WINDOW):
                group.start_soon(worker)
        return rate(per_task * WINDOW, started)


@asynccontextmanager
async def moonpool() -> AsyncIterator[Client]:
    network = RealNetwork()
    async with anyio.create_task_group() as group:
        address: str = await group.start(_moonpool_echo_server, network)
        async with ClientTransport(network, timeout=TIMEOUT) as client:
            await client.get_reply(address, b"connect")  # open the connection up front
            yield MoonpoolClient(client, address)
        group.cancel_scope.cancel()


# -- throughput scenarios ----------------------------------------------------------


def _payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def _sample(client: Client, scenario: Scenario, count: int) -> Callable[[], Awaitable[float]]:
    payload = _payload(scenario.size)
    if scenario.mode == "sequential":
        return lambda: client.sequential(payload, count)
    return lambda: client.pipelined(payload, count)


def _mux_sample(
    client: RawClient, scenario: Scenario, count: int
) -> Callable[[], Awaitable[float]]:
    payload = _payload(scenario.size)
    return lambda: client.multiplexed(payload, count)


async def _run_backend(
    backend: str,
    raw: Callable[[], AbstractAsyncContextManager[RawClient]],
    settings: Settings,
) -> list[Figure]:
    figures: list[Figure] = []
    raw_name = "raw trio socket" if backend == "trio" else "raw asyncio streams"
    async with raw() as baseline, moonpool() as candidate:
        for scenario in SCENARIOS:
            if scenario.backend != backend:
                continue
            count = settings.count(scenario.requests, minimum=WINDOW)
            if scenario.mode == "pipelined":
                count -= count % WINDOW
            base_count = count * scenario.baseline_factor
            samplers = [_sample(baseline, scenario, base_count)]
            if scenario.mode == "pipelined":
                samplers.append(_mux_sample(baseline, scenario, count * 2))
            cand, bases = await compare_many_async(
                _sample(candidate, scenario, count), samplers, settings
            )
            details = {
                "backend": backend,
                "mode": scenario.mode,
                "payload_bytes": scenario.size,
                "requests_per_sample": count,
                "baseline_requests_per_sample": base_count,
                "in_flight": 1 if scenario.mode == "sequential" else WINDOW,
                "moonpool_MB_per_s": median(cand) * scenario.size * 2 / 1e6,
            }
            figures.append(
                Figure(
                    scenario.label,
                    "req/s",
                    cand,
                    bases[0],
                    raw_name + (" (64 frames outstanding)" if len(bases) > 1 else ""),
                    target=TARGET,
                    details=details,
                )
            )
            if len(bases) > 1:
                figures.append(
                    Figure(
                        f"{scenario.label} vs 64 raw tasks (info)",
                        "req/s",
                        cand,
                        bases[1],
                        f"{raw_name}, 64 tasks + reader/writer task",
                        details={**details, "baseline_requests_per_sample": count * 2},
                    )
                )
    return figures


async def _trio_throughput(settings: Settings) -> list[Figure]:
    return await _run_backend("trio", raw_trio, settings)


async def _asyncio_throughput(settings: Settings) -> list[Figure]:
    return await _run_backend("asyncio", raw_asyncio, settings)


# -- memory ------------------------------------------------------------------------

_CLIENTS_SCRIPT: Final = """
import signal, socket, sys
if hasattr(signal, "alarm"):
    signal.alarm(120)  # never outlive a stuck parent
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
sockets = [socket.create_connection((host, port), timeout=30) for _ in range(count)]
print("connected", flush=True)
sys.stdin.read()
"""


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _idle_connection_bytes(port: int, accepted: Callable[[], int], count: int) -> float:
    """tracemalloc bytes per idle connection the server holds, clients in a child process."""
    command = [sys.executable, "-c", _CLIENTS_SCRIPT, HOST, str(port), str(count)]
    async with await anyio.open_process(command) as process:
        assert process.stdin is not None and process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        try:
            if await lines.receive_until(b"\n", 100) != b"ready":
                raise AssertionError("client process did not start")
            await anyio.sleep(0.1)
            before = _traced()
            await process.stdin.send(b"connect\n")
            if await lines.receive_until(b"\n", 100) != b"connected":
                raise AssertionError("client process could not connect")
            await settle(lambda: accepted() >= count, f"{count} connections accepted")
            after = _traced()
        finally:
            await process.stdin.aclose()
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
    return (after - before) / count


async def _moonpool_idle(count: int) -> float:
    network = RealNetwork()
    async with ServerTransport.bind(network, f"{HOST}:0") as server:
        port = int(server.address.rpartition(":")[2])
        result = await _idle_connection_bytes(port, lambda: server.connection_count, count)
    return result


async def _raw_trio_idle(count: int) -> float:
    live = [0]

    async def handler(stream: trio.SocketStream) -> None:
        live[0] += 1
        try:
            await _trio_echo_handler(stream)
        finally:
            live[0] -= 1

    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            partial(trio.serve_tcp, handler, 0, host=HOST)
        )
        port = listeners[0].socket.getsockname()[1]
        result = await _idle_connection_bytes(port, lambda: live[0], count)
        nursery.cancel_scope.cancel()
    return result


async def _moonpool_pending(count: int) -> float:
    """tracemalloc bytes per pending get_reply (caller task included), server silent."""
    received = [0]
    payload = bytes(16)
    frame_size = _HEADER_SIZE + len(payload)

    async def discard(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                while True:
                    received[0] += len(await stream.receive(RECEIVE_SIZE))
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    failures = [0]
    listener = await anyio.create_tcp_listener(local_host=HOST)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    address = f"{HOST}:{port}"
    config = PeerConfig(max_queued_frames=count + 1024)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, discard)
        async with ClientTransport(RealNetwork(), timeout=120.0, peer_config=config) as client:

            async def call() -> None:
                try:
                    await client.get_reply(address, payload)
                except TransportError:
                    failures[0] += 1

            async with anyio.create_task_group() as callers:
                callers.start_soon(call)  # opens the connection before we measure
                await settle(lambda: received[0] >= frame_size, "connection open")
                before = _traced()
                # In batches, so the peer's queue drains to the socket as we go.
                for started in range(1, count + 1):
                    callers.start_soon(call)
                    if started % 500 == 0:
                        await settle(
                            partial(_more_pending, client, started), "requests started", idle=0
                        )
                await settle(
                    lambda: received[0] >= (count + 1) * frame_size, "all requests on the wire"
                )
                after = _traced()
                if failures[0] or client.pending != count + 1:
                    raise AssertionError(
                        f"{failures[0]} requests failed early; {client.pending} pending"
                    )
                await client.aclose()
        group.cancel_scope.cancel()
    return (after - before) / count


def _more_pending(client: ClientTransport, than: int) -> bool:
    return client.pending > than


async def _bare_pending(count: int) -> float:
    """The floor: a task parked on an event with a timeout, nothing else."""
    event = anyio.Event()
    parked = [0]

    async def park() -> None:
        parked[0] += 1
        with anyio.move_on_after(120.0):
            await event.wait()

    before = _traced()
    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(park)
        await settle(lambda: parked[0] == count, "tasks parked")
        after = _traced()
        event.set()
    return (after - before) / count


async def _memory(settings: Settings) -> list[Figure]:
    connections = settings.count(200, minimum=20)
    pending = settings.count(10_000, minimum=200)
    samples = max(1, min(3, settings.repeats))
    idle_moon: list[float] = []
    idle_raw: list[float] = []
    pend_moon: list[float] = []
    pend_bare: list[float] = []
    tracemalloc.start()
    try:
        for index in range(settings.warmup + samples):
            # The first round warms up what the process keeps (trio's I/O maps,
            # interned strings, free lists); only the later rounds are kept.
            figures = (
                await _raw_trio_idle(connections),
                await _moonpool_idle(connections),
                await _bare_pending(pending),
                await _moonpool_pending(pending),
            )
            if index >= settings.warmup:
                for into, value in zip(
                    (idle_raw, idle_moon, pend_bare, pend_moon), figures, strict=True
                ):
                    into.append(value)
    finally:
        tracemalloc.stop()
    return [
        Figure(
            "trio: memory per idle server connection",
            "B",
            idle_moon,
            idle_raw,
            "raw trio.serve_tcp handler",
            higher_is_better=False,
            details={"connections": connections, "measure": "tracemalloc, server side only"},
        ),
        Figure(
            "trio: memory per pending get_reply",
            "B",
            pend_moon,
            pend_bare,
            "bare task parked with a timeout",
            higher_is_better=False,
            details={
                "pending_requests": pending,
                "measure": "tracemalloc, includes the caller task",
            },
        ),
    ]


#: glibc ``mallopt`` parameters (malloc.h): free heap kept before trimming, and the
#: request size from which malloc maps pages of its own instead of using the heap.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3


def steady_heap() -> str:
    """Keep glibc from handing heap memory back to the OS after every large free.

    With its default, adaptive thresholds, glibc may trim the top of the heap
    whenever 256 KiB buffers are freed and grow it again for the next frame: a
    page fault per 4 KiB touched, on every round trip.  Whether that happens
    depends on heap layout, so it hits moonpool or the baseline at random and the
    256 KiB ratios swung between 0.6x and 1.2x from run to run.  Fixed thresholds
    make both sides reuse the heap, so the ratio compares the libraries' own work.
    Process-wide and not undone (the adaptive mode cannot be restored); the
    benchmarks that run before this one are unaffected.  Returns a note.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return "heap: malloc left at its defaults (no mallopt in this C library)"
    trim, mmap = 64 * 1024 * 1024, 4 * 1024 * 1024
    if not (mallopt(_M_TRIM_THRESHOLD, trim) and mallopt(_M_MMAP_THRESHOLD, mmap)):
        return "heap: malloc left at its defaults (mallopt refused the thresholds)"
    return (
        f"heap: glibc trim threshold {trim >> 20} MiB and mmap threshold {mmap >> 20} MiB "
        "(mallopt), so that large frames reuse heap memory on both sides instead of "
        "page-faulting it in again every round trip at random (see steady_heap)"
    )


def run(settings: Settings) -> Outcome:
    heap_note = steady_heap()
    figures: list[Figure] = trio.run(_trio_throughput, settings)
    figures += anyio.run(_asyncio_throughput, settings, backend="asyncio")
    figures += trio.run(_memory, settings)
    return Outcome(
        figures=figures,
        notes=[
            "servers and clients run in the same process and the same event loop (one "
            "core does both sides' work); loopback 127.0.0.1 only; TCP_NODELAY on both sides",
            "moonpool: RealNetwork + ServerTransport.serve() with a handler returning "
            "request.payload, ClientTransport.get_reply (64 tasks for the pipelined case)",
            "baseline server: 64 KiB reads, parse [u64][u32][payload] frames, one write of "
            f"all reply frames per read; pipelined baseline client batches <= {COALESCE} "
            "bytes per write, like moonpool's peer",
            "'vs 64 raw tasks (info)': 64 tasks each send a frame and await their own reply "
            "(event/future per request, dict by id, one writer and one reader task): the "
            "cost of the task-per-request model without moonpool; (64 raw tasks rate) / "
            "(64 frames outstanding rate) is therefore the most 64 get_reply tasks could "
            "reach against the pipelined target",
            "the raw sides do more requests per sample than moonpool (rates are per request) "
            "so that their samples are not only a few milliseconds long",
            heap_note,
            "memory: tracemalloc (Python heap only, kernel socket buffers excluded); idle "
            "connections are opened by a child process so only the server side is counted; "
            "per pending request includes the caller's task",
        ],
    )

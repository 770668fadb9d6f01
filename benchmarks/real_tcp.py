"""moonpool's transport on real loopback TCP vs raw sockets with the same framing.

Every scenario runs both sides -- an echo server and a client -- in one process
and one event loop, like a unit benchmark: the figures are CPU cost per request
of the whole stack (client + server), which is what the ratio compares.  The
baselines speak the same ``[u64 LE id][u32 LE len][payload]`` frames: the server
reads with 64 KiB reads, parses every complete frame and echoes a reply frame
per request (one write per read); the clients are the obvious efficient loops.

Scenarios (``N`` requests per sample, payload echoed back):

* sequential: one ``get_reply`` at a time vs write-frame/read-reply on a socket;
  at 16 B against both server styles (``async for request in server`` +
  ``request.reply``, and ``server.serve(handler)``), at 4 KiB and 256 KiB
  against ``serve()``;
* 64 in flight on one connection (64 tasks calling ``get_reply``) vs the *fair
  multiplexer* a careful user writes by hand: one reader task dispatching each
  reply to its caller's waiter, 64 caller tasks each writing its own frame (the
  target).  For information also vs a raw single-task pipeline (one writer
  keeping 64 frames outstanding, many frames per write: not the same
  programming model, so no target) and vs the multiplexer with a writer task
  that batches what the callers queued;
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
import itertools
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Literal, Protocol

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
    pin_child,
    rate,
    settle,
)
from benchmarks._frames import (
    HEADER,
    HEADER_SIZE,
    RECEIVE_SIZE,
    FrameBuffer,
    asyncio_echo_handler,
    frames,
    payload,
)
from moonpool.net import RealNetwork
from moonpool.transport import (
    ClientTransport,
    PeerConfig,
    ReceivedEnvelope,
    ServerTransport,
    TransportError,
)

__all__ = ["SCENARIOS", "FrameBuffer", "Scenario", "moonpool", "run"]

NAME: Final = "real_tcp"
DESCRIPTION: Final = (
    "ClientTransport/ServerTransport on loopback TCP vs raw sockets (trio, asyncio)"
)

HOST: Final = "127.0.0.1"
WINDOW: Final = 64
COALESCE: Final = 64 * 1024  # raw pipelined writer batches up to this much (like moonpool)
TIMEOUT: Final = 60.0
#: Targets (minimum ratios) by scenario; see SCENARIOS.
SEQUENTIAL_SMALL_TARGET: Final = 0.8  # sequential 16 B, either server style
IN_FLIGHT_SMALL_TARGET: Final = 0.9  # 64 in flight, 16 B, vs the fair multiplexer
LARGE_TARGET: Final = 0.7  # 4 KiB and 256 KiB, either mode

KiB: Final = 1024

ServerStyle = Literal["serve", "async for"]
SERVER_LABELS: Final[dict[str, str]] = {"serve": "serve()", "async for": "async for"}


@dataclass(frozen=True, slots=True)
class Scenario:
    backend: str  # "trio" | "asyncio"
    mode: str  # "sequential" | "pipelined"
    size: int
    requests: int  # per moonpool sample, at scale 1.0 (about a second of work)
    target: float | None
    # The raw baseline is much faster on small frames; it does this many times
    # more requests per sample so that its samples are not a few milliseconds
    # long (rates are per request, so the counts need not match).
    baseline_factor: int = 1
    server: ServerStyle = "serve"

    @property
    def label(self) -> str:
        size = f"{self.size} B" if self.size < KiB else f"{self.size // KiB} KiB"
        if self.mode == "sequential":
            return f"{self.backend}: sequential get_reply, {size}, {SERVER_LABELS[self.server]}"
        return f"{self.backend}: {WINDOW} in flight, {size}"


def _scenarios(backend: str, sequential: int, pipelined: int) -> tuple[Scenario, ...]:
    return (
        Scenario(backend, "sequential", 16, sequential, SEQUENTIAL_SMALL_TARGET, 4, "async for"),
        Scenario(backend, "sequential", 16, sequential, SEQUENTIAL_SMALL_TARGET, 4, "serve"),
        Scenario(backend, "sequential", 4 * KiB, 3000, LARGE_TARGET, 4),
        Scenario(backend, "sequential", 256 * KiB, 600, LARGE_TARGET, 2),
        Scenario(backend, "pipelined", 16, pipelined, IN_FLIGHT_SMALL_TARGET, 16),
        Scenario(backend, "pipelined", 4 * KiB, pipelined, LARGE_TARGET, 8),
        Scenario(backend, "pipelined", 256 * KiB, 640, LARGE_TARGET, 2),
    )


SCENARIOS: Final = (*_scenarios("trio", 4000, 8192), *_scenarios("asyncio", 3000, 6400))

#: The in-flight baselines, in the order of their figures; the first is judged.
FAIR: Final = "fair"
PIPELINE: Final = "pipeline"
WRITER_TASK: Final = "writer task"
IN_FLIGHT_BASELINES: Final = (FAIR, PIPELINE, WRITER_TASK)
#: How many times moonpool's request count each in-flight baseline does per sample
#: (the pipeline's is the scenario's ``baseline_factor``).
MUX_FACTOR: Final = 2


def _batch(body: bytes) -> int:
    return max(1, COALESCE // (len(body) + HEADER_SIZE))


class Client(Protocol):
    """One connected client of one implementation; each call is one timed sample."""

    async def sequential(self, payload: bytes, count: int) -> float: ...

    async def pipelined(self, payload: bytes, count: int) -> float: ...


class RawClient(Client, Protocol):
    async def fair(self, payload: bytes, count: int) -> float:
        """64 caller tasks over one connection, each writing its own request frame
        and waiting on its own waiter; one reader task hands each reply to its
        caller: the programming model of 64 ``get_reply`` callers, done by hand."""
        ...

    async def multiplexed(self, payload: bytes, count: int) -> float:
        """Like :meth:`fair`, but the callers queue their frames for a writer task,
        which sends whatever has accumulated in one write."""
        ...


# -- raw trio ----------------------------------------------------------------------


async def _trio_echo_handler(stream: trio.SocketStream) -> None:
    buffer = FrameBuffer()
    try:
        while data := await stream.receive_some(RECEIVE_SIZE):
            replies = buffer.echo(data)
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
        pack, size, stream = HEADER.pack, len(payload), self.stream
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
                await self.stream.send_all(frames(first, room, payload))

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

    async def _callers(
        self, per_task: int, call: Callable[[], Awaitable[bytes]], size: int
    ) -> None:
        async def worker() -> None:
            for _ in range(per_task):
                if len(await call()) != size:
                    raise AssertionError("wrong reply")

        async with trio.open_nursery() as workers:
            for _ in range(WINDOW):
                workers.start_soon(worker)

    async def _reader(self, waiting: dict[int, trio.Event], replies: dict[int, bytes]) -> None:
        stream, buffer = self.stream, self.frames
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise ConnectionError("server closed the connection")
            for cid, body in buffer.feed(data):
                replies[cid] = body
                waiting.pop(cid).set()

    async def fair(self, payload: bytes, count: int) -> float:
        stream, pack, size = self.stream, HEADER.pack, len(payload)
        waiting: dict[int, trio.Event] = {}
        replies: dict[int, bytes] = {}
        ids = itertools.count()
        # trio streams refuse two concurrent send_all calls, and send_all is a
        # checkpoint: with a lock around it, only one caller's frame leaves per
        # scheduler pass (about 5k req/s at 16 B, a strawman).  So a caller that
        # finds no send under way sends its own frame, and with it whatever frames
        # other callers queued while it was sending; the others only queue theirs.
        queued: list[bytes] = []
        sending = [False]

        async def call() -> bytes:
            cid = next(ids)
            event = waiting[cid] = trio.Event()
            queued.append(pack(cid, size) + payload)
            if not sending[0]:
                sending[0] = True
                try:
                    while queued:
                        data = b"".join(queued)
                        queued.clear()
                        await stream.send_all(data)
                finally:
                    sending[0] = False
            await event.wait()
            return replies.pop(cid)

        per_task = count // WINDOW
        started = time.perf_counter()
        async with trio.open_nursery() as background:
            background.start_soon(self._reader, waiting, replies)
            await self._callers(per_task, call, size)
            background.cancel_scope.cancel()
        return rate(per_task * WINDOW, started)

    async def multiplexed(self, payload: bytes, count: int) -> float:
        stream, pack, size = self.stream, HEADER.pack, len(payload)
        waiting: dict[int, trio.Event] = {}
        replies: dict[int, bytes] = {}
        outgoing: list[bytes] = []
        writer_idle: list[trio.Event] = []
        ids = itertools.count()

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

        async def call() -> bytes:
            cid = next(ids)
            event = waiting[cid] = trio.Event()
            outgoing.append(pack(cid, size) + payload)
            if writer_idle:
                writer_idle.pop().set()
            await event.wait()
            return replies.pop(cid)

        per_task = count // WINDOW
        started = time.perf_counter()
        async with trio.open_nursery() as background:
            background.start_soon(self._reader, waiting, replies)
            background.start_soon(writer)
            await self._callers(per_task, call, size)
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
        pack, size, writer = HEADER.pack, len(payload), self.writer
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
                self.writer.write(frames(first, room, payload))
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

    async def _read_replies(self, waiting: dict[int, asyncio.Future[bytes]]) -> None:
        stream_reader, buffer = self.reader, self.frames
        while True:
            data = await stream_reader.read(RECEIVE_SIZE)
            if not data:
                raise ConnectionError("server closed the connection")
            for cid, body in buffer.feed(data):
                waiting.pop(cid).set_result(body)

    async def _with_reader(
        self,
        waiting: dict[int, asyncio.Future[bytes]],
        call: Callable[[], Awaitable[bytes]],
        per_task: int,
        size: int,
        extra: tuple[Callable[[], Coroutine[Any, Any, None]], ...] = (),
    ) -> None:
        async def worker() -> None:
            for _ in range(per_task):
                if len(await call()) != size:
                    raise AssertionError("wrong reply")

        loop = asyncio.get_running_loop()
        background = [loop.create_task(self._read_replies(waiting))]
        background += [loop.create_task(task()) for task in extra]
        try:
            async with asyncio.TaskGroup() as workers:
                for _ in range(WINDOW):
                    workers.create_task(worker())
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def fair(self, payload: bytes, count: int) -> float:
        stream_writer, pack, size = self.writer, HEADER.pack, len(payload)
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[bytes]] = {}
        ids = itertools.count()

        async def call() -> bytes:
            cid = next(ids)
            future: asyncio.Future[bytes] = loop.create_future()
            waiting[cid] = future
            stream_writer.write(pack(cid, size) + payload)
            await stream_writer.drain()
            return await future

        per_task = count // WINDOW
        started = time.perf_counter()
        await self._with_reader(waiting, call, per_task, size)
        return rate(per_task * WINDOW, started)

    async def multiplexed(self, payload: bytes, count: int) -> float:
        stream_writer, pack, size = self.writer, HEADER.pack, len(payload)
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[bytes]] = {}
        outgoing: list[bytes] = []
        writer_idle: list[asyncio.Event] = []
        ids = itertools.count()

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

        async def call() -> bytes:
            cid = next(ids)
            future: asyncio.Future[bytes] = loop.create_future()
            waiting[cid] = future
            outgoing.append(pack(cid, size) + payload)
            if writer_idle:
                writer_idle.pop().set()
            return await future

        per_task = count // WINDOW
        started = time.perf_counter()
        await self._with_reader(waiting, call, per_task, size, (writer,))
        return rate(per_task * WINDOW, started)


@asynccontextmanager
async def raw_asyncio() -> AsyncIterator[RawClient]:
    server = await asyncio.start_server(asyncio_echo_handler, HOST, 0)
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


async def _echo(request: ReceivedEnvelope[Any]) -> bytes:
    return request.payload


async def _moonpool_echo_server(
    network: RealNetwork,
    style: ServerStyle = "serve",
    *,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with ServerTransport.bind(network, f"{HOST}:0") as server:
        task_status.started(server.address)
        if style == "serve":
            await server.serve(_echo)
        else:
            async for request in server:
                await request.reply(request.payload)


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
async def moonpool(server: ServerStyle = "serve") -> AsyncIterator[Client]:
    """A moonpool echo server (``serve()`` or ``async for``) and a connected client."""
    network = RealNetwork()
    async with anyio.create_task_group() as group:
        address: str = await group.start(_moonpool_echo_server, network, server)
        async with ClientTransport(network, timeout=TIMEOUT) as client:
            await client.get_reply(address, b"connect")  # open the connection up front
            yield MoonpoolClient(client, address)
        group.cancel_scope.cancel()


# -- throughput scenarios ----------------------------------------------------------


def _sample(client: Client, scenario: Scenario, count: int) -> Callable[[], Awaitable[float]]:
    body = payload(scenario.size)
    if scenario.mode == "sequential":
        return lambda: client.sequential(body, count)
    return lambda: client.pipelined(body, count)


def _in_flight_sample(
    client: RawClient, kind: str, scenario: Scenario, count: int
) -> Callable[[], Awaitable[float]]:
    body = payload(scenario.size)
    if kind == FAIR:
        return lambda: client.fair(body, count)
    if kind == WRITER_TASK:
        return lambda: client.multiplexed(body, count)
    return lambda: client.pipelined(body, count)


def _baseline_names(backend: str) -> dict[str, str]:
    raw = "raw trio socket" if backend == "trio" else "raw asyncio streams"
    return {
        "sequential": raw,
        FAIR: f"{raw}, fair multiplexer: 1 reader task, per-call waiters, calls write frames",
        PIPELINE: f"{raw}, one task keeping 64 frames outstanding (batched writes)",
        WRITER_TASK: f"{raw}, 64 tasks + reader task + a writer task batching their frames",
    }


async def _run_backend(
    backend: str,
    raw: Callable[[], AbstractAsyncContextManager[RawClient]],
    settings: Settings,
) -> list[Figure]:
    figures: list[Figure] = []
    names = _baseline_names(backend)
    async with AsyncExitStack() as stack:
        baseline = await stack.enter_async_context(raw())
        candidates: dict[str, Client] = {
            style: await stack.enter_async_context(moonpool(style))
            for style in ("serve", "async for")
        }
        for scenario in SCENARIOS:
            if scenario.backend != backend:
                continue
            figures += await _scenario(scenario, baseline, candidates, names, settings)
    return figures


async def _scenario(
    scenario: Scenario,
    baseline: RawClient,
    candidates: dict[str, Client],
    names: dict[str, str],
    settings: Settings,
) -> list[Figure]:
    count = settings.count(scenario.requests, minimum=WINDOW)
    if scenario.mode == "pipelined":
        count -= count % WINDOW
    candidate = _sample(candidates[scenario.server], scenario, count)
    details: dict[str, Any] = {
        "backend": scenario.backend,
        "mode": scenario.mode,
        "server": SERVER_LABELS[scenario.server],
        "payload_bytes": scenario.size,
        "requests_per_sample": count,
        "in_flight": 1 if scenario.mode == "sequential" else WINDOW,
    }
    if scenario.mode == "sequential":
        base_count = count * scenario.baseline_factor
        cand, (base,) = await compare_many_async(
            candidate, [_sample(baseline, scenario, base_count)], settings
        )
        details["moonpool_MB_per_s"] = median(cand) * scenario.size * 2 / 1e6
        details["baseline_requests_per_sample"] = base_count
        return [
            Figure(
                scenario.label,
                "req/s",
                cand,
                base,
                names["sequential"],
                target=scenario.target,
                details=details,
            )
        ]
    counts = {
        FAIR: count * MUX_FACTOR,
        PIPELINE: count * scenario.baseline_factor,
        WRITER_TASK: count * MUX_FACTOR,
    }
    cand, bases = await compare_many_async(
        candidate,
        [_in_flight_sample(baseline, kind, scenario, counts[kind]) for kind in IN_FLIGHT_BASELINES],
        settings,
    )
    details["moonpool_MB_per_s"] = median(cand) * scenario.size * 2 / 1e6
    result: list[Figure] = []
    for kind, base in zip(IN_FLIGHT_BASELINES, bases, strict=True):
        judged = kind == FAIR
        result.append(
            Figure(
                scenario.label if judged else f"{scenario.label} vs {kind_label(kind)} (info)",
                "req/s",
                cand,
                base,
                names[kind],
                target=scenario.target if judged else None,
                details={**details, "baseline": kind, "baseline_requests_per_sample": counts[kind]},
            )
        )
    return result


def kind_label(kind: str) -> str:
    return {PIPELINE: "raw pipeline", WRITER_TASK: "raw mux + writer task"}.get(kind, kind)


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
        pin_child(process.pid)  # off the server's CPU, when there is another
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
    body = bytes(16)
    frame_size = HEADER_SIZE + len(body)

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
                    await client.get_reply(address, body)
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
    samples = 1 if settings.quick else max(1, min(3, settings.repeats))  # --quick: smoke test
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
            "moonpool: RealNetwork + ServerTransport (a handler returning request.payload "
            "under serve(), or one task doing 'async for request in server: await "
            "request.reply(request.payload)'), ClientTransport.get_reply (64 tasks for the "
            "in-flight case); 4 KiB, 256 KiB and in-flight scenarios use serve()",
            "baseline server: 64 KiB reads, parse [u64][u32][payload] frames, one write of "
            "all reply frames per read",
            f"64 in flight, judged against the fair multiplexer (target {IN_FLIGHT_SMALL_TARGET}x "
            f"at 16 B, {LARGE_TARGET}x above): 64 caller tasks each write their own frame "
            "(asyncio: write + drain; trio: a caller that finds no send_all under way sends "
            "its frame and any frames other callers queued meanwhile -- trio refuses "
            "concurrent send_all, and a lock held across its checkpoint lets one frame out "
            "per scheduler pass, a strawman at about 5k req/s) and wait on their own "
            "trio.Event / asyncio future; one reader task "
            "parses the replies and wakes each caller: the same programming model as 64 "
            "get_reply callers, written by hand",
            f"(info) vs raw pipeline: one writer task keeps 64 frames outstanding, up to "
            f"{COALESCE} bytes per write, one reader task -- a different programming model "
            "(no per-call waiter), hence no target; vs raw mux + writer task: the fair "
            "multiplexer with the callers' frames batched by a writer task",
            "the raw sides do more requests per sample than moonpool (rates are per request) "
            "so that their samples are not only a few milliseconds long",
            heap_note,
            "memory: tracemalloc (Python heap only, kernel socket buffers excluded); idle "
            "connections are opened by a child process (pinned to the children's CPU) so only "
            "the server side is counted; per pending request includes the caller's task",
        ],
    )

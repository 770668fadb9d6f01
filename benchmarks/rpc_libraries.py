"""moonpool next to other asyncio RPC libraries: grpc.aio and pyzmq (information only).

On asyncio, in one process and one event loop, loopback TCP (127.0.0.1), 16 B
payloads echoed back, sequential and 64 in flight on one connection:

* **moonpool**: ``ServerTransport.serve()`` with a handler returning
  ``request.payload``, ``ClientTransport.get_reply`` (anyio's asyncio backend) --
  the ``real_tcp`` client and server;
* **grpc.aio**: a generic unary-unary handler echoing its request (no protobuf:
  the request and reply are the raw bytes), one channel; 64 in flight = 64 tasks
  awaiting their own call;
* **pyzmq** (``zmq.asyncio``): a ROUTER echoing ``[identity, id, payload]``, one
  DEALER; 64 in flight = 64 tasks each sending ``[id, payload]`` and awaiting a
  future that one reader task completes.

These are different protocols (HTTP/2 and ZMTP against moonpool's frames), so
there are no targets: the ratios say where moonpool stands.  Each library is
measured only if it is installed (neither is a dependency of moonpool or of its
benchmarks): ``pip install grpcio pyzmq`` to include them.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final, Protocol

import anyio

from benchmarks._core import Figure, Outcome, Settings, compare_many_async, rate
from benchmarks._frames import payload
from benchmarks.real_tcp import Client, moonpool

NAME: Final = "rpc_libraries"
DESCRIPTION: Final = "moonpool vs grpc.aio and pyzmq on asyncio, loopback TCP (info, if installed)"

HOST: Final = "127.0.0.1"
PAYLOAD_SIZE: Final = 16
WINDOW: Final = 64
#: Requests per sample at scale 1.0, for every side.
SEQUENTIAL: Final = 3000
IN_FLIGHT: Final = 6400
METHOD: Final = "/moonpool.bench.Echo/Echo"


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


class Library(Protocol):
    async def sequential(self, body: bytes, count: int) -> float: ...

    async def pipelined(self, body: bytes, count: int) -> float: ...


async def _many(call: Callable[[], Awaitable[bytes]], count: int, size: int) -> float:
    per_task = count // WINDOW

    async def worker() -> None:
        for _ in range(per_task):
            if len(await call()) != size:
                raise AssertionError("wrong reply")

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(WINDOW):
            group.create_task(worker())
    return rate(per_task * WINDOW, started)


# -- grpc.aio ---------------------------------------------------------------------------


class Grpc:
    def __init__(self, call: Any) -> None:
        self.call = call

    async def sequential(self, body: bytes, count: int) -> float:
        call, size = self.call, len(body)
        started = time.perf_counter()
        for _ in range(count):
            if len(await call(body)) != size:
                raise AssertionError("wrong reply")
        return rate(count, started)

    async def pipelined(self, body: bytes, count: int) -> float:
        call = self.call

        async def one() -> bytes:
            reply: bytes = await call(body)
            return reply

        return await _many(one, count, len(body))


@asynccontextmanager
async def grpc_echo(grpc: Any) -> AsyncIterator[Library]:
    aio = importlib.import_module("grpc.aio")

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = aio.server()
    service, method = METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    channel = aio.insecure_channel(f"{HOST}:{port}")
    try:
        call = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        await call(b"connect")
        yield Grpc(call)
    finally:
        await channel.close()
        await server.stop(None)


# -- pyzmq --------------------------------------------------------------------------------


class Zmq:
    def __init__(self, dealer: Any) -> None:
        self.dealer = dealer
        self.ids = itertools.count()

    async def sequential(self, body: bytes, count: int) -> float:
        dealer, size = self.dealer, len(body)
        started = time.perf_counter()
        for _ in range(count):
            cid = next(self.ids).to_bytes(8, "little")
            await dealer.send_multipart([cid, body])
            got, reply = await dealer.recv_multipart()
            if got != cid or len(reply) != size:
                raise AssertionError("wrong reply")
        return rate(count, started)

    async def pipelined(self, body: bytes, count: int) -> float:
        dealer = self.dealer
        loop = asyncio.get_running_loop()
        waiting: dict[bytes, asyncio.Future[bytes]] = {}

        async def reader() -> None:
            while True:
                cid, reply = await dealer.recv_multipart()
                waiting.pop(cid).set_result(reply)

        async def one() -> bytes:
            cid = next(self.ids).to_bytes(8, "little")
            future: asyncio.Future[bytes] = loop.create_future()
            waiting[cid] = future
            await dealer.send_multipart([cid, body])
            return await future

        background = loop.create_task(reader())
        try:
            return await _many(one, count, len(body))
        finally:
            background.cancel()
            await asyncio.gather(background, return_exceptions=True)


@asynccontextmanager
async def zmq_echo(zmq: Any) -> AsyncIterator[Library]:
    zmq_asyncio = importlib.import_module("zmq.asyncio")
    context = zmq_asyncio.Context()
    router = context.socket(zmq.ROUTER)
    dealer = context.socket(zmq.DEALER)
    for socket in (router, dealer):
        socket.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port(f"tcp://{HOST}")
    dealer.connect(f"tcp://{HOST}:{port}")

    async def serve() -> None:
        while True:
            await router.send_multipart(await router.recv_multipart())

    server = asyncio.get_running_loop().create_task(serve())
    try:
        client = Zmq(dealer)
        await client.sequential(b"connect", 1)
        yield client
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        dealer.close()
        router.close()
        context.term()


# -- the benchmark ---------------------------------------------------------------------

LIBRARIES: Final = (
    ("grpc.aio", "grpc", "grpcio", grpc_echo),
    ("pyzmq", "zmq", "pyzmq", zmq_echo),
)


async def _main(settings: Settings, names: list[str]) -> list[Figure]:
    figures: list[Figure] = []
    async with AsyncExitStack() as stack:
        candidate: Client = await stack.enter_async_context(moonpool("serve"))
        others: list[tuple[str, Library]] = []
        for label, module, _, opener in LIBRARIES:
            if label in names:
                others.append((label, await stack.enter_async_context(opener(_optional(module)))))
        body = payload(PAYLOAD_SIZE)
        for mode, full in (("sequential", SEQUENTIAL), ("pipelined", IN_FLIGHT)):
            count = settings.count(full, minimum=WINDOW)
            count -= count % WINDOW

            def side(client: Client | Library, mode: str = mode, count: int = count) -> Any:
                method = client.sequential if mode == "sequential" else client.pipelined
                return lambda: method(body, count)

            cand, bases = await compare_many_async(
                side(candidate), [side(library) for _, library in others], settings
            )
            shape = "sequential" if mode == "sequential" else f"{WINDOW} in flight"
            for (label, _), base in zip(others, bases, strict=True):
                figures.append(
                    Figure(
                        f"asyncio: {shape}, {PAYLOAD_SIZE} B vs {label} (info)",
                        "req/s",
                        cand,
                        base,
                        label,
                        details={"requests_per_sample": count, "payload_bytes": PAYLOAD_SIZE},
                    )
                )
    return figures


def run(settings: Settings) -> Outcome:
    installed = [label for label, module, _, _ in LIBRARIES if _optional(module) is not None]
    missing = [package for label, _, package, _ in LIBRARIES if label not in installed]
    notes = [
        "information only (different protocols); asyncio, one process and one event loop, "
        f"127.0.0.1, {PAYLOAD_SIZE} B echoed; moonpool: ServerTransport.serve() + "
        "ClientTransport.get_reply; grpc.aio: a generic unary-unary echo handler (raw bytes, "
        "no protobuf), one channel; pyzmq: ROUTER echo, one DEALER, 64 in flight through "
        "one reader task and per-call futures",
    ]
    notes.append(
        "grpc and libzmq run I/O threads of their own inside this process, on the same "
        "pinned CPU: while they are loaded, every side of this benchmark (moonpool's too) may "
        "run slower than in real_tcp"
    )
    if missing:
        notes.append(
            f"skipped (not installed): {', '.join(missing)} -- pip install them to compare"
        )
    if not installed:
        return Outcome(notes=notes)
    figures: list[Figure] = anyio.run(_main, settings, installed, backend="asyncio")
    return Outcome(figures=figures, notes=notes)

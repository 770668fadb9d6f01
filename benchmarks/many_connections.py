"""1,000 client connections, 4 requests in flight on each, to one server (asyncio).

One process, one asyncio event loop, loopback TCP (127.0.0.1), 16 B payloads
echoed back:

* **moonpool**: one ``ServerTransport`` (``serve()``, a handler returning
  ``request.payload``) and 1,000 ``ClientTransport`` objects on one
  ``RealNetwork`` -- each keeps one connection -- with 4 tasks per client
  calling ``get_reply`` in a loop (through anyio's asyncio backend);
* **baseline** (the target, >= 0.8): the raw asyncio server of ``real_tcp`` (64
  KiB reads, one write of all reply frames per read) and, per connection, the
  fair hand-written multiplexer: one reader task dispatching replies to per-call
  futures and 4 caller tasks each writing its own frame (``write`` + ``drain``):
  the programming model of moonpool's 4 ``get_reply`` callers;
* for information, 1,000 ``asyncio.open_connection`` streams each driven by one
  task that keeps 4 frames outstanding: it reads, parses the replies and writes
  as many new frames (in one write) as replies came back.  It was the judged
  baseline until 2026-12-03; like ``real_tcp``'s single-task pipeline, it
  measures one task against five per connection -- a programming model, not the
  transport -- so it is information now, as issue 20 re-based the pipelined
  figure.

Connections are opened (and each carries one request) before anything is timed.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc

from benchmarks._core import Figure, Outcome, Settings, compare_many_async, rate
from benchmarks._frames import (
    HEADER,
    RECEIVE_SIZE,
    FrameBuffer,
    asyncio_echo_handler,
    frames,
    payload,
)
from moonpool.net import RealNetwork
from moonpool.transport import ClientTransport, ReceivedEnvelope, ServerTransport

NAME: Final = "many_connections"
DESCRIPTION: Final = (
    "1,000 connections x 4 in flight on loopback TCP, asyncio: moonpool vs raw asyncio streams"
)

HOST: Final = "127.0.0.1"
CONNECTIONS: Final = 1000
QUICK_CONNECTIONS: Final = 200
IN_FLIGHT: Final = 4
PAYLOAD_SIZE: Final = 16
#: Requests per connection per moonpool sample at scale 1.0 (a multiple of IN_FLIGHT).
PER_CONNECTION: Final = 20
#: The raw one-task-per-connection side does this many times as many per sample
#: (it is much faster; rates are per request); the fair multiplexer does as many.
RAW_FACTOR: Final = 2
TARGET: Final = 0.8
#: Connections are opened this many at a time (the listen backlog stays short).
OPEN_BATCH: Final = 100
TIMEOUT: Final = 60.0


def _round(count: int) -> int:
    return max(IN_FLIGHT, count - count % IN_FLIGHT)


# -- raw asyncio --------------------------------------------------------------------


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = FrameBuffer()

    async def window(self, body: bytes, count: int) -> None:
        """``count`` requests, ``IN_FLIGHT`` outstanding, from one task."""
        reader, writer, buffer = self.reader, self.writer, self.frames
        sent = min(IN_FLIGHT, count)
        writer.write(frames(0, sent, body))
        await writer.drain()
        received = 0
        while received < count:
            got = buffer.take_in_order(await reader.read(RECEIVE_SIZE), received)
            received += got
            more = min(got, count - sent)
            if more:
                writer.write(frames(sent, more, body))
                sent += more
                await writer.drain()

    async def fair(self, body: bytes, count: int) -> None:
        """``count`` requests from ``IN_FLIGHT`` caller tasks, one reader task."""
        reader, writer, buffer = self.reader, self.writer, self.frames
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[bytes]] = {}
        ids = itertools.count()
        pack, size = HEADER.pack, len(body)

        async def read_replies() -> None:
            while True:
                data = await reader.read(RECEIVE_SIZE)
                if not data:
                    raise ConnectionError("server closed the connection")
                for cid, reply in buffer.feed(data):
                    waiting.pop(cid).set_result(reply)

        async def caller(calls: int) -> None:
            for _ in range(calls):
                cid = next(ids)
                future: asyncio.Future[bytes] = loop.create_future()
                waiting[cid] = future
                writer.write(pack(cid, size) + body)
                await writer.drain()
                if len(await future) != size:
                    raise AssertionError("wrong reply")

        background = loop.create_task(read_replies())
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(IN_FLIGHT):
                    group.create_task(caller(count // IN_FLIGHT))
        finally:
            background.cancel()
            await asyncio.gather(background, return_exceptions=True)


@asynccontextmanager
async def raw_connections(count: int) -> AsyncIterator[list[RawConnection]]:
    server = await asyncio.start_server(asyncio_echo_handler, HOST, 0, backlog=OPEN_BATCH * 2)
    port = server.sockets[0].getsockname()[1]
    connections: list[RawConnection] = []
    try:
        while len(connections) < count:
            batch = min(OPEN_BATCH, count - len(connections))
            opened = await asyncio.gather(
                *(asyncio.open_connection(HOST, port) for _ in range(batch))
            )
            connections += [RawConnection(reader, writer) for reader, writer in opened]
        # One round trip on each, as moonpool's clients do before timing.
        await asyncio.gather(*(c.window(payload(PAYLOAD_SIZE), 1) for c in connections))
        yield connections
    finally:
        for connection in connections:
            connection.writer.close()
        await asyncio.gather(*(c.writer.wait_closed() for c in connections), return_exceptions=True)
        server.close()
        await server.wait_closed()


def _raw_sample(
    connections: list[RawConnection], how: str, per_connection: int
) -> Callable[[], Awaitable[float]]:
    body = payload(PAYLOAD_SIZE)

    async def sample() -> float:
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for connection in connections:
                method = connection.window if how == "window" else connection.fair
                group.create_task(method(body, per_connection))
        return rate(per_connection * len(connections), started)

    return sample


# -- moonpool ------------------------------------------------------------------------


async def _echo(request: ReceivedEnvelope[Any]) -> bytes:
    return request.payload


async def _hold_client(
    network: RealNetwork,
    clients: list[ClientTransport],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Open one client and keep it open until cancelled (see ``moonpool_clients``)."""
    async with ClientTransport(network, timeout=TIMEOUT) as client:
        clients.append(client)
        task_status.started()
        await anyio.sleep_forever()


@asynccontextmanager
async def moonpool_clients(
    count: int,
) -> AsyncIterator[tuple[list[ClientTransport], str]]:
    """A server and ``count`` clients, each opened in a task of its own.

    Not with an ``AsyncExitStack`` in one task: there, each client's task group
    would be entered inside the previous one's, and on asyncio anyio walks a
    cancel scope's parents on every checkpoint and at every scope's exit -- the
    callers' scopes would sit 1,000 deep, and that walk alone took about a
    tenth of the run (measured), a cost of how the benchmark held its clients,
    not of the transport.
    """
    network = RealNetwork()
    async with (
        ServerTransport.bind(network, f"{HOST}:0", max_connections=count + 24) as server,
        anyio.create_task_group() as group,
    ):
        group.start_soon(server.serve, _echo)
        address = server.address
        clients: list[ClientTransport] = []
        for _ in range(count):
            await group.start(_hold_client, network, clients)
        for first in range(0, count, OPEN_BATCH):
            async with anyio.create_task_group() as opening:
                for client in clients[first : first + OPEN_BATCH]:
                    opening.start_soon(client.get_reply, address, b"connect")
        yield clients, address
        group.cancel_scope.cancel()


def _moonpool_sample(
    clients: list[ClientTransport], address: str, per_connection: int
) -> Callable[[], Awaitable[float]]:
    body = payload(PAYLOAD_SIZE)
    calls = per_connection // IN_FLIGHT

    async def caller(client: ClientTransport) -> None:
        get_reply = client.get_reply
        for _ in range(calls):
            if len(await get_reply(address, body)) != PAYLOAD_SIZE:
                raise AssertionError("wrong reply")

    async def sample() -> float:
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for client in clients:
                for _ in range(IN_FLIGHT):
                    group.start_soon(caller, client)
        return rate(calls * IN_FLIGHT * len(clients), started)

    return sample


# -- the benchmark -------------------------------------------------------------------


def _enough_files(connections: int) -> str:
    """Both sides' sockets (client and server ends) are open at once: raise the soft
    limit on open files to the hard one if it is lower than that needs."""
    needed = 4 * connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return f"open files: soft limit {soft} (enough)"
    new = needed if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return f"open files: soft limit raised from {soft} to {new}"


def connection_count(settings: Settings) -> int:
    """1,000; --quick (a smoke test) opens 200, and the figure's name says so."""
    return CONNECTIONS if not settings.quick else QUICK_CONNECTIONS


async def _main(settings: Settings) -> tuple[list[Figure], dict[str, Any]]:
    connections = connection_count(settings)
    per_connection = _round(settings.count(PER_CONNECTION, minimum=IN_FLIGHT))
    raw_per_connection = per_connection * RAW_FACTOR
    opened = time.perf_counter()
    async with (
        raw_connections(connections) as raw,
        moonpool_clients(connections) as (clients, address),
    ):
        set_up = time.perf_counter() - opened
        cand, (window, fair) = await compare_many_async(
            _moonpool_sample(clients, address, per_connection),
            [
                _raw_sample(raw, "window", raw_per_connection),
                _raw_sample(raw, "fair", per_connection),
            ],
            settings,
        )
    details: dict[str, Any] = {
        "connections": connections,
        "in_flight_per_connection": IN_FLIGHT,
        "payload_bytes": PAYLOAD_SIZE,
        "requests_per_sample": per_connection * connections,
        "baseline_requests_per_sample": raw_per_connection * connections,
        "set_up_s": set_up,
    }
    label = f"asyncio: {connections:,} connections x {IN_FLIGHT} in flight, {PAYLOAD_SIZE} B"
    figures = [
        Figure(
            label,
            "req/s",
            cand,
            fair,
            f"raw asyncio streams, per connection 1 reader task + {IN_FLIGHT} caller tasks",
            target=TARGET,
            details={
                **details,
                "baseline": "fair",
                "baseline_requests_per_sample": per_connection * connections,
            },
        ),
        Figure(
            f"{label} vs one task per connection (info)",
            "req/s",
            cand,
            window,
            f"raw asyncio streams, one task per connection keeping {IN_FLIGHT} frames out",
            details={**details, "baseline": "window"},
        ),
    ]
    return figures, details


def run(settings: Settings) -> Outcome:
    files = _enough_files(CONNECTIONS)
    figures, details = anyio.run(_main, settings, backend="asyncio")
    return Outcome(
        figures=figures,
        notes=[
            f"one process, one asyncio event loop: a server and {details['connections']:,} client "
            f"connections on 127.0.0.1, {IN_FLIGHT} requests of {PAYLOAD_SIZE} B in flight on "
            "each; the connections (opened "
            f"{OPEN_BATCH} at a time, {details['set_up_s']:.1f}s for both sides) carry one "
            "request each before anything is timed",
            "moonpool: ServerTransport.serve() echo, one ClientTransport per connection with "
            f"{IN_FLIGHT} tasks calling get_reply (anyio's asyncio backend)",
            "baseline (judged): raw asyncio.start_server echo server (64 KiB reads, one write "
            f"per read) and per connection a reader task and {IN_FLIGHT} caller tasks writing "
            "their own frames and awaiting their own futures; info: one task per connection "
            f"keeping {IN_FLIGHT} frames outstanding (a write of as many new frames as replies "
            "each read brought)",
            f"per sample: moonpool and the fair multiplexer {details['requests_per_sample']:,} "
            f"requests, the raw one-task-per-connection side "
            f"{details['baseline_requests_per_sample']:,}",
            "each moonpool client is opened in a task of its own (one task holding 1,000 "
            "open clients would nest their cancel scopes 1,000 deep, which anyio's asyncio "
            "backend walks at every checkpoint)",
            files,
        ],
    )

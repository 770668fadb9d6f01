"""Throughput of ``SimNetwork`` streams vs ``trio.testing.memory_stream_pair``.

Both run inside one ``trio.run`` on ``MockClock(autojump_threshold=0)``, with
``ChaosConfig.none()`` for the simulated network (no latency, no faults: what is
left is the cost of the stream machinery itself).  Three exchanges:

* echo: the client sends a 1 KiB message and waits for it to come back;
* one-way: the client sends 1 KiB messages back to back, a reader drains them;
* bulk: 16 MiB in 64 KiB writes, a reader drains them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import trio
import trio.testing

from benchmarks._core import Figure, Outcome, Settings, compare_async, rate
from moonpool.net import ChaosConfig, SimNetwork

NAME: Final = "sim_network"
DESCRIPTION: Final = "SimNetwork streams vs trio.testing.memory_stream_pair (MockClock autojump)"

MESSAGE_SIZE: Final = 1024
BULK_CHUNK: Final = 64 * 1024
RECEIVE_SIZE: Final = 64 * 1024

Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[int], Awaitable[bytes]]


class _Ends:
    """The two ends of one connection as plain send/receive callables."""

    def __init__(self, send_a: Send, receive_a: Receive, send_b: Send, receive_b: Receive) -> None:
        self.send_a, self.receive_a = send_a, receive_a
        self.send_b, self.receive_b = send_b, receive_b


async def _sim_ends(network: SimNetwork, port: int) -> _Ends:
    server = network.for_host("server")
    listener = await server.listen(f"server:{port}")
    client_stream = await network.connect(f"server:{port}")
    server_stream = await listener.accept()
    return _Ends(
        client_stream.send, client_stream.receive, server_stream.send, server_stream.receive
    )


def _memory_ends() -> _Ends:
    a, b = trio.testing.memory_stream_pair()
    return _Ends(a.send_all, a.receive_some, b.send_all, b.receive_some)


async def _echo_forever(ends: _Ends) -> None:
    receive, send = ends.receive_b, ends.send_b
    while True:
        data = await receive(RECEIVE_SIZE)
        if not data:
            return
        await send(data)


async def _drain(receive: Receive, total: int) -> None:
    got = 0
    while got < total:
        data = await receive(RECEIVE_SIZE)
        if not data:
            raise AssertionError(f"stream ended after {got} of {total} bytes")
        got += len(data)


def _echo_sample(ends: _Ends, count: int) -> Callable[[], Awaitable[float]]:
    message = bytes(MESSAGE_SIZE)

    async def sample() -> float:
        send, receive = ends.send_a, ends.receive_a
        started = time.perf_counter()
        for _ in range(count):
            await send(message)
            got = 0
            while got < MESSAGE_SIZE:
                got += len(await receive(RECEIVE_SIZE))
        return rate(count, started)

    return sample


def _stream_sample(ends: _Ends, chunk: int, count: int) -> Callable[[], Awaitable[float]]:
    data = bytes(chunk)

    async def sample() -> float:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, ends.receive_b, chunk * count)
            send = ends.send_a
            for _ in range(count):
                await send(data)
        return rate(count, started)

    return sample


async def _main(settings: Settings) -> list[Figure]:
    network = SimNetwork(seed=1, chaos=ChaosConfig.none(), host="client")
    echo_sim, echo_mem = await _sim_ends(network, 4500), _memory_ends()
    flow_sim, flow_mem = await _sim_ends(network, 4501), _memory_ends()
    messages = settings.count(5000, minimum=20)
    bulk_chunks = settings.count(16 * 1024 * 1024 // BULK_CHUNK, minimum=4)
    figures: list[Figure] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_echo_forever, echo_sim)
        nursery.start_soon(_echo_forever, echo_mem)
        cand, base = await compare_async(
            _echo_sample(echo_sim, messages), _echo_sample(echo_mem, messages), settings
        )
        detail = {"messages": messages, "message_bytes": MESSAGE_SIZE}
        figures.append(
            Figure(
                "echo 1 KiB: round trips/s",
                "msg/s",
                cand,
                base,
                "memory_stream_pair",
                details=detail,
            )
        )
        nursery.cancel_scope.cancel()

    cand, base = await compare_async(
        _stream_sample(flow_sim, MESSAGE_SIZE, messages),
        _stream_sample(flow_mem, MESSAGE_SIZE, messages),
        settings,
    )
    detail = {"messages": messages, "message_bytes": MESSAGE_SIZE}
    figures.append(
        Figure(
            "one-way 1 KiB messages: messages/s",
            "msg/s",
            cand,
            base,
            "memory_stream_pair",
            details=detail,
        )
    )
    figures.append(
        Figure(
            "one-way 1 KiB messages: bytes/s",
            "B/s",
            [value * MESSAGE_SIZE for value in cand],
            [value * MESSAGE_SIZE for value in base],
            "memory_stream_pair",
            details=detail,
        )
    )
    cand, base = await compare_async(
        _stream_sample(flow_sim, BULK_CHUNK, bulk_chunks),
        _stream_sample(flow_mem, BULK_CHUNK, bulk_chunks),
        settings,
    )
    total = bulk_chunks * BULK_CHUNK
    figures.append(
        Figure(
            f"bulk {_size(total)} in 64 KiB writes: bytes/s",
            "B/s",
            [value * BULK_CHUNK for value in cand],
            [value * BULK_CHUNK for value in base],
            "memory_stream_pair",
            details={"bytes": total, "write_size": BULK_CHUNK},
        )
    )
    return figures


def _size(total: int) -> str:
    return f"{total >> 20} MiB" if total >= 1 << 20 else f"{total >> 10} KiB"


def run(settings: Settings) -> Outcome:
    figures: list[Figure] = trio.run(
        _main, settings, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    return Outcome(
        figures=figures,
        notes=[
            "one trio.run on MockClock(autojump_threshold=0) hosts both sides of both "
            "networks; SimNetwork with ChaosConfig.none() (no latency, no faults)",
            f"reads ask for up to {RECEIVE_SIZE} bytes; SimNetwork's default 256 KiB "
            "per-direction buffer applies backpressure, memory_stream_pair has none",
        ],
    )

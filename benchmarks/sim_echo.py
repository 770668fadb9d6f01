"""A simulated request/reply echo: moonpool's simulation vs the same exchanges in raw trio.

moonpool's side is what a user writes: a ``SimulationBuilder`` with one server
**process** (``ServerTransport.bind(ctx.network, ctx.address)``, answering with
``async for request in server: await request.reply(request.payload)`` or with
``server.serve(handler)``) and one **workload** making ``REQUESTS`` sequential
``ClientTransport.get_reply`` calls of ``PAYLOAD_SIZE`` bytes, each checked, over
``FixedCount`` seeds from a fixed base seed (so every sample runs the same seeds:
the benchmark checks their trace hashes).

The baseline is the smallest raw trio program doing the same exchanges with the
same ``[u64 LE id][u32 LE len][payload]`` frames: a server task and a client over
``trio.testing.memory_stream_pair``, under ``trio.run(...,
clock=MockClock(autojump_threshold=0))`` once per seed -- a fresh run per seed, as
the simulation gives each seed.  It has no fault injection, no seeded
randomness, no supervision, no report: what the ratio prices is all of that,
plus the transport and the simulated network.

Three figures, seeds/s, interleaved round by round with one shared baseline:

* ``ChaosConfig.default()`` + buggify, ``async for`` server (target >= 0.5): the
  workload retries a call that fails (``TransportError``), so every seed does
  its 100 exchanges however the network behaves;
* ``ChaosConfig.none()``, buggify off, ``async for`` server (target >= 0.8);
* ``ChaosConfig.none()``, buggify off, ``serve()`` server (target >= 0.8).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import trio
import trio.testing

from benchmarks._core import BenchmarkError, Figure, Outcome, Settings, interleave_sync, median
from benchmarks._frames import HEADER, RECEIVE_SIZE, FrameBuffer, payload
from moonpool.sim import (
    ChaosConfig,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    SimulationReport,
    WorkloadContext,
)
from moonpool.transport import (
    ClientTransport,
    ConnectionFailed,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    SendQueueFull,
    ServerTransport,
    TransportClosed,
    TransportError,
)

NAME: Final = "sim_echo"
DESCRIPTION: Final = (
    "simulated echo, 100 get_reply per seed (SimulationBuilder) vs raw trio "
    "memory-stream ping-pong on MockClock"
)

REQUESTS: Final = 100
PAYLOAD_SIZE: Final = 16
BASE_SEED: Final = 20240611
#: moonpool seeds per sample at scale 1.0 (about a second with chaos on) ...
SEEDS: Final = 12
#: ... and the raw baseline runs this many times as many (it is much faster).
RAW_FACTOR: Final = 4
CHAOS_TARGET: Final = 0.5
CALM_TARGET: Final = 0.8
#: Simulated seconds between retries of a failed call (chaos only).
RETRY_PAUSE: Final = 0.01

Server = Callable[[ProcessContext], Coroutine[Any, Any, None]]


# -- moonpool: one server process, one workload ----------------------------------------


async def _close_on_shutdown(ctx: ProcessContext, server: ServerTransport[Any]) -> None:
    await ctx.shutdown.wait()
    await server.aclose()


async def async_for_server(ctx: ProcessContext) -> None:
    """``async for request in server: await request.reply(request.payload)``."""
    async with ServerTransport.bind(ctx.network, ctx.address) as server:
        async with anyio.create_task_group() as group:
            group.start_soon(_close_on_shutdown, ctx, server)
            async for request in server:
                # Chaos may have closed the request's connection (its client
                # retries), and shutdown closes the server.
                with suppress(ConnectionFailed, SendQueueFull, TransportClosed):
                    await request.reply(request.payload)


async def _echo(request: ReceivedEnvelope[RequestResponseEnvelope]) -> bytes:
    return request.payload


async def serve_server(ctx: ProcessContext) -> None:
    """``await server.serve(handler)``, the handler returning ``request.payload``."""
    async with ServerTransport.bind(ctx.network, ctx.address) as server:
        async with anyio.create_task_group() as group:
            group.start_soon(_close_on_shutdown, ctx, server)
            await server.serve(_echo)


SERVERS: Final[dict[str, Server]] = {"async for": async_for_server, "serve()": serve_server}


@dataclass(slots=True)
class Tally:
    """What the workloads did, over every seed of one ``run()``."""

    answered: int = 0
    retries: int = 0
    seeds: int = 0

    def workload(self, requests: int) -> Callable[[WorkloadContext], Coroutine[Any, Any, None]]:
        body = payload(PAYLOAD_SIZE)

        async def client(ctx: WorkloadContext) -> None:
            server = ctx.peers["server"]
            async with ClientTransport(ctx.network) as transport:
                for _ in range(requests):
                    while True:
                        try:
                            reply = await transport.get_reply(server, body)
                        except TransportError:
                            self.retries += 1
                            await anyio.sleep(RETRY_PAUSE)
                            continue
                        break
                    if reply != body:
                        raise AssertionError(f"echo returned {reply!r} for {body!r}")
                    self.answered += 1
            self.seeds += 1

        return client


def simulation(
    requests: int, seeds: int, *, chaos: bool, server: str, tally: Tally
) -> SimulationBuilder:
    """The moonpool side: one server process, one workload, ``seeds`` fixed seeds."""
    return (
        SimulationBuilder()
        .set_database(None)
        .set_iteration_control(FixedCount(seeds))
        .set_base_seed(BASE_SEED)
        .set_chaos(ChaosConfig.default() if chaos else ChaosConfig.none())
        .enable_buggify(chaos)
        .register_process("server", SERVERS[server])
        .register_workload("client", tally.workload(requests))
    )


# -- the raw baseline: trio memory streams on MockClock --------------------------------


async def _raw_server(stream: trio.abc.Stream) -> None:
    buffer = FrameBuffer()
    while data := await stream.receive_some(RECEIVE_SIZE):
        replies = buffer.echo(data)
        if replies:
            await stream.send_all(replies)


async def _raw_client(stream: trio.abc.Stream, requests: int, body: bytes) -> None:
    buffer, pack, size = FrameBuffer(), HEADER.pack, len(body)
    for cid in range(requests):
        await stream.send_all(pack(cid, size) + body)
        got = 0
        while not got:
            got = buffer.take_in_order(await stream.receive_some(RECEIVE_SIZE), cid)
    await stream.aclose()  # the server sees the end of the stream and returns


def raw_seed(requests: int) -> None:
    """One seed of the baseline: a fresh ``trio.run`` on an autojump ``MockClock``."""
    body = payload(PAYLOAD_SIZE)

    async def main() -> None:
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_raw_server, server)
            await _raw_client(client, requests, body)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- measuring ---------------------------------------------------------------------------


@dataclass(slots=True)
class Side:
    """One moonpool configuration: its samples' reports and tallies."""

    label: str
    chaos: bool
    server: str
    target: float
    reports: list[SimulationReport] = field(default_factory=list)
    tallies: list[Tally] = field(default_factory=list)

    def sampler(self, requests: int, seeds: int) -> Callable[[], float]:
        def sample() -> float:
            tally = Tally()
            builder = simulation(requests, seeds, chaos=self.chaos, server=self.server, tally=tally)
            started = time.perf_counter()
            report = builder.run()
            wall = time.perf_counter() - started
            check(report, tally, seeds, requests, self.label)
            self.reports.append(report)
            self.tallies.append(tally)
            return seeds / wall

        return sample

    def same_seeds(self) -> None:
        hashes = {tuple((r.seed, r.trace_hash) for r in report.runs) for report in self.reports}
        if len(hashes) != 1:
            raise BenchmarkError(f"{self.label}: the samples ran different seeds or traces")


def check(report: SimulationReport, tally: Tally, seeds: int, requests: int, what: str) -> None:
    """Every seed passed and made all its calls, or the figure means nothing."""
    if not report.ok or len(report.runs) != seeds:
        raise BenchmarkError(f"{what}: the simulation failed:\n{report}")
    if tally.seeds != seeds or tally.answered != seeds * requests:
        raise BenchmarkError(
            f"{what}: {tally.answered} replies in {tally.seeds} seeds, expected "
            f"{seeds * requests} in {seeds}"
        )


def raw_sampler(requests: int, seeds: int) -> Callable[[], float]:
    def sample() -> float:
        started = time.perf_counter()
        for _ in range(seeds):
            raw_seed(requests)
        return seeds / (time.perf_counter() - started)

    return sample


def _details(side: Side, seeds: int, raw_seeds: int) -> dict[str, Any]:
    report = side.reports[-1]
    return {
        "requests_per_seed": REQUESTS,
        "payload_bytes": PAYLOAD_SIZE,
        "seeds": seeds,
        "base_seed": BASE_SEED,
        "baseline_seeds_per_sample": raw_seeds,
        "chaos": "ChaosConfig.default()" if side.chaos else "ChaosConfig.none()",
        "buggify": side.chaos,
        "server": side.server,
        "retried_calls": median([float(t.retries) for t in side.tallies]),
        "task_steps_per_seed": report.total_events / seeds,
        "sim_seconds_per_seed": report.total_sim_time / seeds,
        "fault_totals": dict(report.fault_totals),
    }


def run(settings: Settings) -> Outcome:
    seeds = settings.count(SEEDS, minimum=2)
    raw_seeds = seeds * RAW_FACTOR
    sides = [
        Side("default chaos + buggify, async for", True, "async for", CHAOS_TARGET),
        Side("no chaos, async for", False, "async for", CALM_TARGET),
        Side("no chaos, serve()", False, "serve()", CALM_TARGET),
    ]
    base, *candidates = interleave_sync(
        [raw_sampler(REQUESTS, raw_seeds), *(side.sampler(REQUESTS, seeds) for side in sides)],
        settings,
    )
    figures: list[Figure] = []
    notes = [
        f"moonpool: SimulationBuilder, one server process (ServerTransport) and one workload "
        f"making {REQUESTS} sequential get_reply calls of {PAYLOAD_SIZE} B per seed, "
        f"FixedCount({seeds}) from base seed {BASE_SEED} (the same seeds in every sample: "
        "checked by trace hash); under chaos a failed call is retried until answered",
        f"baseline: a raw trio program, the same {REQUESTS} request/reply exchanges with the "
        "same [u64][u32][payload] frames over trio.testing.memory_stream_pair, "
        "trio.run(..., clock=MockClock(autojump_threshold=0)) once per seed, "
        f"{raw_seeds} seeds per sample",
        "rounds interleave the baseline and the three moonpool configurations (the order "
        "reversing each round); each ratio pairs a moonpool sample with the baseline sample "
        "of its round",
    ]
    for side, samples in zip(sides, candidates, strict=True):
        side.same_seeds()
        details = _details(side, seeds, raw_seeds)
        figures.append(
            Figure(
                f"echo {REQUESTS} req/seed, {side.label}: seeds/s",
                "seeds/s",
                samples,
                base,
                "raw trio memory-stream ping-pong, MockClock",
                target=side.target,
                details=details,
            )
        )
        notes.append(
            f"{side.label}: {details['task_steps_per_seed']:.0f} task steps and "
            f"{details['sim_seconds_per_seed']:.1f} simulated s per seed, "
            f"{details['retried_calls']:.0f} calls retried per sample; faults "
            f"{details['fault_totals'] or 'none'}"
        )
    return Outcome(figures=figures, notes=notes)

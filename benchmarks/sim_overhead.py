"""What the simulation runtime costs on top of a bare ``trio.run`` on a mock clock.

Two workloads -- a server and a client -- exchange ``exchanges`` integers over a
pair of unbuffered trio memory channels (request, then response): no network,
every message a handful of task steps.  moonpool runs them as a simulation
(``SimulationBuilder``, ``ChaosConfig.none()``, buggify off, ``FixedCount``); the
baseline runs the same two coroutines under
``trio.run(..., clock=MockClock(autojump_threshold=0))`` once per iteration.

Two shapes isolate the two kinds of overhead: *short* iterations (a few
exchanges each) are dominated by what moonpool does per seed (fresh RNG
streams, network object, supervisor), *long* ones by what it does per task step
(the supervising instrument and its trace hash).
"""

from __future__ import annotations

import time
from typing import Final

import trio
import trio.testing

from benchmarks._core import Figure, Outcome, Settings, compare_sync, rate
from moonpool.sim import ChaosConfig, FixedCount, SimulationBuilder, WorkloadContext

NAME: Final = "sim_overhead"
DESCRIPTION: Final = "SimulationBuilder run vs bare trio.run + MockClock (two workloads, channels)"

_Channels = tuple[
    trio.MemorySendChannel[int],
    trio.MemoryReceiveChannel[int],
    trio.MemorySendChannel[int],
    trio.MemoryReceiveChannel[int],
]


def _open_channels() -> _Channels:
    request_send, request_receive = trio.open_memory_channel[int](0)
    response_send, response_receive = trio.open_memory_channel[int](0)
    return request_send, request_receive, response_send, response_receive


async def serve(channels: _Channels) -> None:
    _, requests, responses, _ = channels
    async with responses:
        async for value in requests:
            await responses.send(value + 1)


async def call(channels: _Channels, exchanges: int) -> None:
    requests, _, _, responses = channels
    async with requests:
        for value in range(exchanges):
            await requests.send(value)
            if await responses.receive() != value + 1:
                raise AssertionError("wrong response")


class _StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


def bare_iteration(exchanges: int, instruments: tuple[trio.abc.Instrument, ...] = ()) -> None:
    async def main() -> None:
        channels = _open_channels()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, channels)
            nursery.start_soon(call, channels, exchanges)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0), instruments=instruments)


def simulation(exchanges: int, iterations: int, seed: int) -> SimulationBuilder:
    # The two workloads meet through channels created by whichever starts first,
    # keyed by the iteration's seed (each seed is a fresh trio.run).
    shared: dict[int, _Channels] = {}

    def channels_for(ctx: WorkloadContext) -> _Channels:
        channels = shared.get(ctx.seed)
        if channels is None:
            channels = shared[ctx.seed] = _open_channels()
        return channels

    async def server(ctx: WorkloadContext) -> None:
        await serve(channels_for(ctx))

    async def client(ctx: WorkloadContext) -> None:
        channels = channels_for(ctx)
        await call(channels, exchanges)
        # The server has fetched the channels by now (it answered); forget them so
        # a repeated seed starts afresh.
        del shared[ctx.seed]

    return (
        SimulationBuilder()
        .set_iteration_control(FixedCount(iterations))
        .set_base_seed(seed)
        .set_chaos(ChaosConfig.none())
        .enable_buggify(False)
        .register_workload("server", server)
        .register_workload("client", client)
    )


def _measure_shape(
    label: str, exchanges: int, iterations: int, settings: Settings
) -> tuple[list[Figure], str]:
    events: list[int] = []

    def moonpool() -> float:
        builder = simulation(exchanges, iterations, seed=20240601)
        started = time.perf_counter()
        report = builder.run()
        result = rate(iterations, started)
        if not report.ok or report.iterations != iterations:
            raise AssertionError(f"simulation failed:\n{report}")
        events.append(report.total_events)
        return result

    def bare() -> float:
        started = time.perf_counter()
        for _ in range(iterations):
            bare_iteration(exchanges)
        return rate(iterations, started)

    cand, base = compare_sync(moonpool, bare, settings)
    counter = _StepCounter()
    bare_iteration(exchanges, (counter,))
    bare_steps = counter.steps
    sim_steps = events[-1] / iterations
    detail = {
        "iterations": iterations,
        "exchanges_per_iteration": exchanges,
        "moonpool_steps_per_iteration": sim_steps,
        "bare_steps_per_iteration": bare_steps,
    }
    figures = [
        Figure(f"{label}: iterations/s", "iter/s", cand, base, "bare trio.run", details=detail),
        Figure(
            f"{label}: task steps/s",
            "steps/s",
            [value * sim_steps for value in cand],
            [value * bare_steps for value in base],
            "bare trio.run",
            details=detail,
        ),
    ]
    note = (
        f"{label}: {sim_steps:.0f} task steps per moonpool iteration (RunRecord.events) vs "
        f"{bare_steps} bare (counted once with an Instrument; timed runs are uninstrumented)"
    )
    return figures, note


def run(settings: Settings) -> Outcome:
    outcome = Outcome(
        notes=["ratio = moonpool / bare; the simulation run includes report building"]
    )
    shapes = [
        ("short iterations (10 exchanges)", 10, settings.count(400, minimum=5)),
        ("long iterations (2000 exchanges)", 2000, settings.count(12, minimum=2)),
    ]
    for label, exchanges, iterations in shapes:
        figures, note = _measure_shape(label, exchanges, iterations, settings)
        outcome.figures.extend(figures)
        outcome.notes.append(note)
    return outcome

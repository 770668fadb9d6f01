"""The supervisor moves the clock to simulated arrivals itself (moonpool._ground._wakeups).

A simulated read waiting for bytes in flight is woken by the run's instrument,
not by a trio timer.  These tests pin what that must keep true: the bytes arrive
exactly when the network said, even where floating point makes a jump land an
ulp short of its target (trio's autojump would then skip to the next *trio*
timer, and the reader would wake seconds late); and a run waiting only for bytes
in flight is busy, not deadlocked.
"""

from __future__ import annotations

import math

import trio

from moonpool._ground._wakeups import Wakeups
from moonpool.net import ChaosConfig, LatencyConfig
from moonpool.sim import FixedCount, SimulationBuilder, WorkloadContext

LATENCY = 0.001
# From the seed that hung the stream conformance test: with the clock at MIDDLE
# and the next arrival at ARRIVAL, adding ARRIVAL - MIDDLE to the clock lands
# one ulp short of ARRIVAL.
MIDDLE = 0.015560225314033772
ARRIVAL = 0.05725537087092352


def _exactly(start: float, target: float) -> float:
    """The duration that, added to ``start``, gives ``target`` exactly."""
    duration = target - start
    while start + duration < target:
        duration = math.nextafter(duration, math.inf)
    while start + duration > target:
        duration = math.nextafter(duration, -math.inf)
    assert start + duration == target
    return duration


def test_the_naive_jump_lands_short() -> None:
    """The premise of the next test."""
    assert MIDDLE + (ARRIVAL - MIDDLE) < ARRIVAL


def _fixed_latency(seconds: float) -> ChaosConfig:
    return ChaosConfig(latency=LatencyConfig(distribution="fixed", low=seconds, high=seconds))


def test_bytes_arrive_on_time_when_the_clock_jump_lands_an_ulp_short() -> None:
    seen: dict[str, float] = {}

    async def workload(ctx: WorkloadContext) -> None:
        async with await ctx.network.listen(ctx.address) as listener:
            client = await ctx.network.connect(ctx.address)
            server = await listener.accept()
            start = trio.current_time()
            assert start + (MIDDLE - start) == MIDDLE < ARRIVAL
            # A partition holds the bytes until exactly ARRIVAL.
            ctx.network.partition(ctx.network.host, ctx.network.host, _exactly(start, ARRIVAL))
            async with trio.open_nursery() as nursery:
                # A trio timer far away: an autojump past the arrival goes there.
                nursery.start_soon(trio.sleep, 10.0)
                # A timer between the write and the arrival: the clock is there
                # when it next has to move, to the arrival.
                nursery.start_soon(trio.sleep_until, MIDDLE)
                await client.send(b"x")  # due when the partition heals
                assert await server.receive() == b"x"
                seen["received"] = trio.current_time()
                nursery.cancel_scope.cancel()
            await client.aclose()
            await server.aclose()

    report = (
        SimulationBuilder()
        .set_database(None)
        .set_iteration_control(FixedCount(1))
        .set_chaos(_fixed_latency(LATENCY))
        .register_workload("client", workload)
        .run()
    )
    report.assert_success()
    assert seen["received"] == ARRIVAL  # when the network said, not seconds later


def test_a_run_waiting_only_for_bytes_in_flight_is_not_a_deadlock() -> None:
    """A long latency and no trio timer at all: the supervisor must wait it out."""
    got: list[bytes] = []

    async def workload(ctx: WorkloadContext) -> None:
        async with await ctx.network.listen(ctx.address) as listener:
            client = await ctx.network.connect(ctx.address)
            server = await listener.accept()
            await client.send(b"late")
            # No timeout on purpose: a trio timer would hide the case.  Were the
            # run taken for deadlocked, the supervisor would fail the seed.
            got.append(await server.receive())
            await client.aclose()
            await server.aclose()

    report = (
        SimulationBuilder()
        .set_database(None)
        .set_iteration_control(FixedCount(1))
        .set_chaos(_fixed_latency(5.0))
        .register_workload("client", workload)
        .run()
    )
    report.assert_success()
    assert got == [b"late"]


class _Reader:
    """A WakeupTarget that records its wakes; it wants the times in ``wanted``."""

    def __init__(self, name: str, log: list[tuple[str, float]], *wanted: float) -> None:
        self.name, self.log, self.wanted = name, log, set(wanted)

    def wants(self, time: float) -> bool:
        return time in self.wanted

    def wake(self, time: float) -> None:
        self.wanted.discard(time)
        self.log.append((self.name, time))


def test_wakeups_fire_in_time_order_and_skip_what_is_no_longer_wanted() -> None:
    log: list[tuple[str, float]] = []
    wakeups = Wakeups()
    a, b = _Reader("a", log, 2.0), _Reader("b", log, 1.0, 3.0)
    stale = _Reader("stale", log)  # woke for another reason meanwhile
    wakeups.at(2.0, a)
    wakeups.at(1.0, stale)
    wakeups.at(1.0, b)
    wakeups.at(3.0, b)
    assert wakeups.next_time() == 1.0  # b's; the stale entry at 1.0 is not a timer
    wakeups.fire_due(2.0)
    assert log == [("b", 1.0), ("a", 2.0)]
    assert wakeups.next_time() == 3.0
    b.wanted.clear()  # b stopped waiting: nothing is pending any more
    assert wakeups.next_time() == math.inf
    assert len(wakeups) == 0

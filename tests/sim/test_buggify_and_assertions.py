"""buggify sites and the assertion table, inside and outside simulations."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

import moonpool.sim
from moonpool.sim import (
    Attrition,
    ChaosConfig,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    SimulationFailed,
    SimulationReport,
    UntilAllSometimesReached,
    WorkloadContext,
    always,
    buggify,
    buggify_with_prob,
    reachable,
    sometimes,
    unreachable,
)
from moonpool.sim import random as sim_random


def test_everything_is_a_noop_outside_a_simulation() -> None:
    assert buggify() is False
    assert buggify_with_prob(1.0) is False
    always(False, "outside")  # must not raise
    unreachable("outside")
    sometimes(False, "outside")
    reachable("outside")
    with pytest.raises(RuntimeError, match="outside a simulation"):
        sim_random()


def test_buggify_probability_is_validated() -> None:
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        buggify_with_prob(1.5)


fired: dict[int, list[bool]] = {}


async def two_sites(ctx: WorkloadContext) -> None:
    results = []
    for _ in range(50):
        results.append(buggify_with_prob(1.0))  # site A: fires every call once active
    results.append(buggify_with_prob(1.0))  # site B
    fired[ctx.seed] = results
    await trio.lowlevel.checkpoint()


def _fired_for(seeds: list[int], enabled: bool = True) -> dict[int, list[bool]]:
    fired.clear()
    builder = SimulationBuilder().set_chaos(ChaosConfig.none()).register_workload("w", two_sites)
    builder.enable_buggify(enabled).set_seeds(seeds).run().assert_success()
    return dict(fired)


def test_buggify_site_activation_is_per_seed_and_all_or_nothing() -> None:
    results = _fired_for(list(range(40)))
    for seed, calls in results.items():
        site_a = calls[:50]
        assert len(set(site_a)) == 1, f"seed {seed}: an active site with p=1 fires every time"
    active = sum(calls[0] for calls in results.values())
    # Activation probability is 0.25: over 40 seeds, some but not all seeds activate.
    assert 2 <= active <= 25
    # Replaying gives the same activations.
    assert _fired_for(list(range(40))) == results


def test_buggify_is_off_unless_enabled() -> None:
    results = _fired_for(list(range(20)), enabled=False)
    assert not any(any(calls) for calls in results.values())


def test_buggify_fires_are_counted_in_the_report() -> None:
    report = (
        SimulationBuilder()
        .set_chaos(ChaosConfig.none())
        .register_workload("w", two_sites)
        .enable_buggify()
        .set_seeds(list(range(20)))
        .run()
    )
    expected = sum(sum(calls) for calls in fired.values())
    assert expected > 0
    assert report.fault_totals.get("buggify") == expected


async def coin(ctx: WorkloadContext) -> None:
    await trio.sleep(1)
    sometimes(ctx.random.random() < 0.2, "the coin lands heads")
    reachable("the coin was thrown")


def test_until_all_sometimes_reached_stops_when_satisfied() -> None:
    report = (
        SimulationBuilder()
        .register_workload("coin", coin)
        .set_base_seed(9)
        .set_iteration_control(UntilAllSometimesReached(1000))
        .run()
    )
    report.assert_success()
    assert 1 <= report.iterations < 100
    heads = next(a for a in report.assertions if a.message == "the coin lands heads")
    assert heads.true_count == 1  # it stopped at the first iteration that satisfied it


def test_unsatisfied_sometimes_is_a_miss_and_fails() -> None:
    async def never(ctx: WorkloadContext) -> None:
        await trio.lowlevel.checkpoint()
        sometimes(False, "never true")

    report = (
        SimulationBuilder()
        .register_workload("w", never)
        .set_iteration_control(UntilAllSometimesReached(7))
        .run()
    )
    assert report.iterations == 7
    assert not report.failures
    [summary] = report.assertions
    assert summary.status == "MISS"
    assert summary.hits == 7
    assert not report.ok
    with pytest.raises(AssertionError, match=r"never satisfied in 7 iterations \(MISS\)"):
        report.assert_success()


def test_report_text_and_json() -> None:
    import json

    report = (
        SimulationBuilder()
        .register_workload("coin", coin)
        .set_iteration_control(FixedCount(5))
        .set_base_seed(1)
        .run()
    )
    text = str(report)
    assert "iterations: 5" in text
    assert "the coin was thrown" in text
    assert "connect_failure=0.05" in text  # the run's chaos configuration is printed
    document = json.loads(report.to_json())
    assert document["iterations"] == 5
    assert len(document["runs"]) == 5
    assert {"seed", "ok", "sim_time", "wall_time", "events", "trace_hash"} <= set(
        document["runs"][0]
    )
    assert document["chaos"]["connect_failure"] == ChaosConfig.default().connect_failure
    statuses = {a["message"]: a["status"] for a in document["assertions"]}
    assert statuses["the coin was thrown"] == "PASS"


def test_replayed_seeds_do_not_require_coverage() -> None:
    async def never(ctx: WorkloadContext) -> None:
        await trio.lowlevel.checkpoint()
        sometimes(False, "never true")

    replay = SimulationBuilder().register_workload("w", never).set_seeds([1, 2]).run()
    assert replay.ok
    replay.assert_success()
    assert "MISS" in str(replay)


# -- coverage sites no seed reaches (found by reading the registered code) ----------


async def rarely(ctx: WorkloadContext) -> None:
    await trio.sleep(0.1)
    if ctx.seed < 0:  # never true: seeds are non-negative
        reachable("a branch no seed takes")
    sometimes(ctx.seed >= 0, "every seed gets here")


class WithSites:
    async def run(self, ctx: WorkloadContext) -> None:
        await trio.sleep(0.1)

    async def check(self, ctx: WorkloadContext) -> None:
        if ctx.seed < 0:
            moonpool.sim.sometimes(True, "a check no seed runs")


def test_a_reachable_no_seed_reaches_is_a_miss_and_keeps_the_run_going() -> None:
    report = (
        SimulationBuilder()
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_iteration_control(UntilAllSometimesReached(7))
        .register_workload("rarely", rarely)
        .register_workload("sites", WithSites)
        .run()
    )
    # Before, the site never appeared: the run stopped after one seed, "all reached".
    assert report.iterations == 7
    missed = {(a.kind, a.message, a.hits) for a in report.missed_assertions}
    assert missed == {
        ("reachable", "a branch no seed takes", 0),
        ("sometimes", "a check no seed runs", 0),
    }
    assert "MISS reachable" in str(report)
    with pytest.raises(SimulationFailed, match="a branch no seed takes"):
        report.assert_success()


# -- values in assertions -------------------------------------------------------------


def _details_simulation(label: object) -> SimulationReport:
    async def workload(ctx: WorkloadContext) -> None:
        balance = 100
        for n in range(3):
            await trio.sleep(1)
            sometimes(n == 2, "the third round is reached", round=n)
            if n == 2:
                balance -= 10
        always(balance == 100, "the balance is intact", balance=balance, label=label)

    return (
        SimulationBuilder()
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .register_workload("bank", workload)
        .set_seeds([5])
        .run()
    )


def test_assertion_details_are_shown_in_the_failure_and_its_json() -> None:
    report = _details_simulation("lost update")
    [failure] = report.failures
    assert failure.kind == "assertion"
    assert "always('the balance is intact') was false with balance=90, label='lost update'" in (
        failure.error
    )
    assert failure.details == {"balance": "90", "label": "'lost update'"}
    assert '"details":{"balance":"90","label":"\'lost update\'"}' in report.to_json()
    # One site, whatever the values.
    [site] = [a for a in report.assertions if a.kind == "always"]
    assert site.message == "the balance is intact"


def test_assertion_details_do_not_change_the_trace() -> None:
    """A value's repr may differ run to run (an object's address): the trace must not."""
    first = _details_simulation(object())
    second = _details_simulation(object())
    assert first.failures[0].details["label"] != second.failures[0].details["label"]
    assert first.runs[0].trace_hash == second.runs[0].trace_hash


def test_huge_details_are_shortened() -> None:
    report = _details_simulation("x" * 10_000)
    assert len(report.failures[0].details["label"]) < 250


def test_the_report_says_why_the_run_stopped() -> None:
    async def workload(ctx: WorkloadContext) -> None:
        await trio.sleep(1)
        sometimes(ctx.seed % 4 == 0, "a seed divisible by four")

    def builder() -> SimulationBuilder:
        return (
            SimulationBuilder()
            .enable_buggify()
            .set_chaos(ChaosConfig.default())
            .register_workload("w", workload)
        )

    until = builder().set_iteration_control(UntilAllSometimesReached(500)).run()
    assert until.stopped_because == (
        f"all 1 sometimes/reachable sites reached after {until.iterations} seed(s)"
    )
    assert f"stopped:    {until.stopped_because}" in str(until)
    assert (
        builder()
        .set_iteration_control(FixedCount(3))
        .run()
        .stopped_because.startswith("ran 3 seed(s)")
    )
    assert builder().set_seeds([4, 8]).run().stopped_because == "ran the 2 seed(s) given"
    assert _details_simulation("x").stopped_because == "ran the 1 seed(s) given"


def test_a_failures_traceback_shows_the_users_frames_not_the_runtimes() -> None:
    """The phase runner and the assertion's own frames are hidden (as pytest hides its
    own); the user's line stays, and so does a chained cause."""

    async def broken_server(ctx: ProcessContext) -> None:
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("the server could not start") from exc

    async def checker(ctx: WorkloadContext) -> None:
        always(ctx.seed < 0, "seeds are negative", seed=ctx.seed)

    async def waiter(ctx: WorkloadContext) -> None:
        await trio.sleep(1)

    report = (
        SimulationBuilder()
        .set_database(None)
        .enable_buggify()
        .set_seeds([1])
        .register_workload("checker", checker)
        .run()
    )
    (failure,) = report.failures
    assert failure.kind == "assertion"
    assert "in checker" in failure.traceback
    assert 'always(ctx.seed < 0, "seeds are negative", seed=ctx.seed)' in failure.traceback
    for runtime in ("_iteration.py", "_assertions.py", "_processes.py"):
        assert f"moonpool/sim/{runtime}" not in failure.traceback, failure.traceback

    report = (
        SimulationBuilder()
        .set_database(None)
        .enable_buggify()
        .set_seeds([1])
        .set_attrition(Attrition(max_dead=1, interval=3.0, crash=1.0, reboot=1.0))
        .register_process("server", broken_server)
        .register_workload("waiter", waiter)
        .run()
    )
    failure = report.failures[0]
    assert failure.kind == "process_error", failure
    assert "in broken_server" in failure.traceback
    assert "KeyError: 'missing'" in failure.traceback  # the cause is kept
    assert "moonpool/sim/_processes.py" not in failure.traceback, failure.traceback

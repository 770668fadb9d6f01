"""Every way an iteration can fail is detected promptly and reported precisely."""

from __future__ import annotations

import contextlib
import time

import pytest
import trio

from moonpool.sim import (
    Attrition,
    ChaosConfig,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    SimulationFailed,
    WorkloadContext,
    always,
    unreachable,
)


def _run(
    *workloads: tuple[str, object],
    processes: tuple[tuple[str, object], ...] = (),
    **settings: float,
) -> SimulationBuilder:
    builder = SimulationBuilder().set_chaos(ChaosConfig.default()).enable_buggify()
    builder.set_iteration_control(FixedCount(3)).set_base_seed(11)
    if processes:
        builder.set_attrition(Attrition(max_dead=1, interval=0.5))
    for name, fn in processes:
        builder.register_process(name, fn)  # type: ignore[arg-type]
    for name, fn in workloads:
        builder.register_workload(name, fn)  # type: ignore[arg-type]
    if "grace" in settings:
        builder.set_shutdown_grace(settings["grace"])
    if "budget" in settings:
        builder.set_time_budget(settings["budget"])
    if "wall" in settings:
        builder.set_wall_time_budget(settings["wall"])
    return builder


async def returns_after_a_while(ctx: WorkloadContext) -> None:
    await trio.sleep(1 + ctx.random.random())


async def waits_for_shutdown(ctx: ProcessContext) -> None:
    await ctx.shutdown.wait()


def test_passing_simulation_reports_success() -> None:
    report = _run(
        ("client", returns_after_a_while), processes=(("server", waits_for_shutdown),)
    ).set_settle_time(1.0)
    result = report.run()
    result.assert_success()
    assert result.iterations == 3
    # run (1-2 s) + settle (1 s); the server returns at once when told to shut down.
    assert all(run.ok and 2 <= run.sim_time <= 3 for run in result.runs)


def test_workload_exception_fails_with_traceback() -> None:
    async def broken(ctx: WorkloadContext) -> None:
        await trio.sleep(0.5)
        raise KeyError("missing-key")

    report = _run(("client", broken), processes=(("server", waits_for_shutdown),)).run()
    assert len(report.failures) == 3
    failure = report.failures[0]
    assert failure.kind == "workload_error"
    assert failure.error == "workload 'client' (run) raised KeyError: 'missing-key'"
    assert "missing-key" in failure.traceback
    assert "in broken" in failure.traceback
    assert failure.sim_time == pytest.approx(0.5)
    with pytest.raises(SimulationFailed, match="3 of 3 seeds failed") as info:
        report.assert_success()
    # Under pytest, the plugin makes the replay hint the exact pytest command.
    test_id = "test_failures.py::test_workload_exception_fails_with_traceback"
    assert f"{test_id} --moonpool-seed {failure.seed}" in str(info.value)


def test_failed_always_fails_the_iteration() -> None:
    async def checker(ctx: WorkloadContext) -> None:
        for i in range(10):
            await trio.sleep(0.1)
            always(i < 5, "i stays below five")

    report = _run(("checker", checker)).run()
    assert [f.kind for f in report.failures] == ["assertion"] * 3
    assert "always('i stays below five') was false" in report.failures[0].error
    [summary] = report.assertions
    assert summary.status == "FAIL"
    assert summary.true_count == 15
    assert summary.false_count == 3


def test_reached_unreachable_fails_even_if_caught() -> None:
    async def swallows(ctx: WorkloadContext) -> None:
        # A workload hiding the violation must not hide the failure.
        with contextlib.suppress(AssertionError):
            unreachable("this branch never runs")

    report = _run(("w", swallows)).run()
    assert [f.kind for f in report.failures] == ["assertion"] * 3
    assert "unreachable('this branch never runs')" in report.failures[0].error


def test_deadlock_is_reported_within_a_second_with_where_tasks_wait() -> None:
    async def waits_forever(ctx: WorkloadContext) -> None:
        lock = trio.Event()
        await lock.wait()

    started = time.perf_counter()
    # Attrition is on: its future kills must not keep a deadlocked run alive.
    report = _run(("stuck", waits_forever), processes=(("server", waits_for_shutdown),)).run()
    assert time.perf_counter() - started < 1.0
    failure = report.failures[0]
    assert failure.kind == "deadlock"
    assert failure.sim_time == 0
    assert "no timer is pending" in failure.error
    assert "in the run phase" in failure.error
    assert "workload 'stuck' (run) waits at" in failure.traceback
    assert "in test_deadlock_is_reported_within_a_second_with_where_tasks_wait" in (
        failure.traceback
    )
    assert "process 'server' (incarnation 0) waits at" in failure.traceback
    assert "in waits_for_shutdown" in failure.traceback


def test_a_server_registered_as_a_workload_gets_a_hint() -> None:
    """The pre-0.2 pattern (the server as a workload waiting for shutdown) deadlocks
    now; the report says why and what to do."""
    report = _run(("client", returns_after_a_while), ("server", waits_for_shutdown)).run()
    failure = report.failures[0]
    assert failure.kind == "deadlock"
    assert "wait for ctx.shutdown, which is set only after every check" in failure.traceback
    assert "register_process" in failure.traceback


def test_process_ignoring_shutdown_is_named() -> None:
    async def ignores_shutdown(ctx: ProcessContext) -> None:
        while True:  # noqa: ASYNC110 - deliberately deaf to ctx.shutdown
            await trio.sleep(1)

    report = _run(
        ("client", returns_after_a_while), processes=(("stubborn", ignores_shutdown),), grace=5
    )
    # No attrition here: a reboot of a deaf process escalates to a crash, silently.
    report.set_attrition(None).set_settle_time(0)
    failure = report.run().failures[0]
    assert failure.kind == "shutdown_timeout"
    assert "stubborn#0 did not finish after the simulation told every process to stop" in (
        failure.error
    )
    assert "still running when the 5s grace period ended" in failure.error
    assert "process 'stubborn' (incarnation 0) waits at" in failure.traceback
    assert "in test_process_ignoring_shutdown_is_named.<locals>.ignores_shutdown" in (
        failure.traceback
    )
    # Detected at the end of the grace period, not at the time budget.
    assert failure.sim_time < 10


def test_sim_time_budget() -> None:
    async def slow(ctx: WorkloadContext) -> None:
        await trio.sleep(500)

    report = _run(("slow", slow), budget=100).run()
    assert [f.kind for f in report.failures] == ["sim_time_budget"] * 3
    assert "budget of 100" in report.failures[0].error
    assert all(run.sim_time <= 100 for run in report.runs)


def test_wall_time_budget_catches_a_spinning_workload() -> None:
    async def spins(ctx: WorkloadContext) -> None:
        while True:
            await trio.lowlevel.checkpoint()

    started = time.perf_counter()
    builder = _run(("spinner", spins), wall=0.3).set_iteration_control(FixedCount(1))
    report = builder.run()
    assert time.perf_counter() - started < 3
    assert report.failures[0].kind == "wall_time_budget"
    assert "spinning" in report.failures[0].error


def test_one_failure_cancels_the_other_workloads() -> None:
    async def fails_fast(ctx: WorkloadContext) -> None:
        raise RuntimeError("early")

    async def long_runner(ctx: WorkloadContext) -> None:
        await trio.sleep(1000)

    report = _run(("a", fails_fast), ("b", long_runner)).run()
    assert all(run.sim_time == 0 for run in report.runs)
    assert {f.kind for f in report.failures} == {"workload_error"}


def test_builder_rejects_misuse() -> None:
    builder = SimulationBuilder()
    with pytest.raises(ValueError, match="no workloads registered"):
        builder.run()
    with pytest.raises(ValueError, match=r"1 process\(es\) but no workload registered"):
        SimulationBuilder().register_process("server", waits_for_shutdown).run()
    builder.register_workload("client", returns_after_a_while, count=2)
    with pytest.raises(ValueError, match="'client-0' is already registered"):
        builder.register_workload("client", returns_after_a_while, count=2)
    with pytest.raises(ValueError, match="'client-1' is already registered"):
        builder.register_process("client-1", waits_for_shutdown)
    with pytest.raises(ValueError, match="must be letters, digits"):
        builder.register_workload("a:b", returns_after_a_while)
    with pytest.raises(ValueError, match="at least 1"):
        FixedCount(0)
    with pytest.raises(TypeError, match="ChaosConfig"):
        builder.set_chaos(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        builder.set_seeds([-1])

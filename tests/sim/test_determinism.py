"""Same seed, same run: in this process, in another process, under another hash seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from moonpool.sim import (
    ChaosConfig,
    FixedCount,
    NondeterminismWarning,
    SimulationBuilder,
    WorkloadContext,
)
from tests.examples import load_example

ROOT = Path(__file__).resolve().parents[2]
ECHO = ROOT / "examples" / "echo.py"
PING_PONG = ROOT / "examples" / "ping_pong.py"


async def racers(ctx: WorkloadContext) -> None:
    """Tasks that become runnable together: their order is the scheduler's choice."""
    order: list[int] = []

    async def racer(i: int) -> None:
        await trio.sleep(1)  # all wake at the same instant
        order.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(racer, i)
    ctx_order.append(tuple(order))


ctx_order: list[tuple[int, ...]] = []


def _racer_orders(seeds: list[int]) -> list[tuple[int, ...]]:
    ctx_order.clear()
    SimulationBuilder().register_workload("racers", racers).set_seeds(seeds).run().assert_success()
    return list(ctx_order)


def test_scheduler_order_is_a_function_of_the_seed() -> None:
    first = _racer_orders([1, 2, 3, 1])
    assert first[0] == first[3], "same seed must give the same interleaving"
    assert len(set(first[:3])) > 1, "different seeds should explore different interleavings"
    assert _racer_orders([1, 2, 3, 1]) == first


def _echo_builder() -> SimulationBuilder:
    builder: SimulationBuilder = load_example("echo").simulation()
    return builder


def test_same_seed_same_trace_in_process() -> None:
    seeds = [5, 6, 7]
    one = _echo_builder().set_seeds(seeds).run()
    two = _echo_builder().set_seeds(seeds).run()
    one.assert_success()
    assert [r.trace_hash for r in one.runs] == [r.trace_hash for r in two.runs]
    assert [r.faults for r in one.runs] == [r.faults for r in two.runs]
    assert [r.events for r in one.runs] == [r.events for r in two.runs]
    assert len({r.trace_hash for r in one.runs}) == 3, "different seeds, different traces"


def _run_in_subprocess(seed: int, hash_seed: str, target: Path | str = ECHO) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONPOOL_")}
    env["PYTHONHASHSEED"] = hash_seed
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "moonpool",
            "run",
            str(target),
            "--seed",
            str(seed),
            "--json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    document: dict[str, object] = json.loads(completed.stdout)
    return document


def test_same_seed_same_trace_across_processes_and_hash_seeds() -> None:
    seed = 424242
    a = _run_in_subprocess(seed, "0")
    b = _run_in_subprocess(seed, "12345")
    runs_a, runs_b = a["runs"], b["runs"]
    assert isinstance(runs_a, list)
    assert isinstance(runs_b, list)
    assert runs_a[0]["trace_hash"] == runs_b[0]["trace_hash"]
    assert runs_a[0]["faults"] == runs_b[0]["faults"]
    assert runs_a[0]["events"] == runs_b[0]["events"]
    assert runs_a[0]["sim_time"] == runs_b[0]["sim_time"]
    # And it matches this process too.
    here = _echo_builder().set_seeds([seed]).run()
    assert here.runs[0].trace_hash == runs_a[0]["trace_hash"]


def test_wall_clock_use_breaks_determinism_detectably() -> None:
    """The trace hash covers scheduling, so a workload keyed on wall time is caught."""
    import time

    async def uses_wall_clock(ctx: WorkloadContext) -> None:
        for _ in range(20):
            await trio.sleep(0.01 if int(time.perf_counter_ns() / 1000) % 2 else 0.02)

    hashes = set()
    for _ in range(6):
        with pytest.warns(NondeterminismWarning, match=r"time\.perf_counter_ns\(\) called at"):
            report = (
                SimulationBuilder()
                .set_chaos(ChaosConfig.none())
                .register_workload("w", uses_wall_clock)
                .set_seeds([1])
                .run()
            )
        hashes.add(report.runs[0].trace_hash)
        # The report names the call and what to use instead.
        assert report.nondeterministic and "use trio.current_time()" in report.nondeterministic[0]
    assert len(hashes) > 1


def test_fixed_count_seed_sequence_follows_base_seed() -> None:
    async def noop(ctx: WorkloadContext) -> None:
        await trio.lowlevel.checkpoint()

    def seeds(base: int) -> list[int]:
        builder = SimulationBuilder().register_workload("w", noop).set_base_seed(base)
        return [r.seed for r in builder.set_iteration_control(FixedCount(4)).run().runs]

    assert seeds(3) == seeds(3)
    assert seeds(3) != seeds(4)


def test_transport_simulation_is_deterministic_across_processes() -> None:
    """Ping-pong exercises peers, drivers, timers and retries: all replay exactly."""
    seed = 1407832018
    a = _run_in_subprocess(seed, "1", PING_PONG)
    b = _run_in_subprocess(seed, "999", PING_PONG)
    runs_a, runs_b = a["runs"], b["runs"]
    assert isinstance(runs_a, list) and isinstance(runs_b, list)
    assert runs_a[0]["events"] > 100
    assert runs_a[0]["trace_hash"] == runs_b[0]["trace_hash"]
    assert runs_a[0]["faults"] == runs_b[0]["faults"]
    # Attrition too: the same kills and restarts at the same simulated times...
    assert runs_a[0]["process_events"], "this seed kills the server"
    assert runs_a[0]["process_events"] == runs_b[0]["process_events"]
    # ...and the same run under pytest, in this process, as under the CLI.
    here = load_example("ping_pong").simulation().set_seeds([seed]).run().runs[0]
    assert here.trace_hash == runs_a[0]["trace_hash"]
    assert [[e.time, e.process, e.event] for e in here.process_events] == [
        [e["time"], e["process"], e["event"]] for e in runs_a[0]["process_events"]
    ]


SITE_MODULE = """
import trio
from moonpool.sim import (
    Attrition, ChaosConfig, FixedCount, ProcessContext, SimulationBuilder, WorkloadContext, buggify,
)

async def server(ctx: ProcessContext) -> None:
    while not ctx.shutdown.is_set():
        await trio.sleep(0.5 if buggify() else 0.1)

async def client(ctx: WorkloadContext) -> None:
    for _ in range(40):
        await trio.sleep(0.2 if buggify() else 0.05)

def simulation() -> SimulationBuilder:
    return (
        SimulationBuilder().enable_buggify().set_chaos(ChaosConfig.default())
        .set_attrition(Attrition(interval=2.0))
        .register_process("server", server).register_workload("client", client)
        .set_iteration_control(FixedCount(1))
    )
"""


def test_buggify_sites_replay_under_any_import_name_and_after_edits_above(
    tmp_path: Path,
) -> None:
    """A seed's run does not depend on how the file was loaded, nor on lines added
    above the functions: buggify sites are named file:function+offset."""
    import importlib.util

    from moonpool._ground._buggify import site_name

    path = tmp_path / "sites.py"
    path.write_text(SITE_MODULE)
    seeds = [11, 12, 13, 14]
    cli = [_run_in_subprocess(seed, "3", path)["runs"][0] for seed in seeds]  # type: ignore[index]
    spec = importlib.util.spec_from_file_location("some.other.name", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    imported = module.simulation().set_seeds(seeds).run()
    assert [run.trace_hash for run in imported.runs] == [run["trace_hash"] for run in cli]
    assert any(run.faults.get("buggify") for run in imported.runs), "the sites fired"
    path.write_text("# a comment\n# and another\n\n\n" + SITE_MODULE)
    edited = [_run_in_subprocess(seed, "4", path)["runs"][0] for seed in seeds]  # type: ignore[index]
    assert [run["trace_hash"] for run in edited] == [run["trace_hash"] for run in cli]
    assert site_name(module.client.__code__, module.client.__code__.co_firstlineno + 2) == (
        "sites.py:client+2"
    )

"""Seeds in worker processes: the same results as one process, streamed, stoppable.

Workers re-create the simulation from its target (``tests/sim/worker_targets.py``
and the examples), so every test here ships a real target to real spawned
processes -- no mocked pool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moonpool.sim import (
    FailureRecord,
    FixedCount,
    RunRecord,
    SimulationBuilder,
    SimulationReport,
    TargetError,
    UntilAllSometimesReached,
)
from moonpool.sim._target import load_target
from moonpool.sim._workers import WorkerSetupError
from tests import ctrl_c

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ROOT / "tests" / "sim" / "worker_targets.py"
PING_PONG = ROOT / "examples" / "ping_pong.py"
MOONPOOL_RUN = (sys.executable, "-m", "moonpool", "run")


def _target(name: str) -> str:
    return f"{TARGETS}:{name}"


def _builder(target: str) -> SimulationBuilder:
    return load_target(target).set_target(target).set_database(None)


def _per_seed(report: SimulationReport) -> list[tuple[object, ...]]:
    """What must not depend on where a seed ran: all but its wall time."""
    return [
        (r.seed, r.ok, r.trace_hash, dict(r.faults), r.events, r.sim_time, tuple(r.process_events))
        for r in report.runs
    ]


def test_per_seed_results_are_the_same_with_1_2_and_3_workers() -> None:
    target = f"{PING_PONG}:simulation"
    reports = {
        workers: _builder(target).set_base_seed(17).set_iteration_control(FixedCount(9))
        .run(workers=workers)
        for workers in (1, 2, 3)
    }  # fmt: skip
    serial = _per_seed(reports[1])
    assert len(serial) == 9 and any(kills for *_, kills in serial), "attrition killed servers"
    assert _per_seed(reports[2]) == serial
    assert _per_seed(reports[3]) == serial
    # The totals and the coverage agree too.
    assert reports[2].fault_totals == reports[1].fault_totals == reports[3].fault_totals
    summary = {(a.kind, a.message, a.hits, a.true_count) for a in reports[1].assertions}
    assert {(a.kind, a.message, a.hits, a.true_count) for a in reports[3].assertions} == summary


def test_explicit_seeds_keep_their_order_and_progress_streams_every_seed() -> None:
    seen: list[int] = []

    def progress(record: RunRecord, failure: FailureRecord | None) -> None:
        seen.append(record.seed)

    seeds = [9, 3, 27, 81, 1, 5, 7]
    report = _builder(_target("chatty")).set_seeds(seeds).set_progress(progress).run(workers=2)
    assert [r.seed for r in report.runs] == seeds  # the order one process runs them in
    assert sorted(seen) == sorted(seeds)  # each reported once, as it finished
    report.assert_success()


def test_a_worker_that_dies_costs_its_seed_only() -> None:
    seeds = [100, 101, 102, 103, 104, 105]
    report = _builder(_target("crashing")).set_seeds(seeds).run(workers=2)
    assert [r.seed for r in report.runs] == seeds
    crashed = {f.seed: f for f in report.failures}
    assert sorted(crashed) == [101, 104]
    for failure in crashed.values():
        assert failure.kind == "worker_crashed"
        assert "died: exit code 3" in failure.error
        assert f"--seed {failure.seed}" in failure.replay or str(failure.seed) in failure.replay
    assert all(r.ok for r in report.runs if r.seed not in crashed)


def test_fail_fast_stops_the_pool_at_the_first_failure() -> None:
    seeds = list(range(100, 140))
    report = _builder(_target("failing")).set_seeds(seeds).set_fail_fast().run(workers=2)
    assert report.failures and report.failures[0].seed in (101, 104)
    assert report.failures[0].kind == "assertion"
    assert len(report.runs) < len(seeds)
    assert report.stopped_because.startswith("fail-fast")


def test_until_all_sometimes_reached_stops_once_covered() -> None:
    builder = _builder(_target("chatty")).set_base_seed(3)
    report = builder.set_iteration_control(UntilAllSometimesReached(200)).run(workers=2)
    assert "sometimes/reachable sites reached" in report.stopped_because
    assert len(report.runs) < 200
    report.assert_success()


def test_a_builder_without_a_target_cannot_use_workers() -> None:
    builder = load_target(_target("chatty"))  # no set_target
    with pytest.raises(TargetError, match=r"set_target\('path/to/file.py:function'\)"):
        builder.run(workers=2)


def test_the_environment_asks_for_workers_and_a_builder_without_target_runs_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOONPOOL_WORKERS", "2")
    builder = load_target(_target("chatty")).set_database(None)
    with pytest.warns(RuntimeWarning, match="has no target"):
        report = builder.set_seeds([1, 2]).run()
    report.assert_success()


def test_a_target_that_builds_something_else_is_a_clear_error() -> None:
    builder = _builder(_target("chatty"))

    async def extra(ctx: object) -> None:
        pass

    builder.register_workload("extra", extra)  # type: ignore[arg-type]
    with pytest.raises(WorkerSetupError, match="builds a different simulation"):
        builder.set_seeds([1, 2, 3]).run(workers=2)


def test_a_builder_from_an_imported_module_may_name_its_file_as_target() -> None:
    """``from sweep import simulation`` then ``set_target("sweep.py:simulation")``: the
    same functions, though the file is loaded under another module name (the docs'
    seeds-across-cores page found this refused)."""
    from tests.sim import worker_targets

    builder = worker_targets.chatty().set_database(None).set_target(_target("chatty"))
    report = builder.set_seeds([1, 2, 3]).run(workers=2)
    report.assert_success()
    assert [run.seed for run in report.runs] == [1, 2, 3]


def test_settings_changed_after_the_target_travel_to_the_workers() -> None:
    def settled() -> SimulationBuilder:  # the target settles for 5 s; this, for 1 s
        return _builder(_target("chatty")).set_settle_time(1.0).set_seeds([5, 6, 7])

    here = _per_seed(settled().run(workers=1))
    assert _per_seed(settled().run(workers=2)) == here
    default = _per_seed(_builder(_target("chatty")).set_seeds([5, 6, 7]).run(workers=2))
    # The workers ran what the parent set, not what the target says.
    assert [row[5] + 4.0 for row in here] == pytest.approx([row[5] for row in default])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moonpool", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def test_cli_workers_match_one_process_under_another_hash_seed() -> None:
    args = ["examples/ping_pong.py", "--iterations", "6", "--base-seed", "4", "--json"]
    one = _cli(*args, "--no-database", env={"PYTHONHASHSEED": "0"})
    two = _cli(*args, "--no-database", "--workers", "2", env={"PYTHONHASHSEED": "987"})
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    runs_one = [(r["seed"], r["trace_hash"], r["faults"]) for r in json.loads(one.stdout)["runs"]]
    runs_two = [(r["seed"], r["trace_hash"], r["faults"]) for r in json.loads(two.stdout)["runs"]]
    assert runs_one == runs_two and len(runs_one) == 6


def test_cli_rejects_a_bad_worker_count() -> None:
    completed = _cli("examples/ping_pong.py", "--workers", "zero")
    assert completed.returncode == 2
    assert "--workers takes a number >= 1 or 'auto'" in completed.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is a POSIX signal")
def test_ctrl_c_stops_the_pool_and_prints_the_partial_report() -> None:
    process = ctrl_c.start(
        [*MOONPOOL_RUN, f"{TARGETS}:slow", "--workers", "2", "--no-database", "--quiet"],
        cwd=ROOT,
    )
    out, err = ctrl_c.press(process, [6.0])
    assert process.returncode == 130, err
    assert "INTERRUPTED (Ctrl-C)" in out
    assert "Traceback" not in err
    # The workers went with it: no process of this run is left.
    leftover = subprocess.run(
        ["pgrep", "-f", "moonpool-worker|multiprocessing.spawn"], capture_output=True, text=True
    )
    mine = [pid for pid in leftover.stdout.split() if _parent(int(pid)) == process.pid]
    assert not mine


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_a_time_limit_stops_the_pool_and_keeps_what_finished() -> None:
    from moonpool.sim import TimeLimit

    report = _builder(_target("slow")).set_iteration_control(TimeLimit(3.0)).run(workers=2)
    assert "time limit of 3s reached" in report.stopped_because
    assert 0 < len(report.runs) < 200
    assert len({r.seed for r in report.runs}) == len(report.runs)
    report.assert_success()

"""The command line and the pytest plugin, run as a user would run them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ECHO = ROOT / "examples" / "echo.py"

FAILING_MODULE = """
import trio
from moonpool.sim import FixedCount, SimulationBuilder, WorkloadContext

async def flaky(ctx: WorkloadContext) -> None:
    await trio.sleep(1)
    if ctx.seed % 3 == 0:
        raise RuntimeError(f"bad seed {ctx.seed}")

def simulation() -> SimulationBuilder:
    return SimulationBuilder().register_workload("w", flaky).set_iteration_control(FixedCount(30))
"""


def _cli_environment() -> dict[str, str]:
    # The session's failure database stays (conftest): the CLI must not write one
    # into the checkout.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MOONPOOL_") or k == "MOONPOOL_DATABASE"
    }


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moonpool", *args],
        capture_output=True,
        text=True,
        env=_cli_environment(),
        timeout=120,
        check=False,
    )


def test_cli_runs_a_simulation_and_prints_the_report() -> None:
    # Enough seeds that every reachable() site of the example is met (a MISS fails a
    # run): "retries a failed connect" is reached by about one seed in three, so 3
    # fresh seeds failed one run in four.
    result = _cli("run", str(ECHO), "--iterations", "40")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "iterations: 40 (40 passed, 0 failed)" in result.stdout
    assert "result: SUCCESS" in result.stdout


def test_cli_failure_exit_code_and_replay_command(tmp_path: Path) -> None:
    module = tmp_path / "flaky_sim.py"
    module.write_text(FAILING_MODULE)
    result = _cli("run", f"{module}:simulation", "--json", "--quiet")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert not document["ok"]
    failure = document["failures"][0]
    assert failure["seed"] % 3 == 0
    assert (
        failure["replay"] == f"python -m moonpool run {module}:simulation --seed {failure['seed']}"
    )
    # The printed replay command reproduces exactly that failure.
    replay = _cli("run", f"{module}:simulation", "--seed", str(failure["seed"]), "--json")
    again = json.loads(replay.stdout)
    assert replay.returncode == 1
    assert again["iterations"] == 1
    assert again["failures"][0]["error"] == failure["error"]
    run = next(r for r in document["runs"] if r["seed"] == failure["seed"])
    assert again["runs"][0]["trace_hash"] == run["trace_hash"]


def test_cli_fail_fast_stops_at_the_first_failing_seed_and_says_why(tmp_path: Path) -> None:
    module = tmp_path / "flaky_sim.py"
    module.write_text(FAILING_MODULE)
    result = _cli("run", f"{module}:simulation", "--json", "--quiet", "--fail-fast")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    [failure] = document["failures"]  # one in three seeds fails: without it, about ten
    assert document["runs"][-1]["seed"] == failure["seed"]
    assert document["iterations"] < 30
    assert document["stopped_because"] == f"fail-fast: seed {failure['seed']} failed"
    full = json.loads(_cli("run", f"{module}:simulation", "--json", "--quiet").stdout)
    assert full["iterations"] == 30 and len(full["failures"]) > 1
    assert full["stopped_because"] == "ran 30 seed(s) (FixedCount)"
    text = _cli("run", f"{module}:simulation", "--quiet", "--fail-fast").stdout
    assert "stopped:    fail-fast: seed" in text


def test_cli_prints_the_base_seed_and_base_seed_reruns_the_batch(tmp_path: Path) -> None:
    module = tmp_path / "flaky_sim.py"
    module.write_text(FAILING_MODULE)
    first = json.loads(_cli("run", f"{module}:simulation", "--json", "--quiet").stdout)
    base = first["base_seed"]
    assert isinstance(base, int)
    again = _cli("run", f"{module}:simulation", "--quiet", "--base-seed", str(base), "--json")
    second = json.loads(again.stdout)
    assert [r["seed"] for r in second["runs"]] == [r["seed"] for r in first["runs"]]
    assert [r["trace_hash"] for r in second["runs"]] == [r["trace_hash"] for r in first["runs"]]
    assert second["base_seed"] == base
    text = _cli("run", f"{module}:simulation", "--quiet", "--base-seed", "7").stdout
    assert "base seed:  7 (the same batch again: --base-seed 7" in text
    replay = json.loads(_cli("run", f"{module}:simulation", "--seed", "3", "--json").stdout)
    assert replay["base_seed"] is None  # seeds given: there is no batch to name


UNTIL_MODULE = """
import trio
from moonpool.sim import SimulationBuilder, UntilAllSometimesReached, WorkloadContext, sometimes

async def easy(ctx: WorkloadContext) -> None:
    await trio.sleep(1)
    sometimes(True, "always reached at once")

def simulation() -> SimulationBuilder:
    return (
        SimulationBuilder()
        .enable_buggify()
        .register_workload("w", easy)
        .set_iteration_control(UntilAllSometimesReached(100))
    )
"""


def test_cli_iterations_is_exact_even_until_all_sometimes_reached(tmp_path: Path) -> None:
    module = tmp_path / "until_sim.py"
    module.write_text(UNTIL_MODULE)
    alone = json.loads(_cli("run", f"{module}:simulation", "--json", "--quiet").stdout)
    assert alone["iterations"] == 1  # every site reached by the first seed
    asked = _cli("run", f"{module}:simulation", "--json", "--quiet", "--iterations", "12")
    document = json.loads(asked.stdout)
    assert document["iterations"] == 12
    assert document["stopped_because"] == "ran 12 seed(s) (FixedCount)"


def test_cli_usage_errors(tmp_path: Path) -> None:
    assert _cli("run", "does/not/exist.py").returncode == 2
    module = tmp_path / "m.py"
    module.write_text("simulation = 3\n")
    result = _cli("run", str(module))
    assert result.returncode == 2
    assert "expected a SimulationBuilder" in result.stderr
    assert "has no attribute 'nope'" in _cli("run", f"{module}:nope").stderr


def test_pytest_lists_each_failing_seed_once_and_says_how_to_explain_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_flaky=FAILING_MODULE
        + """

def test_simulation() -> None:
    simulation().run().assert_success()
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*failed:*",
            "*replay: pytest test_flaky.py::test_simulation --moonpool-seed *",
            "*- moonpool -*",
            "*the whole timeline of seed *: pytest test_flaky.py::test_simulation "
            "--moonpool-seed * --moonpool-timeline",
            "*the faults that matter: pytest * --moonpool-shrink",
        ]
    )
    text = result.stdout.str()
    seeds = re.findall(r"bad seed (\d+)", text)
    assert seeds, text
    # Each failing seed is listed once, in the failure message (with its replay
    # command), and not again in the section.  (pytest's own summary line may repeat
    # the message: under CI=true it is not cut short.)
    first = seeds[0]
    message = text[text.index("SimulationFailed") : text.index("- moonpool -")]
    section = text[text.index("- moonpool -") :]
    section = section[: section.index("=====")]
    assert message.count(f"  seed {first}: [workload_error]") == 1
    assert message.count(f"--moonpool-seed {first}\n") == 1
    assert f"seed {first}: [" not in section


def test_pytest_timeline_and_shrink_options_fill_the_section(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_flaky=FAILING_MODULE
        + """

def test_simulation() -> None:
    simulation().run().assert_success()
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--moonpool-iterations", "3", "--moonpool-seed", "3",
        "--moonpool-timeline", "--moonpool-shrink", "--moonpool-shrink-time", "20",
    )  # fmt: skip
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- moonpool -*",
            "shrunk seed 3: 0 of 0 faults still make it fail*",
            "*(none: the seed fails without any fault -- a plain bug)",
            "timeline of seed 3:",
            "*w *failure *[[]workload_error[]] workload 'w' (run) raised RuntimeError: bad seed 3",
        ]
    )
    bad = pytester.runpytest_subprocess("--moonpool-fault-plan", "reset")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR


def test_pytest_moonpool_seed_replays_one_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_flaky=FAILING_MODULE
        + """

def test_simulation() -> None:
    report = simulation().run()
    print("SEEDS", [run.seed for run in report.runs])
    report.assert_success()
"""
    )
    passing = pytester.runpytest_subprocess("--moonpool-seed", "31", "-s")
    passing.assert_outcomes(passed=1)
    passing.stdout.fnmatch_lines(["*SEEDS [[]31[]]*"])
    failing = pytester.runpytest_subprocess("--moonpool-seed", "33")
    failing.assert_outcomes(failed=1)
    failing.stdout.fnmatch_lines(["*bad seed 33*"])
    many = pytester.runpytest_subprocess("--moonpool-iterations", "4", "-s")
    many.stdout.fnmatch_lines(["*SEEDS [[]*,*,*,*[]]*"])
    bad = pytester.runpytest_subprocess("--moonpool-seed", "x")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR


LOGGING_MODULE = """
import logging
import trio
from moonpool.sim import FixedCount, SimulationBuilder, WorkloadContext

log = logging.getLogger("moonpool.transport")

async def noisy(ctx: WorkloadContext) -> None:
    for n in range(300):
        await trio.sleep(0.5)
        log.warning("closing connection %d: corrupted frame", n)
    raise RuntimeError(f"seed {ctx.seed} fails")

def simulation() -> SimulationBuilder:
    return SimulationBuilder().register_workload("w", noisy).set_iteration_control(FixedCount(4))
"""


def test_logs_are_kept_with_the_seed_not_printed(tmp_path: Path) -> None:
    module = tmp_path / "noisy_sim.py"
    module.write_text(LOGGING_MODULE)
    result = _cli("run", str(module), "--json", "--quiet")
    assert "corrupted frame" not in result.stderr  # no flood on the terminal
    document = json.loads(result.stdout)
    failure = document["failures"][0]
    assert "Timeline of this seed, its last 40 of " in failure["traceback"]
    # The most recent lines are kept, stamped with simulated time and the host.
    line = (
        "150.0000s  w              log         WARNING moonpool.transport: closing connection 299"
    )
    assert line in failure["traceback"]
    assert "closing connection 0:" not in failure["traceback"]  # only the tail is kept
    tail = failure["timeline_tail"]
    assert len(tail) == 40 and tail[-1]["kind"] == "failure"
    assert tail[-2] == {
        "time": 150.0,
        "host": "w",
        "kind": "log",
        "text": "WARNING moonpool.transport: closing connection 299: corrupted frame",
    }


def test_cli_output_into_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    """``python -m moonpool run ... | head -1``: the reader leaves early."""
    module = tmp_path / "flaky_sim.py"
    module.write_text(FAILING_MODULE)
    process = subprocess.Popen(
        [sys.executable, "-m", "moonpool", "run", str(module), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_cli_environment(),
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # gone before the report is written, like a quick head
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1  # the simulation's verdict, not a crash
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr

"""The CLI as a new user meets it: --version, one-line usage errors, --help, targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import moonpool

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moonpool", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version() -> None:
    completed = _cli("--version")
    assert completed.returncode == 0
    assert completed.stdout.strip() == f"moonpool {moonpool.__version__}"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "examples/ping_pong.py", "--seed", "abc"], "invalid int value: 'abc'"),
        (["run"], "the following arguments are required: target"),
        (["run", "examples/ping_pong.py:nothing"], "has no attribute 'nothing'"),
        (["run", "README.md"], "README.md is not a Python file"),
        (["run", "no/such/file.py"], "no such file: no/such/file.py"),
        (["run", "examples/ping_pong.py", "--workers", "0"], "--workers takes a number"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_every_usage_error_is_one_line_with_status_2(args: list[str], says: str) -> None:
    completed = _cli(*args)
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert says in lines[0] and "Traceback" not in completed.stderr


def test_help_says_what_a_target_is_and_the_exit_codes() -> None:
    text = _cli("run", "--help").stdout
    assert "package.module[:ATTR]" in text and "SimulationBuilder" in text
    assert "130 Ctrl-C" in text and "2 a usage error" in text


def test_a_module_target_from_the_current_directory(tmp_path: Path) -> None:
    package = tmp_path / "mysims"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ping.py").write_text(
        "import trio\n"
        "from moonpool.sim import SimulationBuilder, FixedCount\n"
        "async def w(ctx):\n    await trio.sleep(1)\n"
        "def simulation():\n"
        "    return SimulationBuilder().enable_buggify().register_workload('w', w)"
        ".set_iteration_control(FixedCount(3))\n"
    )
    # The console script, run where the user's package is, finds it like python -m does.
    script = Path(sys.executable).with_name("moonpool")
    completed = subprocess.run(
        [str(script), "run", "mysims.ping", "--json", "--no-database", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["iterations"] == 3
    assert document["schema_version"] == 1
    assert document["moonpool_version"] == moonpool.__version__


def test_assert_success_hides_its_own_frame_and_names_public_classes(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_fails="""
import trio
from moonpool.sim import SimulationBuilder, FixedCount

async def w(ctx):
    await trio.sleep(1)
    raise RuntimeError("bad seed")

def test_simulation():
    SimulationBuilder().enable_buggify().register_workload("w", w).set_iteration_control(
        FixedCount(2)).set_database(None).run().assert_success()
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "moonpool.sim.SimulationFailed" in text and "_report" not in text
    assert "def assert_success" not in text  # __tracebackhide__


def test_ctrl_c_keeps_the_failing_seeds_found_so_far() -> None:
    from moonpool.sim import FailureRecord, SimulationInterrupted, SimulationReport

    failure = FailureRecord(7, "assertion", "boom", "boom", 1.0, "replay 7")
    report = SimulationReport(
        runs=[], failures=[failure], assertions=[], fault_totals={}, wall_time=0.0
    )
    assert str(SimulationInterrupted(report)) == (
        "simulation interrupted after 0 seeds; 1 failed: 7; replay the first: replay 7"
    )


def test_pytest_verbose_shows_one_line_per_simulation_and_quiet_shows_none(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_passes="""
import trio
from moonpool.sim import SimulationBuilder, FixedCount

async def w(ctx):
    await trio.sleep(1)

def test_simulation():
    SimulationBuilder().enable_buggify().register_workload("w", w).set_iteration_control(
        FixedCount(3)).set_database(None).run().assert_success()
"""
    )
    verbose = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    verbose.assert_outcomes(passed=1)
    verbose.stdout.fnmatch_lines(["*test_simulation PASSED*", "    moonpool: 3 seeds, 0 failed, *"])
    quiet = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert "moonpool:" not in quiet.stdout.str()

"""Ctrl-C during a simulation stops it cleanly and keeps what ran.

The signal is raised from inside a workload, as a real Ctrl-C would arrive: while
a seed's ``trio.run`` is running.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import trio

from moonpool.sim import (
    ChaosConfig,
    SimulationBuilder,
    SimulationInterrupted,
    WorkloadContext,
)
from tests import ctrl_c
from tests.sim.test_cli_and_plugin import _cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is a POSIX signal")


def _presses_ctrl_c(times: int, on_seed: int):  # type: ignore[no-untyped-def]
    async def workload(ctx: WorkloadContext) -> None:
        await trio.sleep(0.5)
        if ctx.seed == on_seed:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
                await trio.sleep(0.1)
        await trio.sleep(0.5)

    return workload


def _builder(workload: object) -> SimulationBuilder:
    return (
        SimulationBuilder()
        .set_chaos(ChaosConfig.default())
        .enable_buggify()
        .register_workload("w", workload)  # type: ignore[arg-type]
        .set_seeds([11, 12, 13, 14])
    )


def test_ctrl_c_finishes_the_seed_then_stops_with_a_partial_report() -> None:
    with pytest.raises(SimulationInterrupted) as caught:
        _builder(_presses_ctrl_c(1, on_seed=12)).run()
    assert isinstance(caught.value, KeyboardInterrupt)  # still stops pytest, scripts...
    report = caught.value.report
    assert report.interrupted and not report.ok
    # The seed Ctrl-C arrived in ran to its end and passed: nothing was cut short.
    assert [run.seed for run in report.runs] == [11, 12]
    assert all(run.ok for run in report.runs) and not report.failures
    assert "INTERRUPTED (Ctrl-C) after 2 seeds" in str(report)
    assert json.loads(report.to_json())["interrupted"] is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_interrupts_the_running_seed() -> None:
    with pytest.raises(SimulationInterrupted) as caught:
        _builder(_presses_ctrl_c(2, on_seed=12)).run()
    report = caught.value.report
    # Seed 12 was cut short: it is neither a pass nor a failure of the code under test.
    assert [run.seed for run in report.runs] == [11]
    assert not report.failures
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_ctrl_c_the_handler_is_restored() -> None:
    report = _builder(_presses_ctrl_c(0, on_seed=12)).run()
    assert report.ok and not report.interrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


CTRL_C_MODULE = """
import signal
import trio
from moonpool.sim import FixedCount, SimulationBuilder, WorkloadContext

seeds_run = 0

async def workload(ctx: WorkloadContext) -> None:
    global seeds_run
    seeds_run += 1
    await trio.sleep(1)
    if seeds_run == 3:
        signal.raise_signal(signal.SIGINT)

def simulation() -> SimulationBuilder:
    return SimulationBuilder().register_workload("w", workload).set_iteration_control(
        FixedCount(100_000)
    )
"""


def test_cli_prints_the_partial_report_and_exits_130(tmp_path: Path) -> None:
    module = tmp_path / "ctrl_c_sim.py"
    module.write_text(CTRL_C_MODULE)
    result = _cli("run", str(module), "--quiet")
    assert result.returncode == 130, result.stderr
    assert "iterations: 3 (3 passed, 0 failed)" in result.stdout
    assert "result: INTERRUPTED (Ctrl-C) after 3 seeds" in result.stdout
    assert "Traceback" not in result.stderr
    as_json = _cli("run", str(module), "--quiet", "--json")
    assert as_json.returncode == 130
    document = json.loads(as_json.stdout)
    assert document["interrupted"] is True and document["ok"] is False
    assert document["iterations"] == 3


LONG_SEEDS_MODULE = """
import trio
from moonpool.sim import FixedCount, SimulationBuilder, WorkloadContext

async def workload(ctx: WorkloadContext) -> None:
    async def tick(n: int) -> None:
        for _ in range(n):
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:  # seconds of wall time per seed
        for _ in range(50):
            nursery.start_soon(tick, 3000)

def simulation() -> SimulationBuilder:
    return SimulationBuilder().register_workload("w", workload).set_iteration_control(
        FixedCount(5)
    )
"""


@pytest.mark.parametrize("second_after", [0.05, 0.3])
def test_cli_two_real_ctrl_c_cancel_the_running_seed_cleanly(
    tmp_path: Path, second_after: float
) -> None:
    # Real signals from another process land wherever the seed happens to be --
    # in trio's own code or the supervising instrument too, where a
    # KeyboardInterrupt used to crash the run (TrioInternalError) or silently
    # disable the instrument.  The second press must cancel the seed cleanly.
    module = tmp_path / "long_seeds.py"
    module.write_text(LONG_SEEDS_MODULE)
    process = ctrl_c.start([sys.executable, "-m", "moonpool", "run", str(module), "--quiet"])
    out, err = ctrl_c.press(process, [1.0, second_after])
    assert process.returncode == 130, err
    assert "Traceback" not in err and "Instrument" not in err, err
    assert "result: INTERRUPTED (Ctrl-C)" in out
    assert "0 failed" in out

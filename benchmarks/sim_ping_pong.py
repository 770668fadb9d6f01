"""How fast the example chaos simulation runs: seeds and answered pings per wall second.

``examples/ping_pong.py`` is loaded from its file and its ``simulation()`` run
as it comes (``ChaosConfig.default()``, buggify on, one server and two
clients), with ``FixedCount`` seeds from a fixed base seed so that every sample
does identical work.  There is no raw baseline for a chaos simulation; these
figures exist to catch regressions between versions.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from benchmarks._core import Figure, Outcome, Settings, compare_sync, median, repeat_sync
from moonpool._ground._timeline import RawEvent, Timeline
from moonpool.sim import FixedCount, SimulationReport

NAME: Final = "sim_ping_pong"
DESCRIPTION: Final = "examples/ping_pong.py simulation (chaos + buggify): seeds/s, pings/s"

EXAMPLE: Final = Path(__file__).resolve().parent.parent / "examples" / "ping_pong.py"
ANSWERED_SITE: Final = "every pong answers its own ping"
BASE_SEED: Final = 424242


def load_example(path: Path = EXAMPLE) -> ModuleType:
    name = "_moonpool_bench_ping_pong"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


_NO_EVENT: RawEvent = (0.0, "", "", "")


def _record_nothing(
    self: Timeline, kind: str, text: str, host: str | None = None, at: float | None = None
) -> RawEvent:
    return _NO_EVENT


def _without_timeline(sample: Any) -> Any:
    """``sample`` with ``Timeline.add`` doing nothing: the timeline's baseline."""

    def untimed() -> float:
        recording = Timeline.add
        Timeline.add = _record_nothing  # type: ignore[method-assign]
        try:
            return float(sample())
        finally:
            Timeline.add = recording  # type: ignore[method-assign]

    return untimed


def _answered(report: SimulationReport) -> int:
    for summary in report.assertions:
        if summary.message == ANSWERED_SITE:
            return summary.hits
    raise AssertionError(f"assertion {ANSWERED_SITE!r} not found in the report")


def run(settings: Settings) -> Outcome:
    example = load_example()
    seeds = settings.count(100, minimum=3)
    reports: list[SimulationReport] = []
    walls: list[float] = []

    def sample(*, timeline: bool = False) -> float:
        builder = example.simulation().set_database(None)
        builder.set_iteration_control(FixedCount(seeds)).set_base_seed(BASE_SEED)
        builder.record_timeline(timeline)
        started = time.perf_counter()
        report: SimulationReport = builder.run()
        wall = time.perf_counter() - started
        reports.append(report)
        walls.append(wall)
        return seeds / wall

    seeds_per_s = repeat_sync(sample, settings)
    kept = settings.repeats
    reports, walls = reports[-kept:], walls[-kept:]
    report = reports[-1]
    answered = _answered(report)
    if any(_answered(r) != answered for r in reports):
        raise AssertionError("the same seeds answered different numbers of pings")
    details: dict[str, Any] = {
        "seeds": seeds,
        "base_seed": BASE_SEED,
        "failed_seeds": len(report.failures),
        "answered_pings": answered,
        "task_steps": report.total_events,
        "sim_time_s": report.total_sim_time,
        "fault_totals": dict(report.fault_totals),
    }
    figures = [
        Figure("seeds/s", "seeds/s", seeds_per_s, details=details),
        Figure(
            "answered pings per wall second",
            "req/s",
            [answered / w for w in walls],
            details=details,
        ),
        Figure(
            "task steps per wall second",
            "steps/s",
            [report.total_events / w for w in walls],
            details=details,
        ),
        Figure(
            "simulated seconds per wall second",
            "x",
            [report.total_sim_time / w for w in walls],
            details=details,
        ),
    ]
    # What the timeline costs: every seed keeps its tail (the default); the
    # baseline is the same simulation with recording replaced by a no-op, so the
    # ratio is the price of the tail (target: within 5 %), and of a whole timeline.
    tail, untimed = compare_sync(sample, _without_timeline(sample), settings)
    whole, untimed_2 = compare_sync(
        lambda: sample(timeline=True), _without_timeline(sample), settings
    )
    figures += [
        Figure(
            "seeds/s, timeline tail (default) vs none",
            "seeds/s",
            tail,
            untimed,
            "timeline recording a no-op",
            target=0.95,
            details=details,
        ),
        Figure(
            "seeds/s, whole timeline (record_timeline) vs none",
            "seeds/s",
            whole,
            untimed_2,
            "timeline recording a no-op",
            details=details,
        ),
    ]
    notes = [
        f"{seeds} seeds from base seed {BASE_SEED}: {answered} pings answered, "
        f"{len(report.failures)} failed seeds, {report.total_events} task steps, "
        f"{report.total_sim_time:.1f}s simulated (same in every sample)",
        f"median wall time per sample {median(walls):.2f}s; no baseline (figures are for "
        "tracking regressions)",
    ]
    if report.failures:
        notes.append(f"WARNING: failing seeds: {[f.seed for f in report.failures][:10]}")
    return Outcome(figures=figures, notes=notes)

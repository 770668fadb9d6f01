"""Command line of the benchmark suite: run, print a table, write JSON."""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from benchmarks._core import (
    FULL,
    QUICK,
    Figure,
    Outcome,
    Settings,
    pin_process,
    pinning,
    release,
    repin,
    unpin,
)

__all__ = ["BENCHMARKS", "main", "run_benchmark"]

#: Module names under ``benchmarks``, in the order they run.
BENCHMARKS: Final = (
    "sim_echo",
    "vs_detangle",
    "sim_overhead",
    "sim_network",
    "envelope",
    "sim_ping_pong",
    "workers",
    "load_balance",
    "real_tcp",
    "many_connections",
    "rpc_libraries",
    "fairness",
    "memory",
)

DEFAULT_OUTPUT: Final = Path(__file__).resolve().parent / "results" / "latest.json"
SCHEMA_VERSION: Final = 1

# The simulation builder honours these (and detangle its own, over what the code
# asks for); a stray one would change what we measure.
_SIM_ENVIRONMENT: Final = (
    "MOONPOOL_SEED",
    "MOONPOOL_ITERATIONS",
    "MOONPOOL_WORKERS",
    "DETANGLE_RUNS",
    "DETANGLE_STRATEGY",
    "DETANGLE_SEED",
    "DETANGLE_MAX_DURATION",
    "DETANGLE_REPLAY",
    "DETANGLE_DATABASE",
    "DETANGLE_SHRINK",
)


@dataclass(slots=True)
class BenchmarkResult:
    name: str
    description: str
    outcome: Outcome = field(default_factory=Outcome)
    duration: float = 0.0
    error: str | None = None
    error_summary: str | None = None
    cpus: list[int] | None = None  # the CPUs it ran on (None: not known)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "cpus": self.cpus,
            "duration_s": self.duration,
            "error": self.error,
            "error_summary": self.error_summary,
            "notes": self.outcome.notes,
            "figures": [figure.to_json() for figure in self.outcome.figures],
        }


def load(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.{name}")


def run_benchmark(name: str, settings: Settings) -> BenchmarkResult:
    """Run one benchmark module; an exception becomes the result's ``error``.

    A module with ``PINNED = False`` (one that needs every core, such as worker
    processes) runs with the process's original CPU affinity; the others on the
    CPU :func:`benchmarks._core.pin_process` chose, if any."""
    module = load(name)
    result = BenchmarkResult(name, str(getattr(module, "DESCRIPTION", "")))
    pinned = bool(getattr(module, "PINNED", True))
    if not pinned:
        unpin()
    result.cpus = _affinity()
    started = time.perf_counter()
    try:
        outcome = module.run(settings)
    except Exception as exc:
        result.error = traceback.format_exc()
        result.error_summary = _summarize(exc)
    else:
        if isinstance(outcome, Outcome):
            result.outcome = outcome
        else:
            result.error = result.error_summary = (
                f"benchmarks.{name}.run returned {type(outcome).__name__}, not an Outcome"
            )
    finally:
        if not pinned:
            repin()
    result.duration = time.perf_counter() - started
    return result


def _affinity() -> list[int] | None:
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return None
    try:
        return sorted(getter(0))
    except OSError:
        return None


def load_average() -> list[float] | None:
    """``os.getloadavg()`` (1, 5 and 15 minutes), or None where it does not exist."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def format_load(load: Sequence[float] | None) -> str:
    return "unknown" if load is None else " ".join(f"{value:.2f}" for value in load)


def _summarize(exc: BaseException) -> str:
    """The first leaf of an exception (group) as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


# -- formatting --------------------------------------------------------------------

_PREFIXES: Final = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def human(value: float | None, unit: str) -> str:
    """``12.3k ops/s``, ``45.6 MB/s``, ``1.2 KiB``-style rendering."""
    if value is None or math.isnan(value):
        return "-"
    if unit == "B":
        for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.2f} {name}"
        return f"{value:.0f} B"
    for factor, prefix in _PREFIXES:
        if abs(value) >= factor:
            if unit.startswith("B/"):
                return f"{value / factor:.1f} {prefix}{unit}"
            return f"{value / factor:.1f}{prefix} {unit}"
    return f"{value:.3g} {unit}"


def compact(value: float) -> str:
    """A number in 3-4 characters with an SI prefix: ``4.1k``, ``0.707``, ``1.2M``."""
    if math.isnan(value):
        return "-"
    for factor, prefix in _PREFIXES:
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}"
    return f"{value:.3g}"


def span(values: Sequence[float]) -> str:
    """``min-max`` of samples, compact; "" for fewer than two."""
    if len(values) < 2:
        return ""
    return f"{compact(min(values))}-{compact(max(values))}"


def format_ratio(figure: Figure) -> str:
    ratio = figure.ratio
    return "-" if ratio is None else f"{ratio:.3g}x"


def ratio_span(figure: Figure) -> str:
    ratios = figure.round_ratios
    if len(ratios) < 2:
        return ""
    return f"{min(ratios):.3g}-{max(ratios):.3g}"


def format_target(figure: Figure) -> str:
    if figure.target is None:
        return "-"
    return f"{'>=' if figure.higher_is_better else '<='}{figure.target:.2f}x"


TABLE_HEADER: Final = (
    "benchmark",
    "figure",
    "moonpool",
    "min-max",
    "baseline",
    "min-max",
    "ratio",
    "rounds min-max",
    "target",
    "status",
)


def render_table(results: Sequence[BenchmarkResult]) -> str:
    """One row per figure: moonpool's median and the min-max of its samples, the
    baseline's, the ratio (median of the per-round ratios) and their min-max."""
    header = TABLE_HEADER
    rows: list[tuple[str, ...]] = []
    for result in results:
        if result.error is not None:
            summary = result.error_summary or "see notes"
            rows.append((result.name, f"ERROR: {summary}", *[""] * 7, "ERROR"))
            continue
        for figure in result.outcome.figures:
            rows.append(
                (
                    result.name,
                    figure.name,
                    human(figure.value, figure.unit),
                    span(figure.samples),
                    human(figure.baseline, figure.unit),
                    span(figure.baseline_samples),
                    format_ratio(figure),
                    ratio_span(figure),
                    format_target(figure),
                    figure.status,
                )
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {2, 3, 4, 5, 6, 7}

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    out = [line(header), line(["-" * width for width in widths])]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    return "\n".join(out)


def render_notes(results: Sequence[BenchmarkResult]) -> str:
    lines: list[str] = []
    for result in results:
        cpus = "" if result.cpus is None else f", CPU {','.join(map(str, result.cpus))}"
        lines.append(f"[{result.name}] {result.description} ({result.duration:.1f}s{cpus})")
        lines.extend(f"  - {note}" for note in result.outcome.notes)
        if result.error is not None:
            lines.extend(f"  ! {text}" for text in result.error.rstrip().splitlines())
    return "\n".join(lines)


# -- environment -------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        completed = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def environment() -> dict[str, Any]:
    return {
        "versions": {
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "moonpool": _version("moonpool"),
            "trio": _version("trio"),
            "anyio": _version("anyio"),
            "msgspec": _version("msgspec"),
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "git": _git_revision(),
    }


def document(
    results: Sequence[BenchmarkResult],
    settings: Settings,
    argv: Sequence[str],
    duration: float,
    load: dict[str, list[float] | None] | None = None,
) -> dict[str, Any]:
    figures = [figure for result in results for figure in result.outcome.figures]
    judged = [figure for figure in figures if figure.status != "-"]
    return {
        "schema": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(argv),
        "settings": {
            "quick": settings.quick,
            "scale": settings.scale,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "statistic": "median",
            "ratio_statistic": "median of per-round ratios (ratio of medians if unpaired)",
        },
        **environment(),
        "pinning": pinning().to_json(),
        "load_average": load or {"start": None, "end": None},
        "duration_s": duration,
        "summary": {
            "figures": len(figures),
            "targets": len(judged),
            "passed": sum(figure.status == "PASS" for figure in judged),
            "failed": sum(figure.status == "FAIL" for figure in judged),
            "errors": [result.name for result in results if result.error is not None],
        },
        "benchmarks": {result.name: result.to_json() for result in results},
    }


# -- command line ------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="moonpool ratio benchmarks: moonpool vs a raw baseline measured in the "
        "same run. Targets are ratios, never absolute timings.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts (whole run well under a minute)"
    )
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"run only these benchmarks (of: {', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the JSON results (default: benchmarks/results/latest.json)",
    )
    parser.add_argument("--repeats", type=int, help="samples per figure (median is reported)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a figure misses its target (default: only on errors)",
    )
    args = parser.parse_args(argv)
    if args.only:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in names if name not in BENCHMARKS]
        if unknown or not names:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
        args.names = [name for name in BENCHMARKS if name in names]
    else:
        args.names = list(BENCHMARKS)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        return _main(args, argv)
    finally:
        release()  # the caller (a test, say) gets its CPUs back


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    settings = QUICK if args.quick else FULL
    if args.repeats is not None:
        settings = Settings(
            scale=settings.scale, repeats=args.repeats, warmup=settings.warmup, quick=args.quick
        )
    for variable in _SIM_ENVIRONMENT:
        if os.environ.pop(variable, None) is not None:
            print(f"note: ignoring {variable} for the benchmarks", file=sys.stderr)

    mode = "quick" if settings.quick else "full"
    load_start = load_average()
    pinned = pin_process()
    print(
        f"moonpool benchmarks ({mode}: median of {settings.repeats} interleaved rounds after "
        f"{settings.warmup} warm-up; ratio = moonpool / baseline, the median of the per-round "
        "ratios)",
        flush=True,
    )
    print(f"  {pinned.note}; load average at start {format_load(load_start)}", flush=True)
    started = time.perf_counter()
    results: list[BenchmarkResult] = []
    for name in args.names:
        print(f"  running {name} ...", end="", flush=True)
        result = run_benchmark(name, settings)
        status = "ERROR" if result.error else "done"
        print(f" {status} in {result.duration:.1f}s", flush=True)
        results.append(result)
    duration = time.perf_counter() - started
    load_end = load_average()

    print()
    print(
        f"{pinned.note}; load average (1, 5, 15 min) at start {format_load(load_start)}, "
        f"at end {format_load(load_end)}; {os.cpu_count()} CPUs"
    )
    print(render_table(results))
    print()
    print(render_notes(results))
    doc = document(results, settings, argv, duration, {"start": load_start, "end": load_end})
    summary = doc["summary"]
    print()
    print(
        f"{summary['figures']} figures, {summary['targets']} with targets: "
        f"{summary['passed']} PASS, {summary['failed']} FAIL; "
        f"{len(summary['errors'])} benchmark error(s); total {duration:.1f}s"
    )
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n")
    print(f"results written to {output}")
    if summary["errors"]:
        return 2
    if args.strict and summary["failed"]:
        return 1
    return 0


def _json_default(value: object) -> object:
    raise TypeError(f"cannot serialise {type(value).__name__} in benchmark results")

"""Command line: ``python -m moonpool run PATH.py[:ATTR] [--seed N] [--iterations N] [--json]``.

``ATTR`` (default ``simulation``) names a ``SimulationBuilder`` or a zero-argument
function returning one.  The report goes to stdout (text, or JSON with
``--json``), a progress line to stderr; the exit status is 1 when the simulation
failed, 2 for usage errors.

To explain a failing seed: ``--seed N --timeline`` prints what happened in it
(``--timeline-host``/``--timeline-kind`` to filter), ``--seed N --shrink`` finds
the few faults that make it fail and prints a ``--fault-plan`` that replays
just those.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import msgspec

import moonpool
from moonpool._cli_progress import Progress
from moonpool._ground._timeline import KINDS, format_timeline
from moonpool.sim import (
    SimulationBuilder,
    SimulationInterrupted,
    SimulationReport,
)
from moonpool.sim._builder import EnvironmentSettingError
from moonpool.sim._target import TargetError, load_target
from moonpool.sim._workers import WorkerSetupError, worker_count

__all__ = ["load_builder", "main"]


class UsageError(Exception):
    pass


def load_builder(target: str) -> SimulationBuilder:
    """Import ``PATH.py[:ATTR]`` (or ``module:ATTR``) and return the builder it defines."""
    try:
        return load_target(target)
    except TargetError as exc:
        raise UsageError(str(exc)) from None


_RUN_EPILOG = """\
A target names the code that builds the simulation: path/to/file.py[:ATTR] or
package.module[:ATTR] (importable from the current directory), where ATTR (default
'simulation') is a SimulationBuilder or a function returning one.

Exit status: 0 every seed passed (and every sometimes/reachable site was reached),
1 a seed failed or a site was never reached, 2 a usage error, 130 Ctrl-C.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (and exit status 2), not the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m moonpool",
        description="Deterministic simulation testing for trio programs.",
        epilog="'python -m moonpool run --help' tells what a target is, the options and the "
        "exit codes.",
    )
    parser.add_argument("--version", action="version", version=f"moonpool {moonpool.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser(
        "run",
        help="run a simulation and print its report",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("target", help="PATH.py[:ATTR] or package.module[:ATTR] (see below)")
    run.add_argument("--seed", type=int, action="append", help="replay this seed (repeatable)")
    run.add_argument("--iterations", type=int, help="number of seeds to run")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument(
        "--html", metavar="PATH", help="also write the report as a self-contained HTML page"
    )
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failing seed")
    run.add_argument("--base-seed", type=int, help="derive the seeds from this (reruns a batch)")
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        metavar="N|auto",
        help="run the seeds in N worker processes (auto: one per CPU)",
    )
    where.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the seeds on the Dask cluster whose scheduler is at ADDRESS",
    )
    explain = run.add_argument_group("explaining a failure")
    explain.add_argument(
        "--timeline", action="store_true", help="print what happened in the seed (with --seed)"
    )
    explain.add_argument(
        "--timeline-host", action="append", default=[], metavar="HOST", help="only this host"
    )
    explain.add_argument(
        "--timeline-kind",
        action="append",
        default=[],
        choices=KINDS,
        metavar="KIND",
        help=f"only events of this kind ({', '.join(KINDS)})",
    )
    explain.add_argument(
        "--shrink", action="store_true", help="shrink the first failing seed's faults"
    )
    explain.add_argument(
        "--shrink-time", type=float, default=60.0, metavar="S", help="wall seconds (default 60)"
    )
    explain.add_argument(
        "--fault-plan",
        metavar="PLAN",
        help="allow only these faults (as --shrink prints them; @FILE reads a --json report)",
    )
    explain.add_argument(
        "--check-determinism", action="store_true", help="run each seed twice and compare"
    )
    explain.add_argument(
        "--strict-determinism",
        action="store_true",
        help="fail a seed whose code reads the real clock, global random or opens a socket",
    )
    database = run.add_mutually_exclusive_group()
    database.add_argument(
        "--database", metavar="DIR", help="failure database directory (default .moonpool)"
    )
    database.add_argument("--no-database", action="store_true", help="no failure database")
    args = parser.parse_args(argv)
    # Like ``python -m moonpool``: the current directory's packages are importable
    # targets when the ``moonpool`` console script runs too.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())

    try:
        builder = load_builder(args.target)
    except UsageError as exc:
        print(f"moonpool: {exc}", file=sys.stderr)
        return 2
    command = f"python -m moonpool run {shlex.quote(args.target)}"
    builder.set_replay_hint(
        lambda seed: f"{command} --seed {seed}",
        lambda seed, plan: f"{command} --seed {seed} --fault-plan {shlex.quote(plan)}",
    )
    path, _, attr = args.target.partition(":")
    builder.set_name(f"{os.path.abspath(path)}:{attr or 'simulation'}")
    builder.set_target(args.target)
    try:
        workers = _workers(args.workers)
    except UsageError as exc:
        print(f"moonpool: {exc}", file=sys.stderr)
        return 2
    try:
        _explain_options(builder, args)
    except UsageError as exc:
        print(f"moonpool: {exc}", file=sys.stderr)
        return 2
    if args.seed:
        builder.set_seeds(args.seed)
    if args.iterations is not None:
        if args.iterations < 1:
            print("moonpool: --iterations must be >= 1", file=sys.stderr)
            return 2
        builder.override_iterations(args.iterations)
    if args.fail_fast:
        builder.set_fail_fast()
    if args.base_seed is not None:
        builder.set_base_seed(args.base_seed)
    progress = Progress(enabled=not args.quiet, total=builder.planned_iterations)
    builder.set_progress(progress)
    try:
        on_dask = args.dask is not None
        report = _run_on_dask(builder, args.dask) if on_dask else builder.run(workers=workers)
    except SimulationInterrupted as interrupted:
        report = interrupted.report  # what ran before Ctrl-C, then exit like Ctrl-C
    except (TargetError, WorkerSetupError, EnvironmentSettingError, ImportError, OSError) as exc:
        progress.finish()
        print(f"moonpool: {exc}", file=sys.stderr)
        return 2
    progress.finish()
    if args.html:
        try:
            Path(args.html).write_text(report.to_html(), encoding="utf-8")
        except OSError as exc:
            print(f"moonpool: cannot write the HTML report: {exc}", file=sys.stderr)
            return 2
    try:
        if args.timeline and not args.json:
            _print_timelines(report, args, builder)
        print(report.to_json() if args.json else report, flush=True)
    except BrokenPipeError:
        # The reader went away (``| head``): not an error of the simulation.  Point
        # stdout at /dev/null so that the interpreter's final flush stays quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


def _workers(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return worker_count(text)
    except ValueError:
        raise UsageError(f"--workers takes a number >= 1 or 'auto', got {text!r}") from None


def _run_on_dask(builder: SimulationBuilder, address: str) -> SimulationReport:
    try:
        import distributed
    except ImportError:
        raise ImportError("--dask needs Dask distributed: pip install 'moonpool[dask]'") from None
    with distributed.Client(address, timeout=30) as client:  # type: ignore[no-untyped-call]
        return builder.run(executor=client)


def _explain_options(builder: SimulationBuilder, args: argparse.Namespace) -> None:
    if args.timeline or args.timeline_host or args.timeline_kind:
        args.timeline = True
        # With --seed (or --json, which prints every seed's), every timeline is kept;
        # otherwise only the one printed, by replaying its seed afterwards: a seed
        # replays exactly, and thousands of whole timelines would fill the memory.
        if args.seed or args.json:
            builder.record_timeline()
    if args.shrink:
        if not args.shrink_time > 0:
            raise UsageError("--shrink-time must be > 0 seconds")
        builder.set_shrink(time_limit=args.shrink_time)
    if args.fault_plan is not None:
        try:
            builder.set_fault_plan(_read_plan(args.fault_plan))
        except ValueError as exc:
            raise UsageError(f"--fault-plan: {exc}") from None
    if args.check_determinism:
        builder.set_check_determinism()
    if args.strict_determinism:
        builder.set_strict_determinism()
    if args.no_database:
        builder.set_database(None)
    elif args.database is not None:
        builder.set_database(args.database)


def _read_plan(text: str) -> str:
    """A plan given inline, or ``@FILE``: a --json report (its shrunk plan) or the plan."""
    if not text.startswith("@"):
        return text
    try:
        content = Path(text[1:]).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {text[1:]}: {exc}") from None
    try:
        document = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content.strip()
    if isinstance(document, dict):
        shrunk = document.get("shrunk", document)
        if isinstance(shrunk, dict) and isinstance(shrunk.get("plan"), str):
            return str(shrunk["plan"])
    raise ValueError(f"{text[1:]} holds no fault plan (expected a --shrink --json report)")


def _print_timelines(
    report: SimulationReport, args: argparse.Namespace, builder: SimulationBuilder
) -> None:
    """The timeline of each seed asked for, else of the first failing seed (else the first)."""
    if args.seed:
        runs = [run for run in report.runs if run.seed in set(args.seed)]
    else:
        failing = {failure.seed for failure in report.failures}
        runs = [run for run in report.runs if run.seed in failing][:1] or list(report.runs[:1])
        if runs:  # replayed, now with its timeline
            builder.set_seeds([runs[0].seed]).set_database(None).set_shrink(False)
            runs = list(builder.record_timeline().set_progress(lambda *_: None).run().runs)
    for run in runs:
        shown = format_timeline(run.timeline, hosts=args.timeline_host, kinds=args.timeline_kind)
        filters = ", ".join(
            [f"host {h}" for h in args.timeline_host] + [f"kind {k}" for k in args.timeline_kind]
        )
        print(
            f"timeline of seed {run.seed} ({'passed' if run.ok else 'FAILED'}; "
            f"{len(run.timeline)} events{'; only ' + filters if filters else ''}):"
        )
        if not shown:
            hosts = sorted({event.host for event in run.timeline if event.host})
            shown = f"  (no event matches; its hosts: {', '.join(hosts)})"
        print(shown)
        print()


if __name__ == "__main__":
    sys.exit(main())

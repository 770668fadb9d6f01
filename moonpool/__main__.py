"""Command line: ``python -m moonpool run PATH.py[:ATTR] [--seed N] [--iterations N] [--json]``.

``ATTR`` (default ``simulation``) names a ``SimulationBuilder`` or a zero-argument
function returning one.  The report goes to stdout (text, or JSON with
``--json``), a progress line to stderr; the exit status is 1 when the simulation
failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from moonpool.sim import FailureRecord, RunRecord, SimulationBuilder, SimulationInterrupted

__all__ = ["load_builder", "main"]


class UsageError(Exception):
    pass


def load_builder(target: str) -> SimulationBuilder:
    """Import ``PATH.py[:ATTR]`` and return the builder it defines."""
    path_text, _, attr = target.partition(":")
    attr = attr or "simulation"
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"no such file: {path_text}")
    module_name = f"_moonpool_cli_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path_text} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"{path_text} has no attribute {attr!r}") from None
    if callable(obj) and not isinstance(obj, SimulationBuilder):
        obj = obj()
    if not isinstance(obj, SimulationBuilder):
        raise UsageError(
            f"{path_text}:{attr} is {type(obj).__name__}, expected a SimulationBuilder "
            f"or a function returning one"
        )
    return obj


class _Progress:
    """A single self-overwriting progress line on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.interactive = sys.stderr.isatty()
        self.done = 0
        self.failed = 0

    def __call__(self, record: RunRecord, failure: FailureRecord | None) -> None:
        self.done += 1
        self.failed += failure is not None
        if not self.enabled:
            return
        line = (
            f"[{self.done}] seed {record.seed} {'ok' if record.ok else 'FAILED'}; "
            f"{self.done - self.failed} passed, {self.failed} failed"
        )
        if self.interactive:
            print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
        elif failure is not None or self.done % 100 == 0:
            # In logs, one line per hundred seeds (and per failure) instead of a flood.
            print(line, file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled and self.interactive and self.done:
            print(file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moonpool", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a simulation and print its report")
    run.add_argument("target", help="PATH.py[:ATTR], ATTR defaults to 'simulation'")
    run.add_argument("--seed", type=int, action="append", help="replay this seed (repeatable)")
    run.add_argument("--iterations", type=int, help="number of seeds to run")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failing seed")
    run.add_argument("--base-seed", type=int, help="derive the seeds from this (reruns a batch)")
    args = parser.parse_args(argv)

    try:
        builder = load_builder(args.target)
    except UsageError as exc:
        print(f"moonpool: {exc}", file=sys.stderr)
        return 2
    command = f"python -m moonpool run {shlex.quote(args.target)}"
    builder.set_replay_hint(lambda seed: f"{command} --seed {seed}")
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
    progress = _Progress(enabled=not args.quiet)
    builder.set_progress(progress)
    try:
        report = builder.run()
    except SimulationInterrupted as interrupted:
        report = interrupted.report  # what ran before Ctrl-C, then exit like Ctrl-C
    progress.finish()
    print(report.to_json() if args.json else report)
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

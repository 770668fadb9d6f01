"""Round trips of this checkout against another revision: did a change slow moonpool down?

``python -m benchmarks.versions REV`` (or ``nox -s bench_versions -- REV``) runs the
moonpool side of every ``real_tcp`` scenario in two child processes -- one importing
``moonpool`` from ``git archive REV``, one from this checkout -- alternating
between them ``--rounds`` times, each child pinned to the same CPU.  It prints each
version's median req/s over the rounds, its min-max, and the change.

Why not the ``real_tcp`` ratios: each of those divides by a raw baseline measured
in the same run, which keeps a figure honest on a noisy machine but makes two runs'
ratios hard to compare (on 2 shared cores the baseline itself moved by 15-30 %
between runs).  Here both versions do the same work through the same benchmark code
(this checkout's), only the library differs, and alternating the two spreads the
machine's mood over both.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

import anyio

ROOT: Final = Path(__file__).resolve().parent.parent
SAMPLES: Final = 9  # per child and scenario, after one warm-up sample
#: The chaos simulation of the example, each version running *its own*
#: examples/ping_pong.py (the work differs where fault decisions changed).
SIM_LABEL: Final = "sim ping_pong.py (seeds/s)"
SIM_SEEDS: Final = 12
ENV_TREE: Final = "MOONPOOL_BENCH_TREE"


def _child(labels: list[str]) -> None:
    """Measure the named scenarios with whichever ``moonpool`` is on the path."""
    from benchmarks import real_tcp

    real_tcp.steady_heap()
    wanted = [s for s in real_tcp.SCENARIOS if s.label in labels]

    async def measure(backend: str) -> dict[str, float]:
        medians: dict[str, float] = {}
        for server in ("serve", "async for"):
            scenarios = [s for s in wanted if s.backend == backend and s.server == server]
            if not scenarios:
                continue
            async with real_tcp.moonpool(server) as client:
                for scenario in scenarios:
                    sample = real_tcp._sample(client, scenario, scenario.requests)
                    await sample()
                    values = []
                    for _ in range(SAMPLES):
                        gc.collect(0)
                        values.append(await sample())
                    medians[scenario.label] = statistics.median(values)
        return medians

    result: dict[str, float] = {}
    if wanted:
        result |= anyio.run(measure, "trio", backend="trio")
        result |= anyio.run(measure, "asyncio", backend="asyncio")
    if SIM_LABEL in labels:
        result[SIM_LABEL] = _simulation_rate(Path(os.environ.get(ENV_TREE) or ROOT))
    print(json.dumps(result))


def _simulation_rate(tree: Path) -> float:
    """Median seeds/s of ``tree``'s ping-pong example simulation, fixed base seed."""
    import time

    from benchmarks.sim_ping_pong import BASE_SEED, load_example
    from moonpool.sim import FixedCount

    example = load_example(tree / "examples" / "ping_pong.py")
    values = []
    for index in range(SAMPLES + 1):
        builder = example.simulation().set_iteration_control(FixedCount(SIM_SEEDS))
        if hasattr(builder, "set_database"):
            builder.set_database(None)  # older versions have no database
        builder.set_base_seed(BASE_SEED)
        gc.collect()
        started = time.perf_counter()
        builder.run()
        if index:  # the first is a warm-up
            values.append(SIM_SEEDS / (time.perf_counter() - started))
    return statistics.median(values)


def _run_child(tree: Path | None, labels: list[str], cpu: int) -> dict[str, float]:
    # The benchmark code is always this checkout's; only moonpool comes from ``tree``.
    path = [str(tree)] if tree is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
    env[ENV_TREE] = str(tree or ROOT)
    command = [sys.executable, "-m", "benchmarks.versions", "--child", *labels]
    done = subprocess.run(
        command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.versions", description=__doc__)
    parser.add_argument("rev", nargs="?", help="the revision to compare with (git rev)")
    parser.add_argument("--rounds", type=int, default=6, help="alternations (default 6)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="only scenarios whose label contains TEXT (repeatable)",
    )
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.child)
        return 0
    if not args.rev:
        parser.error("name the revision to compare with")
    from benchmarks import real_tcp

    labels = [
        label
        for label in [*(s.label for s in real_tcp.SCENARIOS), SIM_LABEL]
        if not args.only or any(t in label for t in args.only)
    ]
    cpu = max(os.sched_getaffinity(0))
    runs: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
    with tempfile.TemporaryDirectory(prefix="moonpool-base-") as tmp:
        archive = subprocess.run(
            ["git", "archive", args.rev, "moonpool", "examples"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        for round_ in range(args.rounds):
            # Alternate which version goes first, like the suite's interleaved rounds.
            order = [("base", Path(tmp)), ("this", None)]
            for name, tree in order if round_ % 2 == 0 else order[::-1]:
                for label, value in _run_child(tree, labels, cpu).items():
                    runs[name].setdefault(label, []).append(value)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(
        f"moonpool req/s (seeds/s for the simulation), {args.rev} vs this checkout: "
        f"median [min-max] of {args.rounds} rounds (each the median of {SAMPLES} samples), "
        f"pinned to CPU {cpu}"
    )
    for label in labels:
        base, this = runs["base"][label], runs["this"][label]
        change = statistics.median(this) / statistics.median(base) - 1
        print(
            f"  {label:48s} {statistics.median(base):9.0f} [{min(base):.0f}-{max(base):.0f}]"
            f"  {statistics.median(this):9.0f} [{min(this):.0f}-{max(this):.0f}]  {change:+.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

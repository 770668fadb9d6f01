"""Seeds in parallel: ``run(workers=2)`` and ``run(executor=dask_client)`` vs one process.

The example chaos simulation (``examples/ping_pong.py:simulation``, loaded from
its target exactly as a worker re-creates it) runs the same ``FixedCount``
seeds from a fixed base seed three ways, interleaved round by round (the order
reversing every round):

* in this process (``workers=1``): the baseline;
* ``run(workers=2)``: each ``run()`` spawns its own pool, so the figure
  includes the workers' start-up (what a user gets); the start-up is also
  reported on its own;
* ``run(executor=client)`` on a 2-worker ``distributed.LocalCluster``
  (processes, one thread each, 127.0.0.1).  The cluster's start-up and its
  first run (its workers import the target and build the simulation) are
  reported, not timed.  A cluster is started for each round and closed before
  the next: ``LocalCluster`` runs its scheduler in this process, and while it
  is up an in-process run here is about a fifth slower, which would flatter every
  ratio over the baseline.

Then the cost of shipping a seed: a trivial simulation (a workload doing
``await trio.sleep(0)`` -- one checkpoint -- no chaos), many seeds, the same
three ways in the same rounds.  Its seeds cost about a millisecond each, so
what the parallel runs lose to messages, pickling and scheduling shows up as
extra core time per seed.

Every run must give the same seeds, in the same order, with the same trace
hashes, or the benchmark fails: different seeds would make the ratios
meaningless.  Nothing is pinned (the workers need every core), so other load
on the machine shows up in the per-round ratios, whose min-max the notes give.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio
import trio.lowlevel

from benchmarks._core import BenchmarkError, Figure, Outcome, Settings, median
from moonpool.sim import (
    ChaosConfig,
    FixedCount,
    SimulationBuilder,
    SimulationReport,
    WorkloadContext,
)
from moonpool.sim._target import load_target

NAME: Final = "workers"
DESCRIPTION: Final = "run(workers=2) and a 2-worker Dask LocalCluster vs one process (seeds/s)"
#: The workers need every core: this benchmark runs with the process's original
#: CPU affinity (the runner pins every other benchmark to one CPU).
PINNED: Final = False

EXAMPLE: Final = Path(__file__).resolve().parent.parent / "examples" / "ping_pong.py"
PING_PONG: Final = f"{EXAMPLE}:simulation"
TRIVIAL: Final = "benchmarks.workers:trivial_simulation"
BASE_SEED: Final = 424242
WORKERS: Final = 2


async def tick(ctx: WorkloadContext) -> None:
    """The trivial simulation's only workload: one checkpoint (``trio.sleep(0)``)."""
    await trio.lowlevel.checkpoint()


def trivial_simulation() -> SimulationBuilder:
    """A seed that costs next to nothing: what is left is the cost of running one."""
    return SimulationBuilder().set_chaos(ChaosConfig.none()).register_workload("tick", tick)


# -- one run, and what it tells about its batches -----------------------------------


@dataclass(slots=True)
class Run:
    """One ``builder.run(...)``: the report, its wall time, and the seed source's state."""

    report: SimulationReport
    wall: float
    #: CPU seconds this (the parent) process spent in ``run()``.
    parent_cpu: float = 0.0
    #: When each outcome arrived, in seconds from the start of ``run()``; the first
    #: is the start-up (for a pool: spawning the workers, importing the target, a seed).
    arrivals: list[float] = field(default_factory=list)
    #: The batch size the source ended with, the per-seed time it learned it from,
    #: and how many batches (pool messages, Dask tasks) it sent.
    batch_size: int | None = None
    learned_seed_time: float | None = None
    batches: int | None = None

    @property
    def seeds(self) -> int:
        return len(self.report.runs)

    @property
    def first(self) -> float | None:
        return self.arrivals[0] if self.arrivals else None

    @property
    def tail(self) -> float | None:
        """Seconds from the last outcome until ``run()`` returned (stopping the pool)."""
        return self.wall - self.arrivals[-1] if self.arrivals else None

    def steady(self) -> float | None:
        """Seeds/s over the middle half of the run: the rate once every worker is
        up and before the last batches run out (where a long run tends).

        Outcomes of one Dask task arrive together, so the window runs from the
        arrival of one burst to that of a later one, counting the seeds that
        arrived after the first: ``None`` when the middle half holds fewer than
        two bursts."""
        times = self.arrivals
        if len(times) < 4:
            return None
        # Bursts: outcomes that arrived within a millisecond of the previous one.
        ends = [
            i for i in range(len(times)) if i + 1 == len(times) or times[i + 1] - times[i] > 1e-3
        ]
        window = [i for i in ends if len(times) // 4 <= i + 1 <= (3 * len(times)) // 4]
        if len(window) < 2 or times[window[-1]] <= times[window[0]]:
            return None
        return (window[-1] - window[0]) / (times[window[-1]] - times[window[0]])


class _Probe:
    """Wraps the seed source a builder picks (private API: read only, best effort).

    It notes when the first outcome arrives, and after the run the source's
    batch size (``_batch_size``), the per-seed time a pool learned it from
    (``_seed_time``) and the number of batches sent (a pool's ``_batches``;
    Dask tasks are counted by wrapping ``_submit``).
    """

    def __init__(self, builder: SimulationBuilder) -> None:
        self.source: Any = None
        self.started = 0.0
        self.arrivals: list[float] = []
        self.submitted = 0
        original = builder._seed_source

        def seed_source(workers: Any, executor: Any) -> Any:
            self.source = original(workers, executor)
            submit = getattr(self.source, "_submit", None)
            if submit is not None:

                def counted(*args: Any) -> Any:
                    self.submitted += 1
                    return submit(*args)

                self.source._submit = counted
            return self

        builder._seed_source = seed_source  # type: ignore[method-assign]

    def outcomes(
        self, seeds: Iterator[int], limit: int | None, ctrl_c: Any
    ) -> AbstractContextManager[Iterator[Any]]:
        @contextmanager
        def timed() -> Iterator[Iterator[Any]]:
            self.started = time.perf_counter()
            with self.source.outcomes(seeds, limit, ctrl_c) as outcomes:

                def noting() -> Iterator[Any]:
                    for item in outcomes:
                        self.arrivals.append(time.perf_counter() - self.started)
                        yield item

                yield noting()

        return timed()

    def fill(self, run: Run) -> Run:
        run.arrivals = self.arrivals
        source = self.source
        run.batch_size = getattr(source, "_batch_size", None)
        run.learned_seed_time = getattr(source, "_seed_time", None)
        batches = getattr(source, "_batches", None)
        run.batches = batches if isinstance(batches, int) else (self.submitted or None)
        return run


def _builder(target: str, seeds: int) -> SimulationBuilder:
    builder = load_target(target).set_target(target).set_database(None)
    builder.set_iteration_control(FixedCount(seeds)).set_base_seed(BASE_SEED)
    return builder


def run_once(target: str, seeds: int, **how: Any) -> Run:
    """``seeds`` seeds of ``target`` with ``run(**how)``, timed around ``run()``."""
    builder = _builder(target, seeds)
    probe = _Probe(builder)
    gc.collect(1)
    cpu = time.process_time()
    started = time.perf_counter()
    report = builder.run(**how)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    if len(report.runs) != seeds:
        raise BenchmarkError(
            f"{target}: asked for {seeds} seeds, the report has {len(report.runs)}"
        )
    return probe.fill(Run(report, wall, cpu))


def _fingerprint(report: SimulationReport) -> list[tuple[int, str, bool]]:
    return [(r.seed, r.trace_hash, r.ok) for r in report.runs]


def _same_seeds(runs: Sequence[Run], what: str) -> list[tuple[int, str, bool]]:
    """Every run ran the same seeds to the same trace hashes (or the benchmark fails)."""
    expected = _fingerprint(runs[0].report)
    for run in runs[1:]:
        got = _fingerprint(run.report)
        if got != expected:
            differ = [(a, b) for a, b in zip(expected, got, strict=False) if a != b][:3]
            raise BenchmarkError(
                f"{what}: runs gave different seeds or trace hashes "
                f"({len(expected)} vs {len(got)} seeds; first differences {differ})"
            )
    return expected


# -- interleaving -------------------------------------------------------------------

Sample = dict[str, Run]
Side = Callable[[], Sample]


class _Skipped(Exception):
    """A side that could not run (the Dask path failed): leave it out."""


def interleave(
    sides: dict[str, Side], rounds: int, warmup: Sequence[Callable[[], object]] = ()
) -> dict[str, list[Sample]]:
    """``rounds`` rounds of every side, the order reversing each round (ABBA...).

    ``warmup`` runs once first, unrecorded: shorter runs than the recorded ones
    (a full warm-up round would add a third to the benchmark's time for
    nothing: each sample lasts seconds).  A side that raises :class:`_Skipped`
    is dropped, samples and all (its ratios would have nothing to pair with).
    """
    for warm in warmup:
        warm()
    gc.collect()
    kept: dict[str, list[Sample]] = {name: [] for name in sides}
    order = list(sides)
    for index in range(rounds):
        for name in order if index % 2 == 0 else order[::-1]:
            if name not in kept:
                continue
            try:
                kept[name].append(sides[name]())
            except _Skipped:
                del kept[name]
    return kept


def _take(samples: dict[str, list[Sample]], what: str) -> dict[str, list[Run]]:
    return {side: [sample[what] for sample in runs] for side, runs in samples.items()}


def _rates(runs: Sequence[Run]) -> list[float]:
    return [run.seeds / run.wall for run in runs]


def _span(values: Sequence[float], fmt: str = ".2f") -> str:
    if not values:
        return "-"
    return f"{median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def _ratios(candidate: Sequence[float], baseline: Sequence[float]) -> list[float]:
    return [c / b for c, b in zip(candidate, baseline, strict=True)]


def _batch_text(run: Run) -> str:
    parts = [f"batch size {run.batch_size}"]
    if run.learned_seed_time is not None:
        parts.append(f"learned from a first outcome after {run.learned_seed_time * 1e3:.0f} ms")
    if run.batches is not None:
        parts.append(f"{run.batches} batches for {run.seeds} seeds")
    return ", ".join(parts)


# -- the Dask cluster -----------------------------------------------------------------


@dataclass(slots=True)
class Cluster:
    client: Any = None
    cluster: Any = None
    start_up: float = 0.0

    def close(self) -> None:
        with suppress(Exception):
            if self.client is not None:
                self.client.close()
        with suppress(Exception):
            if self.cluster is not None:
                self.cluster.close()


@contextmanager
def local_cluster() -> Iterator[Cluster]:
    """A 2-worker ``LocalCluster`` and its ``Client``; ``start_up``: how long they took."""
    import distributed

    handle = Cluster()
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # "Port 8787 is already in use": another cluster on the machine (a test
            # suite); the scheduler's HTTP server moves to another port, harmlessly.
            warnings.filterwarnings("ignore", "Port .* is already in use", UserWarning)
            handle.cluster = distributed.LocalCluster(
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )  # type: ignore[no-untyped-call]
        handle.client = distributed.Client(handle.cluster)  # type: ignore[no-untyped-call]
        handle.client.wait_for_workers(WORKERS, timeout=60)
        handle.start_up = time.perf_counter() - started
        yield handle
    finally:
        handle.close()


def _error(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) < 300 else text[:300] + "..."


# -- the benchmark ------------------------------------------------------------------


@dataclass(slots=True)
class _DaskRounds:
    """What each round's fresh cluster cost before its timed runs."""

    start_up: list[float] = field(default_factory=list)
    first: list[Run] = field(default_factory=list)
    error: str | None = None


def run(settings: Settings) -> Outcome:
    ping_seeds = settings.count(300, minimum=6)
    trivial_seeds = settings.count(2000, minimum=40)
    warm_ping = settings.count(20, minimum=WORKERS)
    warm_trivial = settings.count(100, minimum=10)
    # Every round spawns worker pools and a Dask cluster (seconds each): --quick,
    # a smoke test, does one round.
    rounds = 1 if settings.quick else settings.repeats
    dask = _DaskRounds()
    try:
        import distributed  # noqa: F401
    except ImportError:
        dask.error = (
            "distributed is not installed (pip install 'moonpool[dask]'; nox -s bench "
            "installs it only if its session installs '.[dask]')"
        )

    def local() -> Sample:
        return {
            "ping": run_once(PING_PONG, ping_seeds, workers=1),
            "trivial": run_once(TRIVIAL, trivial_seeds, workers=1),
        }

    def pool() -> Sample:
        return {
            "ping": run_once(PING_PONG, ping_seeds, workers=WORKERS),
            "trivial": run_once(TRIVIAL, trivial_seeds, workers=WORKERS),
        }

    def on_dask() -> Sample:
        if dask.error is not None:
            raise _Skipped
        try:
            with local_cluster() as cluster:
                dask.start_up.append(cluster.start_up)
                # The fresh cluster's first run: its workers import the target and
                # build the simulation (cached per worker after that).  Not timed.
                dask.first.append(run_once(PING_PONG, warm_ping, executor=cluster.client))
                run_once(TRIVIAL, warm_trivial, executor=cluster.client)
                return {
                    "ping": run_once(PING_PONG, ping_seeds, executor=cluster.client),
                    "trivial": run_once(TRIVIAL, trivial_seeds, executor=cluster.client),
                }
        except BenchmarkError:
            raise
        except Exception as exc:
            dask.error = _error(exc)
            raise _Skipped from exc

    warmup = [
        lambda: run_once(PING_PONG, warm_ping, workers=1),
        lambda: run_once(PING_PONG, warm_ping, workers=WORKERS),
        lambda: run_once(TRIVIAL, warm_trivial, workers=1),
    ]
    samples = interleave(
        {"local": local, "pool": pool, "dask": on_dask},
        rounds,
        warmup if settings.warmup else (),
    )
    ping, trivial = _take(samples, "ping"), _take(samples, "trivial")
    fingerprint = _same_seeds([r for runs in ping.values() for r in runs], "ping_pong")
    _same_seeds([r for runs in trivial.values() for r in runs], "trivial simulation")

    # Start-up alone: two seeds, one per worker.
    start = interleave(
        {
            "local": lambda: {"ping": run_once(PING_PONG, WORKERS, workers=1)},
            "pool": lambda: {"ping": run_once(PING_PONG, WORKERS, workers=WORKERS)},
        },
        rounds,
    )
    start_runs = _take(start, "ping")
    _same_seeds([r for runs in start_runs.values() for r in runs], "start-up runs")

    figures: list[Figure] = []
    notes: list[str] = []
    if dask.error is not None:
        notes.append(f"ERROR: run(executor=Dask client) failed, no Dask figures: {dask.error}")

    # -- ping_pong: seeds/s ------------------------------------------------------------
    failed = sum(not ok for _, _, ok in fingerprint)
    local_rates = _rates(ping["local"])
    local_seed_time = 1 / median(local_rates)
    details: dict[str, Any] = {
        "seeds": ping_seeds,
        "base_seed": BASE_SEED,
        "failed_seeds": failed,
        "workers": WORKERS,
        "rounds": rounds,
        "trace_hashes_identical": True,
    }
    notes.append(
        f"ping_pong: {ping_seeds} seeds from base seed {BASE_SEED} ({failed} failing), "
        f"{rounds} interleaved rounds, every run the same seeds and trace hashes; "
        f"workers=1: {_span(local_rates, '.1f')} seeds/s, "
        f"{median([r.wall for r in ping['local']]):.1f}s per run"
    )
    for side, label, target in (
        ("pool", f"run(workers={WORKERS})", 1.8),
        ("dask", f"{WORKERS}-worker Dask LocalCluster", 1.6),
    ):
        if side not in ping:
            continue
        runs = ping[side]
        rates = _rates(runs)
        ratios = _ratios(rates, local_rates)
        steady = [s for s in (r.steady() for r in runs) if s is not None]
        firsts = [r.first for r in runs if r.first is not None]
        tails = [r.tail for r in runs if r.tail is not None]
        figures.append(
            Figure(
                f"ping_pong seeds/s, {label} vs workers=1",
                "seeds/s",
                rates,
                local_rates,
                "workers=1 (this process)",
                target=target,
                details={
                    **details,
                    "per_round_ratio": ratios,
                    "first_outcome_s": firsts,
                    "last_outcome_to_return_s": tails,
                    "steady_seeds_per_s": steady,
                    "batch_size": [r.batch_size for r in runs],
                    "batches": [r.batches for r in runs],
                },
            )
        )
        text = (
            f"{label} / workers=1, per round: {_span(ratios, '.3f')} (median [min-max]); "
            f"{_span(rates, '.1f')} seeds/s; first outcome after {_span(firsts, '.3f')}s, "
            f"last outcome to return {_span(tails, '.3f')}s"
        )
        if steady:
            text += (
                f"; over the middle half of the run {_span(steady, '.1f')} seeds/s = "
                f"{median(steady) * local_seed_time:.3f}x workers=1 (where a long run tends)"
            )
        notes.append(text)
    if "pool" in ping:
        notes.append(
            f"pool batches (ping_pong): {_batch_text(ping['pool'][-1])}; the pool aims at "
            f"{_constant('_workers', 'BATCH_SECONDS')}s of work per batch (at most "
            f"{_constant('_workers', 'MAX_BATCH')} seeds): "
            f"{_aimed('_workers', local_seed_time)} seeds at the measured "
            f"{1e3 * local_seed_time:.1f} ms per seed"
        )
    if "dask" in ping:
        notes.append(
            f"Dask batches (ping_pong): {_batch_text(ping['dask'][-1])}; the Dask path aims "
            f"at {_constant('_dask', 'BATCH_SECONDS')}s per task (at most "
            f"{_constant('_dask', 'MAX_BATCH')} seeds): {_aimed('_dask', local_seed_time)} "
            f"seeds at the measured per-seed time"
        )
    if dask.start_up and dask.first:
        first_walls = [r.wall for r in dask.first]
        first_outcomes = [r.first for r in dask.first if r.first is not None]
        notes.append(
            f"Dask start-up, per round (not timed): LocalCluster + Client + {WORKERS} workers "
            f"{_span(dask.start_up)}s; then its first run ({warm_ping} seeds, the workers "
            f"import the target) {_span(first_walls)}s, first outcome after "
            f"{_span(first_outcomes)}s"
        )

    # -- the trivial simulation: what shipping a seed costs -----------------------------
    local_per_seed = [r.wall / r.seeds for r in trivial["local"]]
    base = _rates(trivial["local"])
    notes.append(
        f"trivial simulation ({trivial_seeds} seeds, a workload doing 'await trio.sleep(0)', "
        f"no chaos): workers=1 {_span([1e6 * s for s in local_per_seed], '.0f')} us per seed"
    )
    for side, label in (("pool", f"run(workers={WORKERS})"), ("dask", "Dask")):
        if side not in trivial:
            continue
        runs = trivial[side]
        rates = _rates(runs)
        # Core time lost per seed: WORKERS cores busy for each seed of the middle
        # half of the run (every worker up, the batches not yet running out),
        # against one core per seed in-process.
        overhead = [
            1e6 * (WORKERS / steady - one)
            for steady, one in zip((r.steady() for r in runs), local_per_seed, strict=True)
            if steady is not None
        ]
        sizes = [r.batch_size for r in runs if r.batch_size]
        per_batch = [o * size for o, size in zip(overhead, sizes, strict=False)]
        parent = [1e6 * r.parent_cpu / r.seeds for r in runs]
        figures.append(
            Figure(
                f"trivial seeds/s, {label} vs workers=1",
                "seeds/s",
                rates,
                base,
                "workers=1 (this process)",
                details={
                    "seeds": trivial_seeds,
                    "per_round_ratio": _ratios(rates, base),
                    "overhead_us_per_seed": overhead,
                    "overhead_us_per_batch": per_batch,
                    "parent_cpu_us_per_seed": parent,
                    "steady_seeds_per_s": [r.steady() for r in runs],
                    "first_outcome_s": [r.first for r in runs],
                    "batch_size": [r.batch_size for r in runs],
                    "batches": [r.batches for r in runs],
                },
            )
        )
        text = (
            f"{label}, trivial: {_span(rates, '.0f')} seeds/s "
            f"({_span(_ratios(rates, base), '.2f')}x workers=1, start-up included)"
        )
        if overhead:
            text += (
                f"; overhead {_span(overhead, '.0f')} us of core time per seed ({WORKERS} x "
                f"wall per seed over the middle half of the run - wall per seed "
                f"in-process)"
            )
        if per_batch:
            text += f" = {_span([p / 1e3 for p in per_batch], '.2f')} ms per batch"
        text += f"; the parent's CPU {_span(parent, '.0f')} us per seed"
        notes.append(f"{text}; {_batch_text(runs[-1])}")
    notes.append(
        f"(for the trivial seed the constants give batches of "
        f"{_aimed('_workers', median(local_per_seed))} seeds in the pool, "
        f"{_aimed('_dask', median(local_per_seed))} on Dask)"
    )

    # -- start-up ------------------------------------------------------------------------
    pool_walls = [r.wall for r in start_runs["pool"]]
    local_walls = [r.wall for r in start_runs["local"]]
    figures.append(
        Figure(
            f"run(workers={WORKERS}) of {WORKERS} ping_pong seeds (start-up)",
            "s",
            pool_walls,
            local_walls,
            f"{WORKERS} seeds in this process",
            higher_is_better=False,
            details={"per_round_ratio": _ratios(pool_walls, local_walls)},
        )
    )
    pool_firsts = [r.first for r in start_runs["pool"] if r.first is not None]
    pool_tails = [r.tail for r in start_runs["pool"] if r.tail is not None]
    notes.append(
        f"start-up: run(workers={WORKERS}) of {WORKERS} seeds (one per worker) takes "
        f"{_span(pool_walls, '.3f')}s against {_span(local_walls, '.3f')}s in-process, "
        f"about {median(pool_walls) - median(local_walls) / WORKERS:.2f}s more: first "
        f"outcome after {_span(pool_firsts, '.3f')}s (spawning the workers, importing "
        f"moonpool and the target, building the simulation, one seed), last outcome to "
        f"return {_span(pool_tails, '.3f')}s (stopping the workers)"
    )
    return Outcome(figures=figures, notes=notes)


def _constant(module: str, name: str) -> str:
    import importlib

    value = getattr(importlib.import_module(f"moonpool.sim.{module}"), name, None)
    return "?" if value is None else f"{value:g}"


def _aimed(module: str, seed_time: float) -> str:
    import importlib

    mod = importlib.import_module(f"moonpool.sim.{module}")
    seconds, most = getattr(mod, "BATCH_SECONDS", None), getattr(mod, "MAX_BATCH", None)
    if seconds is None or most is None or seed_time <= 0:
        return "?"
    return str(max(1, min(int(most), int(seconds / seed_time))))

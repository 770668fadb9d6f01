"""``SimulationBuilder``: describe a simulation, then run it over many seeds."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Self, final

import msgspec

from moonpool.net._chaos import ChaosConfig
from moonpool.sim._interrupt import ctrl_c_handled
from moonpool.sim._iteration import (
    IterationConfig,
    IterationResult,
    NetworkFactory,
    run_iteration,
)
from moonpool.sim._report import (
    AssertionSummary,
    FailureRecord,
    RunRecord,
    SimulationInterrupted,
    SimulationReport,
)
from moonpool.sim._state import AssertionRecord
from moonpool.sim._workload import Workload, WorkloadSpec

__all__ = [
    "FixedCount",
    "IterationControl",
    "SimulationBuilder",
    "TimeLimit",
    "UntilAllSometimesReached",
]


@final
@dataclass(frozen=True)
class FixedCount:
    """Run exactly ``count`` seeds."""

    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"FixedCount needs at least 1 iteration, got {self.count}")


@final
@dataclass(frozen=True)
class TimeLimit:
    """Run seeds until ``seconds`` of wall-clock time have passed (at least one seed)."""

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError(f"TimeLimit needs a positive number of seconds, got {self.seconds}")


@final
@dataclass(frozen=True)
class UntilAllSometimesReached:
    """Run until every ``sometimes``/``reachable`` site seen so far has been satisfied.

    At most ``limit`` seeds; sites still unsatisfied then are reported as MISS.
    """

    limit: int

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"UntilAllSometimesReached needs a limit >= 1, got {self.limit}")


IterationControl = FixedCount | TimeLimit | UntilAllSometimesReached

#: Environment variables read by the builder, so that CI and the CLI can steer
#: simulations that tests construct themselves.
ENV_SEED = "MOONPOOL_SEED"
ENV_ITERATIONS = "MOONPOOL_ITERATIONS"


#: How failure reports say to replay a seed when the builder was not told; the
#: pytest plugin points it at the running test, the CLI at its own command line.
replay_template: str = "SimulationBuilder().set_seeds([{seed}])"


def _default_replay(seed: int) -> str:
    return replay_template.format(seed=seed)


class SimulationBuilder:
    """Collects workloads and settings; :meth:`run` executes one ``trio.run`` per seed.

    Chaos is on by default (``ChaosConfig.default()``): a simulation that passes
    only on a perfect network has not been tested.  Pass ``ChaosConfig.none()``
    explicitly for the rare test that is about something else.
    """

    def __init__(self) -> None:
        self._workloads: list[WorkloadSpec] = []
        self._control: IterationControl = FixedCount(1)
        self._seeds: list[int] | None = None
        self._base_seed: int | None = None
        self._buggify = False
        self._chaos = ChaosConfig.default()
        self._shutdown_grace = 60.0
        self._sim_time_budget = 3600.0
        self._wall_time_budget = 60.0
        self._progress: Callable[[RunRecord, FailureRecord | None], None] | None = None
        self._replay: Callable[[int], str] = _default_replay
        self._network_factory: NetworkFactory | None = None

    # -- configuration ------------------------------------------------------------

    def register_workload(self, name: str, fn: Workload, *, count: int = 1) -> Self:
        """Add a workload; with ``count > 1`` the instances are ``name-0``, ``name-1``, …"""
        if not name or ":" in name or "/" in name:
            raise ValueError(f"workload name {name!r} must be non-empty, without ':' or '/'")
        if count < 1:
            raise ValueError(f"workload {name!r}: count must be >= 1, got {count}")
        if not callable(fn):
            raise TypeError(f"workload {name!r}: expected an async function, got {fn!r}")
        names = [name] if count == 1 else [f"{name}-{i}" for i in range(count)]
        taken = {spec.name for spec in self._workloads}
        for instance in names:
            if instance in taken:
                raise ValueError(f"a workload named {instance!r} is already registered")
            self._workloads.append(WorkloadSpec(instance, fn))
        return self

    def set_iteration_control(self, control: IterationControl) -> Self:
        if not isinstance(control, FixedCount | TimeLimit | UntilAllSometimesReached):
            raise TypeError(
                f"expected FixedCount, TimeLimit or UntilAllSometimesReached, got {control!r}"
            )
        self._control = control
        return self

    def set_seeds(self, seeds: Sequence[int]) -> Self:
        """Run exactly these seeds (replaying failures); overrides the iteration control."""
        seeds = list(seeds)
        if not seeds:
            raise ValueError("set_seeds needs at least one seed")
        for seed in seeds:
            if not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seeds are non-negative integers, got {seed!r}")
        self._seeds = seeds
        return self

    def set_base_seed(self, seed: int) -> Self:
        """Derive the sequence of iteration seeds from ``seed`` (default: fresh entropy)."""
        self._base_seed = seed
        return self

    def enable_buggify(self, enabled: bool = True) -> Self:
        self._buggify = enabled
        return self

    def set_chaos(self, chaos: ChaosConfig) -> Self:
        if not isinstance(chaos, ChaosConfig):
            raise TypeError(f"expected a ChaosConfig, got {chaos!r}")
        self._chaos = chaos
        return self

    def set_shutdown_grace(self, seconds: float) -> Self:
        """Simulated seconds a workload has to return once ``ctx.shutdown`` is set."""
        if seconds <= 0:
            raise ValueError(f"shutdown grace must be positive, got {seconds}")
        self._shutdown_grace = seconds
        return self

    def set_time_budget(self, sim_seconds: float) -> Self:
        """Simulated seconds one iteration may last before it fails (default one hour)."""
        if sim_seconds <= 0:
            raise ValueError(f"time budget must be positive, got {sim_seconds}")
        self._sim_time_budget = sim_seconds
        return self

    def set_wall_time_budget(self, seconds: float) -> Self:
        """Real seconds one iteration may take before it fails (default 60)."""
        if seconds <= 0:
            raise ValueError(f"wall time budget must be positive, got {seconds}")
        self._wall_time_budget = seconds
        return self

    def set_progress(self, callback: Callable[[RunRecord, FailureRecord | None], None]) -> Self:
        """Call ``callback`` after each seed (the CLI prints a progress line with it)."""
        self._progress = callback
        return self

    def set_replay_hint(self, hint: Callable[[int], str]) -> Self:
        """How failure reports tell the user to replay a seed."""
        self._replay = hint
        return self

    def set_network_factory(self, factory: NetworkFactory) -> Self:
        """Replace the per-iteration network (advanced; default: a ``SimNetwork``)."""
        self._network_factory = factory
        return self

    # -- running --------------------------------------------------------------------

    def override_iterations(self, count: int) -> Self:
        """Change the iteration count, keeping the kind of iteration control."""
        if isinstance(self._control, UntilAllSometimesReached):
            return self.set_iteration_control(UntilAllSometimesReached(count))
        return self.set_iteration_control(FixedCount(count))

    def _apply_environment(self) -> None:
        seed = os.environ.get(ENV_SEED)
        if seed and self._seeds is None:
            self.set_seeds([int(part) for part in seed.split(",")])
        iterations = os.environ.get(ENV_ITERATIONS)
        if iterations and self._seeds is None:
            self.override_iterations(int(iterations))

    def _seed_stream(self) -> Iterator[int]:
        if self._seeds is not None:
            yield from self._seeds
            return
        base = self._base_seed
        if base is None:
            base = int.from_bytes(os.urandom(8), "little")
        generator = random.Random(base)
        while True:
            yield generator.getrandbits(32)

    def run(self) -> SimulationReport:
        """Run the simulation synchronously (each seed is its own ``trio.run``).

        Ctrl-C stops the run once the current seed has finished and raises
        :class:`SimulationInterrupted` (a ``KeyboardInterrupt``) carrying the report
        of the seeds that ran; a second Ctrl-C cancels the current seed, which is
        left out of the report (a third raises ``KeyboardInterrupt`` at once).
        """
        if not self._workloads:
            raise ValueError("no workloads registered: call register_workload() before run()")
        self._apply_environment()
        started = time.perf_counter()
        runs: list[RunRecord] = []
        failures: list[FailureRecord] = []
        assertions: dict[tuple[str, str], AssertionRecord] = {}
        fault_totals: dict[str, int] = {}
        control = self._control

        def report(*, interrupted: bool = False) -> SimulationReport:
            return SimulationReport(
                runs=runs,
                failures=failures,
                assertions=[
                    AssertionSummary(r.kind, r.message, r.hits, r.true_count, r.false_count)
                    for r in assertions.values()
                ],
                fault_totals=dict(sorted(fault_totals.items())),
                wall_time=time.perf_counter() - started,
                chaos=_chaos_summary(self._chaos),
                buggify=self._buggify,
                coverage_required=self._seeds is None,
                interrupted=interrupted,
            )

        with ctrl_c_handled() as ctrl_c:
            for seed in self._seed_stream():
                chaos_rng = random.Random(f"moonpool/{seed}/chaos-config")
                config = IterationConfig(
                    workloads=tuple(self._workloads),
                    chaos=self._chaos.for_seed(chaos_rng),
                    buggify=self._buggify,
                    shutdown_grace=self._shutdown_grace,
                    sim_time_budget=self._sim_time_budget,
                    wall_time_budget=self._wall_time_budget,
                    network_factory=self._network_factory,
                )
                try:
                    result = run_iteration(seed, config, self._replay, ctrl_c)
                except KeyboardInterrupt as exc:  # Ctrl-C cut the seed short
                    raise SimulationInterrupted(report(interrupted=True)) from exc
                runs.append(result.record)
                if result.failure is not None:
                    failures.append(result.failure)
                _merge(assertions, fault_totals, result)
                if self._progress is not None:
                    self._progress(result.record, result.failure)
                if ctrl_c.stop_requested:
                    raise SimulationInterrupted(report(interrupted=True))
                if self._seeds is not None:
                    continue
                if _should_stop(control, len(runs), started, assertions):
                    break
        return report()


def _chaos_summary(chaos: ChaosConfig) -> dict[str, object]:
    summary: dict[str, object] = msgspec.to_builtins(chaos)
    return summary


def _merge(
    assertions: dict[tuple[str, str], AssertionRecord],
    fault_totals: dict[str, int],
    result: IterationResult,
) -> None:
    for key, record in result.run.assertions.items():
        total = assertions.get(key)
        if total is None:
            total = assertions[key] = AssertionRecord(record.kind, record.message)
        total.hits += record.hits
        total.true_count += record.true_count
        total.false_count += record.false_count
    for family, count in result.record.faults.items():
        fault_totals[family] = fault_totals.get(family, 0) + count


def _should_stop(
    control: IterationControl,
    done: int,
    started: float,
    assertions: dict[tuple[str, str], AssertionRecord],
) -> bool:
    if isinstance(control, FixedCount):
        return done >= control.count
    if isinstance(control, TimeLimit):
        return time.perf_counter() - started >= control.seconds
    if done >= control.limit:
        return True
    liveness = [r for r in assertions.values() if r.kind in ("sometimes", "reachable")]
    return bool(liveness) and all(r.true_count > 0 for r in liveness)

"""``SimulationBuilder``: describe a simulation, then run it over many seeds."""

from __future__ import annotations

import dataclasses
import inspect
import os
import random
import re
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, final

import msgspec

from moonpool._ground._fault_plan import InjectedFault, format_fault_plan, parse_fault_plan
from moonpool._ground._run import AssertionRecord
from moonpool._ground._timeline import TAIL
from moonpool.net._chaos import ChaosConfig
from moonpool.sim._attrition import Attrition
from moonpool.sim._database import DEFAULT_DIRECTORY, FailureDatabase
from moonpool.sim._declared_sites import declared_sites
from moonpool.sim._guards import NondeterminismWarning
from moonpool.sim._interrupt import CtrlC, ctrl_c_handled
from moonpool.sim._iteration import (
    IterationConfig,
    IterationResult,
    NetworkFactory,
    SeedOutcome,
    run_iteration,
)
from moonpool.sim._report import (
    AssertionSummary,
    FailureRecord,
    RunRecord,
    SimulationInterrupted,
    SimulationReport,
)
from moonpool.sim._shrink import ShrinkError, ShrunkPlan, shrink_faults
from moonpool.sim._target import TargetError, absolute_target
from moonpool.sim._timeline_diff import first_divergence
from moonpool.sim._workers import (
    LocalSeeds,
    Outcomes,
    SeedSource,
    WorkerJob,
    WorkerPool,
    worker_count,
)
from moonpool.sim._workload import Process, ProcessSpec, Workload, WorkloadFunction, WorkloadSpec
from moonpool.storage._chaos import StorageChaosConfig

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
"""How many seeds a simulation runs: ``set_iteration_control`` takes one of these."""

#: Environment variables read by the builder, so that CI and the CLI can steer
#: simulations that tests construct themselves.
ENV_SEED = "MOONPOOL_SEED"
ENV_ITERATIONS = "MOONPOOL_ITERATIONS"
ENV_FAULT_PLAN = "MOONPOOL_FAULT_PLAN"
#: A directory for the failure database, or ``off``.
ENV_DATABASE = "MOONPOOL_DATABASE"
#: Set: keep every seed's whole timeline.  A number: shrink within that many seconds.
ENV_TIMELINE = "MOONPOOL_TIMELINE"
ENV_SHRINK = "MOONPOOL_SHRINK"
#: How many worker processes ``run()`` uses when not told (a number, or ``auto``).
ENV_WORKERS = "MOONPOOL_WORKERS"

#: The builder's data settings: what a worker applies to the simulation it
#: re-creates from the target (code -- processes, workloads -- comes from there).
_SETTINGS = (
    "_attrition",
    "_settle_time",
    "_buggify",
    "_chaos",
    "_storage_chaos",
    "_shutdown_grace",
    "_sim_time_budget",
    "_wall_time_budget",
    "_record_timeline",
    "_fault_plan",
    "_check_determinism",
    "_strict_determinism",
)


#: How failure reports say to replay a seed when the builder was not told; the
#: pytest plugin points it at the running test, the CLI at its own command line.
replay_template: str = "SimulationBuilder().set_seeds([{seed}])"
#: How to replay a seed with a fault plan (``{plan}`` shell-quoted, ``{plan_repr}``
#: as a Python string).
plan_replay_template: str = "SimulationBuilder().set_seeds([{seed}]).set_fault_plan({plan_repr})"
#: The failure database's key when the builder has no name (the pytest plugin
#: sets it to the running test's node id).
default_name: str | None = None

#: Called with every report ``run()`` returns (the pytest plugin's ``-v`` line).
report_listeners: list[Callable[[SimulationReport], None]] = []

#: How many wall-clock seconds ``--shrink`` searches by default.
SHRINK_TIME_LIMIT = 60.0


def _default_replay(seed: int) -> str:
    return replay_template.format(seed=seed)


def _default_plan_replay(seed: int, plan: str) -> str:
    return plan_replay_template.format(seed=seed, plan=shlex.quote(plan), plan_repr=repr(plan))


class SimulationBuilder:
    """Collects processes, workloads and settings; :meth:`run` runs one ``trio.run`` per seed.

    Chaos is on by default (``ChaosConfig.default()``): a simulation that passes
    only on a perfect network has not been tested.  Pass ``ChaosConfig.none()``
    explicitly for the rare test that is about something else.  Attrition is
    off until :meth:`set_attrition`.
    """

    def __init__(self) -> None:
        self._processes: list[ProcessSpec] = []
        self._workloads: list[WorkloadSpec] = []
        self._attrition: Attrition | None = None
        self._settle_time = 5.0
        self._control: IterationControl = FixedCount(1)
        self._seeds: list[int] | None = None
        self._base_seed: int | None = None
        self._buggify = False
        self._chaos = ChaosConfig.default()
        self._storage_chaos = StorageChaosConfig.default()
        self._shutdown_grace = 60.0
        self._sim_time_budget = 3600.0
        self._wall_time_budget = 60.0
        self._progress: Callable[[RunRecord, FailureRecord | None], None] | None = None
        self._fail_fast = False
        self._replay: Callable[[int], str] = _default_replay
        self._plan_replay: Callable[[int, str], str] = _default_plan_replay
        self._network_factory: NetworkFactory | None = None
        self._record_timeline = False
        self._fault_plan: frozenset[str] | None = None
        self._name: str | None = None
        self._database: str | os.PathLike[str] | None = DEFAULT_DIRECTORY
        self._database_chosen = False
        self._shrink_limit: float | None = None
        self._check_determinism = False
        self._strict_determinism = False
        self._target: str | None = None

    # -- configuration ------------------------------------------------------------

    def register_process(self, name: str, fn: Process, *, count: int = 1) -> Self:
        """Add a process (the system under test): ``async def fn(ctx: ProcessContext)``.

        It runs from the start of the seed until it is told to shut down at the
        end, or until attrition (or a workload's ``ctx.kill``) kills it; each boot
        calls ``fn`` afresh, at the same address.  With ``count > 1`` the
        instances are ``name-0``, ``name-1``, …
        """
        if not callable(fn) or _plainly_not_async(fn):
            raise TypeError(
                f"process {name!r}: expected an async function (async def fn(ctx)), got {fn!r}"
            )
        for instance in self._instance_names("process", name, count):
            self._processes.append(ProcessSpec(instance, fn))
        return self

    def register_workload(
        self, name: str, workload: WorkloadFunction | type[Workload], *, count: int = 1
    ) -> Self:
        """Add a workload (a test driver, never killed).

        ``workload`` is an ``async def fn(ctx: WorkloadContext)`` -- a run phase
        only -- or a class (a zero-argument factory: one instance per workload and
        seed) with ``async run(self, ctx)`` and optional ``async setup(self, ctx)``
        and ``async check(self, ctx)``.  With ``count > 1`` the instances are
        ``name-0``, ``name-1``, …
        """
        specs = [
            WorkloadSpec.of(instance, workload)
            for instance in self._instance_names("workload", name, count)
        ]
        self._workloads.extend(specs)
        return self

    def _instance_names(self, role: str, name: str, count: int) -> list[str]:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"{role} name {name!r} must be letters, digits, '_', '.' or '-' (it becomes "
                f"a host name: {role} addresses are NAME:{4500})"
            )
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"{role} {name!r}: count must be an integer >= 1, got {count!r}")
        names = [name] if count == 1 else [f"{name}-{i}" for i in range(count)]
        taken = {spec.name for spec in self._processes} | {spec.name for spec in self._workloads}
        for instance in names:
            if instance in taken:
                raise ValueError(f"a process or workload named {instance!r} is already registered")
        return names

    def set_attrition(self, attrition: Attrition | None) -> Self:
        """Kill and reboot processes during the run phase (None: no attrition)."""
        if attrition is not None and not isinstance(attrition, Attrition):
            raise TypeError(f"expected an Attrition or None, got {attrition!r}")
        self._attrition = attrition
        return self

    def set_settle_time(self, seconds: float) -> Self:
        """Simulated seconds between the end of chaos and the checks (default 5)."""
        if isinstance(seconds, bool) or not 0 <= seconds < float("inf"):
            raise ValueError(f"settle time must be finite and >= 0, got {seconds!r}")
        self._settle_time = seconds
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

    def set_storage_chaos(self, chaos: StorageChaosConfig) -> Self:
        """The processes' disks' faults while the run is on (default
        ``StorageChaosConfig.default()``; crashes lose unsynced writes whatever it says)."""
        if not isinstance(chaos, StorageChaosConfig):
            raise TypeError(f"expected a StorageChaosConfig, got {chaos!r}")
        self._storage_chaos = chaos
        return self

    def set_shutdown_grace(self, seconds: float) -> Self:
        """Simulated seconds a process has to return once its ``ctx.shutdown`` is set.

        It applies at the end of the simulation and to every graceful reboot
        (after which a process still running is killed).  Default 60.
        """
        self._shutdown_grace = _positive_seconds("shutdown grace", seconds)
        return self

    def set_time_budget(self, sim_seconds: float) -> Self:
        """Simulated seconds one iteration may last before it fails (default one hour)."""
        self._sim_time_budget = _positive_seconds("time budget", sim_seconds)
        return self

    def set_wall_time_budget(self, seconds: float) -> Self:
        """Real seconds one iteration may take before it fails (default 60)."""
        self._wall_time_budget = _positive_seconds("wall time budget", seconds)
        return self

    def set_fail_fast(self, enabled: bool = True) -> Self:
        """Stop at the first failing seed (the CLI's ``--fail-fast``)."""
        self._fail_fast = bool(enabled)
        return self

    def set_progress(self, callback: Callable[[RunRecord, FailureRecord | None], None]) -> Self:
        """Call ``callback`` after each seed (the CLI prints a progress line with it)."""
        self._progress = callback
        return self

    def set_replay_hint(
        self, hint: Callable[[int], str], plan_hint: Callable[[int, str], str] | None = None
    ) -> Self:
        """How failure reports tell the user to replay a seed (and a seed with a fault plan)."""
        self._replay = hint
        if plan_hint is not None:
            self._plan_replay = plan_hint
        return self

    # -- explaining a failure -------------------------------------------------------

    def record_timeline(self, enabled: bool = True) -> Self:
        """Keep each seed's whole timeline on its :class:`RunRecord` (CLI ``--timeline``).

        Every seed keeps the tail of its timeline for a failure anyway; the whole
        of it is for replaying one seed (it costs memory per event).
        """
        self._record_timeline = bool(enabled)
        return self

    def set_fault_plan(self, plan: str | Iterable[str] | None) -> Self:
        """Allow only these faults (names as ``--shrink`` prints them; None: every fault).

        With :meth:`set_seeds`, this replays a shrunk failure exactly: the same
        seed, every fault outside the plan drawn and then suppressed.
        """
        if plan is None:
            self._fault_plan = None
        elif isinstance(plan, str):
            self._fault_plan = parse_fault_plan(plan)
        else:
            self._fault_plan = parse_fault_plan(",".join(plan))
        return self

    def set_shrink(self, enabled: bool = True, *, time_limit: float = SHRINK_TIME_LIMIT) -> Self:
        """After the run, shrink the first failing seed's faults (:meth:`shrink`) into
        ``report.shrunk`` (CLI ``--shrink``)."""
        self._shrink_limit = _positive_seconds("shrink time limit", time_limit) if enabled else None
        return self

    def set_check_determinism(self, enabled: bool = True) -> Self:
        """Run every seed twice and fail it when the two runs differ (``--check-determinism``).

        The failure names the first event where the two timelines part.
        """
        self._check_determinism = bool(enabled)
        return self

    def set_strict_determinism(self, enabled: bool = True) -> Self:
        """Fail a seed whose code reads the real clock, the global ``random``, the OS's
        entropy or opens a real socket (by default such calls are reported and run)."""
        self._strict_determinism = bool(enabled)
        return self

    def set_name(self, name: str) -> Self:
        """Name this simulation: the failure database keeps its failing seeds under it.

        Default: the running test's node id under pytest, the target under the CLI,
        else the qualified names of the registered processes and workloads -- which
        two builders registering the same functions (a buggy and a fixed variant
        made by one factory, say) share: name them.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a simulation's name is a non-empty string, got {name!r}")
        self._name = name
        return self

    def set_database(self, directory: str | os.PathLike[str] | None) -> Self:
        """Where failing seeds are saved and replayed first (None: no database).

        Default ``.moonpool/`` under the current directory.  The environment
        variable ``MOONPOOL_DATABASE`` (pytest ``--moonpool-database``) moves the
        default, or turns every database ``off``.
        """
        self._database = directory
        self._database_chosen = True
        return self

    @property
    def name(self) -> str:
        """The failure database's key for this simulation (see :meth:`set_name`)."""
        if self._name is not None:
            return self._name
        if default_name is not None:
            return default_name
        parts = [_qualified(spec.fn) for spec in self._processes]
        parts += [_qualified(spec.factory or spec.fn) for spec in self._workloads]
        return " ".join(parts) or "simulation"

    def _plan_text(self) -> str:
        assert self._fault_plan is not None
        return format_fault_plan(sorted(self._fault_plan))

    def _replay_hint(self, seed: int) -> str:
        """How to replay ``seed`` as this run ran it (with its fault plan, if any)."""
        if self._fault_plan is None:
            return self._replay(seed)
        return self._plan_replay(seed, self._plan_text())

    def _failure_database(self) -> FailureDatabase | None:
        setting = os.environ.get(ENV_DATABASE)
        directory: str | os.PathLike[str] | None = self._database
        if setting == "off":
            directory = None
        elif setting and not self._database_chosen:  # an explicit choice stands
            directory = setting
        if directory is None or self._fault_plan is not None:
            return None  # a plan's replay is not the seed's verdict
        return FailureDatabase(Path(directory))

    def shrink(self, seed: int, *, time_limit: float = SHRINK_TIME_LIMIT) -> ShrunkPlan:
        """A small set of ``seed``'s faults that still makes it fail the same way.

        Replays the seed with faults suppressed (delta debugging over the names of
        the faults it injected, whole families first) until removing any one more
        fault makes it pass, or ``time_limit`` wall seconds have passed.  "The same
        way": the same kind of failure, at the same assertion site or raised from
        the same line with the same exception type.  Raises :class:`ShrinkError`
        when the seed passes, or fails differently when replayed (the program is not
        deterministic).
        """
        return self._shrink(seed, time_limit, None)

    def _shrink(self, seed: int, time_limit: float, ctrl_c: CtrlC | None) -> ShrunkPlan:
        _positive_seconds("shrink time limit", time_limit)
        self._apply_environment()
        started = time.perf_counter()
        config = self._iteration_config(seed)
        original = run_iteration(seed, config, self._replay, ctrl_c)
        if original.failure is None:
            raise ShrinkError(f"seed {seed} passes: there is no failure to shrink")
        signature = _signature(original)
        interrupted: list[bool] = []

        def fails(plan: frozenset[str]) -> bool:
            try:
                replay = run_iteration(
                    seed, dataclasses.replace(config, fault_plan=plan), self._replay, ctrl_c
                )
            except KeyboardInterrupt:  # a second Ctrl-C cancelled this replay
                interrupted.append(True)
                return False
            return replay.failure is not None and _signature(replay) == signature

        def stop() -> bool:
            return bool(interrupted) or (ctrl_c is not None and ctrl_c.stop_requested)

        kept, replays, minimal = shrink_faults(
            original.run.fault_log, fails, time_limit=time_limit, stop=stop
        )
        plan = frozenset(fault.id for fault in kept)
        faults: tuple[InjectedFault, ...] = tuple(kept)  # as they came in the original
        failure = original.failure.error
        if not stop():
            # Once more, to report the kept faults as they happen under the plan alone.
            again = dataclasses.replace(config, fault_plan=plan, record_timeline=True)
            final = run_iteration(seed, again, self._replay)
            if final.failure is None or _signature(final) != signature:
                raise ShrinkError(
                    f"seed {seed} with fault plan {format_fault_plan(sorted(plan))!r} failed "
                    f"while shrinking, but not on this replay: the simulation is not "
                    f"deterministic (try --check-determinism)"
                )
            faults, failure = tuple(final.record.injected), final.failure.error
            replays += 1
        text = format_fault_plan(fault.id for fault in faults)
        return ShrunkPlan(
            seed=seed,
            faults=faults,
            original_faults=len(original.run.fault_log),
            failure=failure,
            replays=replays + 1,
            wall_time=time.perf_counter() - started,
            minimal=minimal and not stop(),
            replay=self._plan_replay(seed, text),
        )

    @property
    def planned_iterations(self) -> int | None:
        """How many seeds :meth:`run` will run, when that is known in advance.

        The seeds given (``set_seeds``), or a ``FixedCount``'s count; None for
        ``TimeLimit`` and ``UntilAllSometimesReached`` (they stop when they stop).
        """
        if self._seeds is not None:
            return len(self._seeds)
        if isinstance(self._control, FixedCount):
            return self._control.count
        return None

    def set_target(self, target: str) -> Self:
        """Name the code that builds this simulation, for worker processes.

        ``target`` is ``path/to/file.py:function`` or ``package.module:function``
        (the CLI's form; the function returns this builder, unconfigured or
        configured -- this builder's settings are sent to the workers anyway).
        ``run(workers=N)`` and ``run(executor=...)`` re-create the simulation in
        each worker by calling it: processes and workloads are code, and code
        does not travel between processes.  The CLI sets it.
        """
        self._target = absolute_target(target)
        return self

    def set_network_factory(self, factory: NetworkFactory) -> Self:
        """Replace the per-iteration network (advanced; default: a ``SimNetwork``)."""
        self._network_factory = factory
        return self

    # -- running --------------------------------------------------------------------

    def override_iterations(self, count: int) -> Self:
        """Run exactly ``count`` seeds (CLI ``--iterations``, pytest
        ``--moonpool-iterations``), whatever the iteration control: asking for 1000
        seeds of a simulation that uses ``UntilAllSometimesReached`` used to stop
        it as soon as every site was reached -- after 5 seeds, say."""
        return self.set_iteration_control(FixedCount(count))

    def _apply_environment(self) -> None:
        seed = os.environ.get(ENV_SEED)
        if seed and self._seeds is None:
            self.set_seeds(_from_environment(ENV_SEED, seed, _seed_list, "seeds such as 12,34"))
        iterations = os.environ.get(ENV_ITERATIONS)
        if iterations and self._seeds is None:
            self.override_iterations(
                _from_environment(ENV_ITERATIONS, iterations, int, "a count such as 100")
            )
        plan = os.environ.get(ENV_FAULT_PLAN)
        if plan and self._fault_plan is None:
            self.set_fault_plan(plan)
        if os.environ.get(ENV_TIMELINE):
            self.record_timeline()
        shrink = os.environ.get(ENV_SHRINK)
        if shrink and self._shrink_limit is None:
            limit = _from_environment(ENV_SHRINK, shrink, float, "seconds such as 60")
            self.set_shrink(time_limit=limit)

    def _seed_stream(self, base: int, saved: Sequence[int] = ()) -> Iterator[int]:
        if self._seeds is not None:
            yield from self._seeds
            return
        yield from saved  # the failure database's seeds first, like hypothesis' examples
        generator = random.Random(base)
        while True:
            seed = generator.getrandbits(32)
            if seed not in saved:
                yield seed

    def run(
        self, *, workers: int | Literal["auto"] | None = None, executor: Any = None
    ) -> SimulationReport:
        """Run the simulation synchronously (each seed is its own ``trio.run``).

        ``workers=N`` (or ``"auto"``: one per CPU) runs the seeds in a pool of N
        worker processes, ``executor=`` a ``distributed.Client`` on a Dask
        cluster; both re-create the simulation in each worker from its target
        (:meth:`set_target`; the CLI sets it) with this builder's settings.  A
        seed's results are the same wherever it ran; the report lists the seeds
        in the order a single process would have run them.  The default (None)
        is ``MOONPOOL_WORKERS`` if set (CLI ``--workers``, pytest
        ``--moonpool-workers``), else one: this process.

        Ctrl-C stops the run once the current seed has finished (with workers: at
        once, dropping the seeds in flight) and raises
        :class:`SimulationInterrupted` (a ``KeyboardInterrupt``) carrying the report
        of the seeds that ran; a second Ctrl-C cancels the current seed, which is
        left out of the report (a third raises ``KeyboardInterrupt`` at once).
        """
        if not self._workloads:
            what = (
                f"{len(self._processes)} process(es) but no workload"
                if self._processes
                else ("no workloads")
            )
            raise ValueError(
                f"{what} registered: a simulation needs a workload to drive it and to end its "
                f"run phase -- call register_workload() before run()"
            )
        self._apply_environment()
        started = time.perf_counter()
        runs: list[RunRecord] = []
        failures: list[FailureRecord] = []
        # Coverage sites of the registered code are known (as MISS) before any seed
        # reaches them: a site no seed reaches must not vanish from the report.
        assertions: dict[tuple[str, str], AssertionRecord] = {
            site: AssertionRecord(*site) for site in self._declared_sites()
        }
        fault_totals: dict[str, int] = {}
        observed_totals: dict[str, int] = {}
        kills = {spec.name: 0 for spec in self._processes}
        control = self._control
        stopped = ""  # why the run stopped (read by report() when it is called)
        # Chosen here so that the report can name it: the same base reruns the batch.
        base = self._base_seed
        if base is None:
            base = int.from_bytes(os.urandom(8), "little")
        database = self._failure_database()
        key = self.name
        saved: list[int] = []
        if database is not None and self._seeds is None and self._base_seed is None:
            saved = database.seeds(key)  # not for a batch asked for by its base seed
        known_failing = set(saved)
        nondeterministic: dict[str, None] = {}
        shrunk: ShrunkPlan | None = None
        shrink_note = ""
        planned: set[str] = set()  # the fault plan's entries that came up
        plan_text = None if self._fault_plan is None else self._plan_text()

        order: list[int] = []  # the seed-stream position of each of runs

        def report(*, interrupted: bool = False) -> SimulationReport:
            if order != sorted(order):  # workers finish out of order: put them back
                position = dict(zip(map(id, runs), order, strict=True))
                runs.sort(key=lambda record: position[id(record)])
                seen = {record.seed: i for i, record in enumerate(runs)}
                failures.sort(key=lambda failure: seen[failure.seed])
                order.sort()
            return SimulationReport(
                runs=runs,
                failures=failures,
                assertions=[
                    AssertionSummary(r.kind, r.message, r.hits, r.true_count, r.false_count)
                    for r in assertions.values()
                ],
                fault_totals=dict(sorted(fault_totals.items())),
                wall_time=time.perf_counter() - started,
                chaos=_chaos_summary(self._chaos, self._storage_chaos),
                buggify=self._buggify,
                coverage_required=self._seeds is None,
                interrupted=interrupted,
                kills=dict(kills) if self._attrition is not None and kills else None,
                observed_totals=dict(sorted(observed_totals.items())),
                stopped_because="interrupted (Ctrl-C)" if interrupted else stopped,
                base_seed=None if self._seeds is not None else base,
                database_seeds=tuple(saved[: len(runs)]),
                database=None if database is None else str(database.path_for(key)),
                nondeterministic=tuple(nondeterministic),
                shrunk=shrunk,
                shrink_note=shrink_note,
                fault_plan_unused=tuple(sorted((self._fault_plan or frozenset()) - planned)),
                fault_plan=plan_text,
            )

        seeds = self._seed_stream(base, saved)
        limit = len(self._seeds) if self._seeds is not None else None
        if isinstance(control, FixedCount) and limit is None:
            limit = control.count
        source = self._seed_source(workers, executor)
        local = source if isinstance(source, LocalSeeds) else None
        with ctrl_c_handled() as ctrl_c, source.outcomes(seeds, limit, ctrl_c) as outcomes:
            for index, result in _interruptible(outcomes, report):
                seed = result.record.seed
                order.append(index)
                if result.failure is not None and source is not local:
                    # A worker's builder came from the target: the replay command is ours.
                    failure = dataclasses.replace(result.failure, replay=self._replay_hint(seed))
                    result = dataclasses.replace(result, failure=failure)
                if database is not None:
                    failed = result.failure is not None
                    if failed or seed in known_failing:
                        error = result.failure.error if result.failure is not None else ""
                        database.record(key, seed, failed=failed, error=error)
                    if failed:
                        known_failing.add(seed)
                if self._fault_plan is not None:
                    planned.update(result.fault_ids)
                for line in result.record.nondeterministic:
                    if line not in nondeterministic:
                        nondeterministic[line] = None
                        warnings.warn(line, NondeterminismWarning, stacklevel=2)
                runs.append(result.record)
                if result.failure is not None:
                    failures.append(result.failure)
                _merge(assertions, fault_totals, result)
                for name, count in result.record.observed.items():
                    observed_totals[name] = observed_totals.get(name, 0) + count
                for name, count in result.kills.items():
                    kills[name] += count
                if self._progress is not None:
                    self._progress(result.record, result.failure)
                if ctrl_c.stop_requested:
                    raise SimulationInterrupted(report(interrupted=True))
                if self._fail_fast and result.failure is not None:
                    stopped = f"fail-fast: seed {seed} failed"
                    break
                if self._seeds is not None:
                    continue
                reason = _stop_reason(control, len(runs), started, assertions)
                if reason is not None:
                    stopped = reason
                    break
            else:
                stopped = f"ran the {len(runs)} seed(s) given"
            if self._shrink_limit is not None:
                shrunk, shrink_note = self._shrink_first(failures, ctrl_c)
                if ctrl_c.stop_requested:
                    raise SimulationInterrupted(report(interrupted=True))
        final = report()
        for listener in report_listeners:
            listener(final)
        return final

    def _shrink_first(
        self, failures: list[FailureRecord], ctrl_c: CtrlC
    ) -> tuple[ShrunkPlan | None, str]:
        """Shrink the first failure that can be; the plan, and a note on what happened."""
        candidates = [f for f in failures if f.kind != "nondeterminism"]
        if not candidates:
            if failures:
                return None, "nothing to shrink: the seeds failed by not being deterministic"
            return None, "nothing to shrink: no seed failed"
        seed = candidates[0].seed
        assert self._shrink_limit is not None
        try:
            plan = self._shrink(seed, self._shrink_limit, ctrl_c)
        except ShrinkError as exc:
            return None, f"cannot shrink seed {seed}: {exc}"
        except KeyboardInterrupt:  # Ctrl-C during the first replay: nothing found yet
            return None, f"shrinking seed {seed} was interrupted (Ctrl-C) before it found anything"
        if ctrl_c.stop_requested:
            return (
                plan,
                f"shrinking seed {seed} was interrupted (Ctrl-C): the plan may not be minimal",
            )
        return plan, ""

    # -- where seeds run ---------------------------------------------------------------

    def code_signature(self) -> tuple[str, ...]:
        """The registered code, by name and qualified name (what a target must build)."""
        lines = [f"process {spec.name}: {_qualified(spec.fn)}" for spec in self._processes]
        lines += [
            f"workload {spec.name}: {_qualified(spec.factory or spec.fn)}"
            for spec in self._workloads
        ]
        if self._network_factory is not None:
            lines.append(f"network factory: {_qualified(self._network_factory)}")
        return tuple(lines)

    def apply_settings(self, settings: dict[str, Any]) -> None:
        """Take over another builder's data settings (a worker's re-created simulation)."""
        for name in _SETTINGS:
            setattr(self, name, settings[name])

    def _seed_source(self, workers: int | Literal["auto"] | None, executor: Any) -> SeedSource:
        if executor is not None:
            if workers not in (None, 1):
                raise ValueError("run() takes workers= or executor=, not both")
            from moonpool.sim._dask import DaskSeeds

            return DaskSeeds(executor, self._worker_job("run(executor=...)"), self._replay_hint)
        from_environment = workers is None
        count = worker_count((os.environ.get(ENV_WORKERS) or 1) if workers is None else workers)
        if count == 1:
            return LocalSeeds(self)
        if self._target is None and from_environment:
            warnings.warn(
                f"{ENV_WORKERS}={count} ignored for {self.name}: it has no target to "
                f"re-create it in worker processes from (set_target)",
                RuntimeWarning,
                stacklevel=3,
            )
            return LocalSeeds(self)
        return WorkerPool(self._worker_job(f"run(workers={count})"), count, self._replay_hint)

    def _worker_job(self, how: str) -> WorkerJob:
        if self._target is None:
            raise TargetError(
                f"{how} re-creates the simulation in each worker process from its target, "
                f"and this builder has none: build it in a module-level function and call "
                f"set_target('path/to/file.py:function') (the CLI does), or run it here "
                f"(workers=1)"
            )
        settings = {name: getattr(self, name) for name in _SETTINGS}
        return WorkerJob(self._target, settings, self.code_signature())

    def run_seed(self, seed: int, ctrl_c: CtrlC | None = None) -> SeedOutcome:
        """One seed, here (what a worker does with each seed it is sent)."""
        config = self._iteration_config(seed)
        if self._check_determinism:
            config = dataclasses.replace(config, record_timeline=True)
        result = run_iteration(seed, config, self._replay_hint, ctrl_c)
        if self._check_determinism:
            result = self._compare_with_rerun(result, config, ctrl_c)
        return result.outcome()

    def _compare_with_rerun(
        self, first: IterationResult, config: IterationConfig, ctrl_c: CtrlC | None
    ) -> IterationResult:
        """Run ``first``'s seed again (both with timelines): a different trace hash
        fails the seed, naming the first event where the two runs part."""
        seed = first.record.seed
        second = run_iteration(seed, config, self._replay_hint, ctrl_c)
        record = first.record
        if not self._record_timeline:  # kept only to compare: drop them now
            record = dataclasses.replace(record, timeline=(), injected=())
        if second.record.trace_hash == first.record.trace_hash:
            return dataclasses.replace(first, record=record)
        message = (
            f"seed {seed} is not deterministic: run twice, it gave trace hashes "
            f"{first.record.trace_hash} and {second.record.trace_hash}"
        )
        where = first_divergence(first.record.timeline, second.record.timeline)
        calls = first.record.nondeterministic or second.record.nondeterministic
        hint = "\n".join(["Nondeterministic calls seen:", *calls]) if calls else ""
        failure = FailureRecord(
            seed=seed,
            kind="nondeterminism",
            error=message,
            traceback="\n".join(part for part in (message, where, hint) if part),
            sim_time=first.record.sim_time,
            replay=self._replay_hint(seed),
            timeline_tail=tuple(first.record.timeline[-TAIL:]),
        )
        record = dataclasses.replace(record, ok=False)
        return dataclasses.replace(first, record=record, failure=failure)

    def _declared_sites(self) -> list[tuple[str, str]]:
        code: list[object] = [spec.fn for spec in self._processes]
        code += [spec.factory or spec.fn for spec in self._workloads]
        return declared_sites(code)

    def _iteration_config(self, seed: int) -> IterationConfig:
        chaos_rng = random.Random(f"moonpool/{seed}/chaos-config")
        attrition = self._attrition
        if attrition is not None:
            attrition = attrition.for_seed(
                random.Random(f"moonpool/{seed}/attrition-config"), swarm=self._chaos.swarm
            )
        return IterationConfig(
            workloads=tuple(self._workloads),
            processes=tuple(self._processes),
            chaos=self._chaos.for_seed(chaos_rng),
            buggify=self._buggify,
            attrition=attrition,
            settle_time=self._settle_time,
            shutdown_grace=self._shutdown_grace,
            sim_time_budget=self._sim_time_budget,
            wall_time_budget=self._wall_time_budget,
            network_factory=self._network_factory,
            record_timeline=self._record_timeline,
            fault_plan=self._fault_plan,
            strict_determinism=self._strict_determinism,
            storage_chaos=self._storage_chaos,
        )


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _plainly_not_async(fn: object) -> bool:
    """A plain function or method that is not ``async def`` (other callables may
    return awaitables: partials, callable objects -- those are given the benefit)."""
    return (inspect.isfunction(fn) or inspect.ismethod(fn)) and not (
        inspect.iscoroutinefunction(fn)
    )


_Value = TypeVar("_Value")


class EnvironmentSettingError(ValueError):
    """A ``MOONPOOL_*`` environment variable the builder cannot read."""


def _seed_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _from_environment(
    variable: str, text: str, parse: Callable[[str], _Value], wanted: str
) -> _Value:
    """``parse(text)`` of an environment variable; an error naming the variable, not
    int()'s "invalid literal"."""
    try:
        return parse(text)
    except ValueError:
        message = f"{variable}={text!r} in the environment: expected {wanted}"
        raise EnvironmentSettingError(message) from None


def _qualified(fn: object) -> str:
    """Where ``fn`` is defined: its module's file (or name) and its qualified name.

    The file, not the module name: a target file is loaded under a name of its
    own (``_target.load_target``), and the same function imported as
    ``sweep.client`` and loaded from ``sweep.py`` is the same code.
    """
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    file = getattr(sys.modules.get(module), "__file__", None)
    where = str(Path(file).resolve()) if file else module
    return f"{where}:{name}"


def _signature(result: IterationResult) -> tuple[str, str]:
    """What makes two failures "the same" for shrinking: the kind, and the violated
    site -- or who raised what, from which line (not the message, which may carry
    values).  Like hypothesis, which tells failures apart by where they come from."""
    failure = result.failure
    assert failure is not None
    if failure.kind == "assertion" and result.run.assertion_failures:
        return failure.kind, result.run.assertion_failures[0]
    who, raised, what = failure.error.partition(" raised ")
    if not raised:
        return failure.kind, ""
    frames = _FRAME.findall(failure.traceback)
    where = f"{os.path.basename(frames[-1][0])}:{frames[-1][1]}" if frames else "?"
    return failure.kind, f"{who} raised {what.split(':')[0]} at {where}"


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _positive_seconds(what: str, seconds: float) -> float:
    # Written so that NaN fails too; an infinite grace or budget would never end.
    if isinstance(seconds, bool) or not 0 < seconds < float("inf"):
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {seconds!r}")
    return seconds


def _chaos_summary(chaos: ChaosConfig, storage: StorageChaosConfig) -> dict[str, object]:
    summary: dict[str, object] = msgspec.to_builtins(chaos)
    summary["storage"] = msgspec.to_builtins(storage)
    return summary


def _interruptible(
    outcomes: Outcomes, report: Callable[..., SimulationReport]
) -> Iterator[tuple[int, SeedOutcome]]:
    """``outcomes``, with a Ctrl-C turned into the report of what ran."""
    try:
        yield from outcomes
    except KeyboardInterrupt as exc:  # Ctrl-C cut a seed short (or stopped the pool)
        raise SimulationInterrupted(report(interrupted=True)) from exc


def _merge(
    assertions: dict[tuple[str, str], AssertionRecord],
    fault_totals: dict[str, int],
    result: SeedOutcome,
) -> None:
    for key, record in result.assertions.items():
        total = assertions.get(key)
        if total is None:
            total = assertions[key] = AssertionRecord(record.kind, record.message)
        total.hits += record.hits
        total.true_count += record.true_count
        total.false_count += record.false_count
    for family, count in result.record.faults.items():
        fault_totals[family] = fault_totals.get(family, 0) + count


def _stop_reason(
    control: IterationControl,
    done: int,
    started: float,
    assertions: dict[tuple[str, str], AssertionRecord],
) -> str | None:
    """Why the run stops after ``done`` seeds, or None while it goes on."""
    if isinstance(control, FixedCount):
        return f"ran {done} seed(s) (FixedCount)" if done >= control.count else None
    if isinstance(control, TimeLimit):
        if time.perf_counter() - started < control.seconds:
            return None
        return f"time limit of {control.seconds:g}s reached after {done} seed(s)"
    liveness = [r for r in assertions.values() if r.kind in ("sometimes", "reachable")]
    if liveness and all(r.true_count > 0 for r in liveness):
        return f"all {len(liveness)} sometimes/reachable sites reached after {done} seed(s)"
    if done >= control.limit:
        return f"the limit of {done} seed(s) reached (UntilAllSometimesReached)"
    return None

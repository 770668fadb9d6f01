"""The result of a simulation: per-seed runs, failures, assertion table, fault counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, final

import msgspec

import moonpool
from moonpool._ground._fault_plan import InjectedFault
from moonpool._ground._timeline import TimelineEvent
from moonpool.sim._shrink import ShrunkPlan

__all__ = [
    "AssertionSummary",
    "FailureRecord",
    "ProcessEvent",
    "RunRecord",
    "SimulationFailed",
    "SimulationReport",
]

#: The version of ``SimulationReport.to_json()``'s layout (see there).
JSON_SCHEMA_VERSION = 1
#: How many failing seeds a one-line summary names (the rest are counted).
FAILING_SEEDS_SHOWN = 20


@final
@dataclass(frozen=True)
class ProcessEvent:
    """A process was killed (``crash``, ``reboot``) or booted again (``restart``).

    ``grace_expired`` marks a graceful reboot that escalated to a crash: the
    process did not return within the grace period after ``ctx.shutdown``.
    """

    time: float
    process: str
    event: str


@final
@dataclass(frozen=True)
class RunRecord:
    """One iteration: its seed, whether it passed, and what it cost.

    ``process_events`` lists every kill and restart of the seed, in order, with
    its simulated time (attrition's and scripted ones alike).
    """

    seed: int
    ok: bool
    sim_time: float
    wall_time: float
    events: int
    trace_hash: str
    faults: Mapping[str, int] = field(default_factory=dict)
    process_events: Sequence[ProcessEvent] = ()
    #: What the program did that is worth counting (e.g. ``dead letter (reply)``).
    observed: Mapping[str, int] = field(default_factory=dict)
    #: The seed's whole timeline, when it was asked for (``record_timeline``,
    #: CLI ``--timeline``); else empty (a failure still carries its tail).
    timeline: Sequence[TimelineEvent] = ()
    #: Every fault that happened and a fault plan could suppress, in order (kept
    #: with the whole timeline only: ``injected`` of a plain run is empty).
    injected: Sequence[InjectedFault] = ()
    #: Calls from user code that the seed does not determine (``time.time()``,
    #: the global ``random``, ...), one line each: where, and what to use instead.
    nondeterministic: Sequence[str] = ()


@final
@dataclass(frozen=True)
class FailureRecord:
    """Why one seed failed, and how to replay it."""

    seed: int
    kind: str
    error: str
    traceback: str
    sim_time: float
    replay: str
    #: For a failed ``always``/``unreachable``: the values it was given, repr'd.
    details: Mapping[str, str] = field(default_factory=dict)
    #: The last events of the seed's timeline, up to and including the failure.
    timeline_tail: Sequence[TimelineEvent] = ()


@final
@dataclass(frozen=True)
class AssertionSummary:
    """One assertion site tallied over all iterations."""

    kind: str
    message: str
    hits: int
    true_count: int
    false_count: int

    @property
    def status(self) -> str:
        """PASS, FAIL (a safety property was violated) or MISS (never satisfied)."""
        if self.kind in ("always", "unreachable"):
            violated = self.false_count if self.kind == "always" else self.hits
            return "FAIL" if violated else "PASS"
        return "PASS" if self.true_count else "MISS"


class SimulationFailed(AssertionError):
    """Raised by :meth:`SimulationReport.assert_success`; its message says how to replay."""

    def __init__(self, message: str, report: SimulationReport) -> None:
        super().__init__(message)
        self.report = report


class SimulationInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :meth:`SimulationBuilder.run`; ``report`` covers the seeds that finished.

    A ``KeyboardInterrupt``, so whatever stops on Ctrl-C (pytest, a script) still
    stops; the command line prints the partial report before exiting with 130.
    """

    def __init__(self, report: SimulationReport) -> None:
        message = f"simulation interrupted after {report.iterations} seeds"
        if report.failures:  # what was found so far must not be lost with the run
            seeds = ", ".join(str(f.seed) for f in report.failures[:FAILING_SEEDS_SHOWN])
            more = len(report.failures) - FAILING_SEEDS_SHOWN
            message += f"; {len(report.failures)} failed: {seeds}"
            message += f" (and {more} more)" if more > 0 else ""
            message += f"; replay the first: {report.failures[0].replay}"
        super().__init__(message)
        self.report = report


@final
@dataclass(frozen=True)
class SimulationReport:
    runs: Sequence[RunRecord]
    failures: Sequence[FailureRecord]
    assertions: Sequence[AssertionSummary]
    fault_totals: Mapping[str, int]
    wall_time: float
    chaos: Mapping[str, Any] | None = None
    buggify: bool = False
    #: False when the seeds were given explicitly (a replay): one seed cannot be
    #: expected to satisfy every ``sometimes``, so MISS rows are shown, not failed.
    coverage_required: bool = True
    #: True when Ctrl-C stopped the run early (see :class:`SimulationInterrupted`):
    #: never ``ok``, since the seeds it was asked for did not all run.
    interrupted: bool = False
    #: Kills per process over every seed (attrition's and scripted ones), when
    #: attrition was configured (else None).
    kills: Mapping[str, int] | None = None
    #: Totals over every seed of what the program did (dead letters, ...).
    observed_totals: Mapping[str, int] = field(default_factory=dict)
    #: Why the run stopped ("fail-fast: seed 7 failed", "ran 100 seed(s) (FixedCount)", ...).
    stopped_because: str = ""
    #: Where the seeds came from (None when they were given): the same base seed
    #: (``set_base_seed``, CLI ``--base-seed``) runs the same batch again.
    base_seed: int | None = None
    #: The seeds replayed first because they failed before (the failure database),
    #: and the database file (None: no database).
    database_seeds: Sequence[int] = ()
    database: str | None = None
    #: Calls from user code that no seed determines, one line each (see RunRecord).
    nondeterministic: Sequence[str] = ()
    #: The first failure's faults, shrunk (``set_shrink``, CLI ``--shrink``).
    shrunk: ShrunkPlan | None = None
    #: The fault plan every seed ran with (``set_fault_plan``), or None: all faults.
    fault_plan: str | None = None
    #: Entries of the fault plan that no seed's dice came up with: a plan for another
    #: seed, or one the code has moved away from since it was shrunk.
    fault_plan_unused: Sequence[str] = ()
    #: Why shrinking (asked for) did not give a plan, or was cut short ("" otherwise).
    shrink_note: str = ""

    def timeline(self, seed: int) -> Sequence[TimelineEvent]:
        """The whole timeline of ``seed`` (recorded with ``record_timeline``/``--timeline``).

        Raises ``ValueError`` when the seed did not run, or ran without its timeline.
        """
        for run in self.runs:
            if run.seed == seed:
                if not run.timeline:
                    raise ValueError(
                        f"seed {seed} ran without its timeline: replay it with "
                        f"record_timeline() (CLI --timeline)"
                    )
                return run.timeline
        raise ValueError(f"seed {seed} is not one of the {self.iterations} seed(s) of this run")

    @property
    def never_killed(self) -> list[str]:
        """Processes never killed in any seed although attrition was on: their crash and
        restart paths went untested."""
        return [name for name, count in (self.kills or {}).items() if count == 0]

    @property
    def iterations(self) -> int:
        return len(self.runs)

    @property
    def ok(self) -> bool:
        missed = self.coverage_required and bool(self.missed_assertions)
        return (
            not self.failures and not missed and not self.failed_assertions and not self.interrupted
        )

    @property
    def missed_assertions(self) -> list[AssertionSummary]:
        return [a for a in self.assertions if a.status == "MISS"]

    @property
    def failed_assertions(self) -> list[AssertionSummary]:
        return [a for a in self.assertions if a.status == "FAIL"]

    @property
    def total_events(self) -> int:
        return sum(run.events for run in self.runs)

    @property
    def total_sim_time(self) -> float:
        return sum(run.sim_time for run in self.runs)

    def assert_success(self) -> None:
        """Raise :class:`SimulationFailed` unless every seed passed and no assertion missed."""
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        if self.ok:
            return
        lines: list[str] = []
        if self.interrupted:
            lines.append(f"interrupted (Ctrl-C) after {self.iterations} seeds")
        if self.failures:
            lines.append(f"{len(self.failures)} of {self.iterations} seeds failed:")
            for failure in self.failures[:10]:
                lines.append(f"  seed {failure.seed}: [{failure.kind}] {failure.error}")
                lines.append(f"    replay: {failure.replay}")
            if len(self.failures) > 10:
                lines.append(f"  ... and {len(self.failures) - 10} more")
            lines.append("")
            lines.append(f"First failure (seed {self.failures[0].seed}):")
            lines.append(self.failures[0].traceback.rstrip())
        for summary in self.failed_assertions:
            lines.append(f"assertion FAILED: {summary.kind}({summary.message!r})")
        for summary in self.missed_assertions if self.coverage_required else []:
            lines.append(
                f"assertion never satisfied in {self.iterations} iterations (MISS): "
                f"{summary.kind}({summary.message!r}) -- hit {summary.hits} times"
            )
        raise SimulationFailed("\n".join(lines), self)

    def to_html(self) -> str:
        """The report as one self-contained HTML page (CLI ``--html PATH``)."""
        from moonpool.sim._html_report import render_html

        return render_html(self)

    def to_json(self) -> str:
        """The whole report as JSON, for tools and regression tracking.

        ``schema_version`` changes when a key is removed or changes meaning (added
        keys do not change it); ``moonpool_version`` is the version that wrote it.
        """
        document = {
            "schema_version": JSON_SCHEMA_VERSION,
            "moonpool_version": moonpool.__version__,
            "ok": self.ok,
            "interrupted": self.interrupted,
            "stopped_because": self.stopped_because,
            "base_seed": self.base_seed,
            "database": self.database,
            "database_seeds": list(self.database_seeds),
            "fault_plan": self.fault_plan,
            "nondeterministic": list(self.nondeterministic),
            "shrunk": None if self.shrunk is None else self.shrunk.to_dict(),
            "shrink_note": self.shrink_note,
            "fault_plan_unused": list(self.fault_plan_unused),
            "iterations": self.iterations,
            "wall_time": self.wall_time,
            "total_events": self.total_events,
            "total_sim_time": self.total_sim_time,
            "buggify": self.buggify,
            "chaos": self.chaos,
            "fault_totals": dict(self.fault_totals),
            "observed_totals": dict(self.observed_totals),
            "kills": None if self.kills is None else dict(self.kills),
            "never_killed": self.never_killed,
            "runs": [asdict(run) for run in self.runs],
            "failures": [asdict(failure) for failure in self.failures],
            "assertions": [
                {**asdict(summary), "status": summary.status} for summary in self.assertions
            ],
        }
        return msgspec.json.encode(document).decode()

    def __str__(self) -> str:
        passed = self.iterations - len(self.failures)
        rate = self.iterations / self.wall_time if self.wall_time > 0 else 0.0
        lines = [
            "moonpool simulation report",
            f"  iterations: {self.iterations} ({passed} passed, {len(self.failures)} failed)"
            f" in {self.wall_time:.2f}s wall ({rate:.1f} seeds/s)",
            f"  simulated:  {self.total_sim_time:.2f}s sim time, {self.total_events} task steps",
            f"  buggify:    {'on' if self.buggify else 'off'}",
            f"  chaos:      {_describe_chaos(self.chaos)}",
        ]
        storage = (self.chaos or {}).get("storage")
        if storage is not None:
            lines.append(f"  storage:    {_describe_storage_chaos(storage)}")
        if self.fault_totals:
            lines.append("  faults injected:")
            for family, count in sorted(self.fault_totals.items()):
                lines.append(f"    {family:<16} {count}")
        else:
            lines.append("  faults injected: none")
        if self.observed_totals:
            lines.append("  observed:")
            for name, count in sorted(self.observed_totals.items()):
                lines.append(f"    {name:<24} {count}")
        if self.kills is not None:
            lines.append(f"  attrition:  {_describe_attrition(self.fault_totals, self.kills)}")
            if self.never_killed:
                lines.append(
                    f"    never killed in {self.iterations} seeds: {', '.join(self.never_killed)}"
                    " (their crash and restart paths went untested: run more seeds, or kill more"
                    " often)"
                )
        if self.stopped_because:
            lines.append(f"  stopped:    {self.stopped_because}")
        if self.base_seed is not None:
            again = "the same batch" if not self.database_seeds else "its new seeds"
            lines.append(
                f"  base seed:  {self.base_seed} ({again} again: --base-seed "
                f"{self.base_seed}, or set_base_seed({self.base_seed}))"
            )
        if self.database_seeds:
            lines.append(
                f"  database:   replayed {len(self.database_seeds)} seed(s) that failed before "
                f"first ({self.database})"
            )
        if self.fault_plan is not None:
            lines.append(f"  fault plan: only {_shortened(self.fault_plan)}")
            if self.fault_plan_unused:
                unused = _shortened(",".join(self.fault_plan_unused))
                lines.append(
                    f"    {len(self.fault_plan_unused)} of its entries never came up (another "
                    f"seed's plan, or the code changed): {unused}"
                )
        if self.nondeterministic:
            lines.append("  nondeterminism (calls a seed does not determine; replays may differ):")
            lines += [f"    {line}" for line in self.nondeterministic]
        if self.assertions:
            lines.append("  assertions:")
            for s in sorted(self.assertions, key=lambda a: (a.kind, a.message)):
                lines.append(
                    f"    {s.status:<4} {s.kind:<11} hits={s.hits:<6} true={s.true_count:<6} "
                    f"false={s.false_count:<6} {s.message}"
                )
        if self.failures:
            lines.append("  failures:")
            for failure in self.failures[:20]:
                lines.append(f"    seed {failure.seed} [{failure.kind}] {failure.error}")
                lines.append(f"      replay: {failure.replay}")
            if len(self.failures) > 20:
                lines.append(f"    ... and {len(self.failures) - 20} more")
            first = self.failures[0]
            lines.append(f"  first failure (seed {first.seed}):")
            lines += [f"    {line}" for line in first.traceback.rstrip().splitlines()]
        if self.shrunk is not None:
            lines += [f"  {line}" for line in str(self.shrunk).splitlines()]
        if self.shrink_note:
            lines.append(f"  shrink: {self.shrink_note}")
        if self.interrupted:
            lines.append(f"  result: INTERRUPTED (Ctrl-C) after {self.iterations} seeds")
        else:
            lines.append(f"  result: {'SUCCESS' if self.ok else 'FAILURE'}")
        return "\n".join(lines)


def _shortened(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _describe_attrition(totals: Mapping[str, int], kills: Mapping[str, int]) -> str:
    kinds = ", ".join(f"{k} {totals[k]}" for k in ("crash", "reboot", "wipe") if totals.get(k))
    killed = sum(kills.values())
    text = f"{killed} kills" + (f" ({kinds})" if kinds else "")
    return f"{text}, {totals.get('restart', 0)} restarts, over {len(kills)} process(es)"


def _describe_chaos(chaos: Mapping[str, Any] | None) -> str:
    """The chaos configuration on one line, non-default settings only, as JSON values."""
    if chaos is None:
        return "custom network"
    from moonpool.net._chaos import ChaosConfig

    changed = _changed(chaos, msgspec.to_builtins(ChaosConfig()), skip="storage")
    return changed or "none (a perfect network)"


def _describe_storage_chaos(chaos: Mapping[str, Any]) -> str:
    from moonpool.storage._chaos import StorageChaosConfig

    changed = _changed(chaos, msgspec.to_builtins(StorageChaosConfig()))
    return changed or "none (a perfect disk; crashes still lose unsynced writes)"


def _changed(config: Mapping[str, Any], defaults: Mapping[str, Any], skip: str = "") -> str:
    """The settings of ``config`` that differ from ``defaults``, as JSON values."""
    encode = msgspec.json.encode
    return " ".join(
        f"{key}={encode(value).decode()}"
        for key, value in config.items()
        if key != skip and defaults.get(key) != value
    )

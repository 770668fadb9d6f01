"""Measurement and reporting machinery shared by every benchmark module.

The one rule of this suite: a speed target is a *ratio* between moonpool and a
raw baseline doing the same work, both measured in the same run, on the same
machine, interleaved (baseline, moonpool, moonpool, baseline, ...) so that a
slow or noisy machine moves both sides alike.  Absolute timings are reported for
the record but never judged.

Every figure is the median of ``repeats`` samples taken after ``warmup``
unrecorded runs; each sample is an amount of work divided by the
``time.perf_counter`` seconds it took.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import anyio

__all__ = [
    "FULL",
    "QUICK",
    "BenchmarkError",
    "Figure",
    "Outcome",
    "Pinning",
    "Settings",
    "calibrate",
    "compare_async",
    "compare_calibrated",
    "compare_many_async",
    "compare_sync",
    "interleave_sync",
    "median",
    "pin_child",
    "pin_process",
    "pinning",
    "release",
    "repin",
    "repeat_async",
    "rate",
    "repeat_sync",
    "settle",
    "unpin",
]

Details = dict[str, Any]


class BenchmarkError(RuntimeError):
    """A benchmark could not produce a trustworthy figure (e.g. its workload failed)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How much work each benchmark does.

    ``scale`` multiplies every operation count (the full run uses 1.0); ``quick``
    is only informational (it is recorded in the JSON output).
    """

    scale: float = 1.0
    repeats: int = 5
    warmup: int = 1
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("need repeats >= 1 and warmup >= 0")

    def count(self, full: int, minimum: int = 1) -> int:
        """``full`` scaled, never below ``minimum``."""
        return max(minimum, round(full * self.scale))

    @property
    def rounds(self) -> int:
        return self.warmup + self.repeats

    def more_samples(self, factor: int) -> Settings:
        """``factor`` times as many samples: for micro-benchmarks whose samples are
        short, so that the median shrugs off a preempted one."""
        return replace(self, repeats=self.repeats * factor)


FULL: Final = Settings()
QUICK: Final = Settings(scale=0.03, repeats=2, warmup=0, quick=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass(slots=True)
class Figure:
    """One reported number: moonpool's median, and optionally its raw baseline.

    ``ratio`` is always moonpool / baseline.  For rates (``higher_is_better``)
    a ratio of 0.7 means moonpool reaches 70% of the raw throughput; for costs
    (bytes, seconds) a ratio of 2.0 means moonpool uses twice as much.
    ``target`` is the minimum acceptable ratio for rates, the maximum for costs.
    """

    name: str
    unit: str
    samples: list[float]
    baseline_samples: list[float] = field(default_factory=list)
    baseline_name: str | None = None
    target: float | None = None
    higher_is_better: bool = True
    details: Details = field(default_factory=dict)

    @property
    def value(self) -> float:
        return median(self.samples)

    @property
    def baseline(self) -> float | None:
        return median(self.baseline_samples) if self.baseline_samples else None

    @property
    def round_ratios(self) -> list[float]:
        """Each moonpool sample over the baseline sample of the same round (samples
        are paired by position: every comparison keeps them in round order); empty
        when the two lists cannot be paired."""
        if not self.baseline_samples or len(self.samples) != len(self.baseline_samples):
            return []
        if any(value == 0 for value in self.baseline_samples):
            return []
        return [c / b for c, b in zip(self.samples, self.baseline_samples, strict=True)]

    @property
    def ratio_of_medians(self) -> float | None:
        baseline = self.baseline
        if baseline is None or baseline == 0:
            return None
        return self.value / baseline

    @property
    def ratio(self) -> float | None:
        """The judged ratio: the median of the per-round ratios (each moonpool sample
        over the baseline sample taken next to it, so load that drifts during the
        run falls on both), or the ratio of the medians when the samples do not
        pair up."""
        ratios = self.round_ratios
        return median(ratios) if ratios else self.ratio_of_medians

    @property
    def paired_ratio(self) -> float | None:
        """Median of per-round ratios, or None when the samples do not pair up."""
        ratios = self.round_ratios
        return median(ratios) if ratios else None

    @property
    def ratio_statistic(self) -> str:
        return "median of per-round ratios" if self.round_ratios else "ratio of medians"

    @property
    def status(self) -> str:
        """PASS or FAIL against the target, or "-" when there is none."""
        ratio = self.ratio
        if self.target is None or ratio is None:
            return "-"
        ok = ratio >= self.target if self.higher_is_better else ratio <= self.target
        return "PASS" if ok else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "value": self.value,
            "samples": self.samples,
            "baseline_name": self.baseline_name,
            "baseline": self.baseline,
            "baseline_samples": self.baseline_samples,
            "samples_min": min(self.samples) if self.samples else None,
            "samples_max": max(self.samples) if self.samples else None,
            "baseline_min": min(self.baseline_samples) if self.baseline_samples else None,
            "baseline_max": max(self.baseline_samples) if self.baseline_samples else None,
            "ratio": self.ratio,
            "ratio_statistic": self.ratio_statistic,
            "round_ratios": self.round_ratios,
            "ratio_min": min(self.round_ratios) if self.round_ratios else None,
            "ratio_max": max(self.round_ratios) if self.round_ratios else None,
            "ratio_of_medians": self.ratio_of_medians,
            "paired_ratio": self.paired_ratio,
            "target": self.target,
            "target_kind": None
            if self.target is None
            else ("min_ratio" if self.higher_is_better else "max_ratio"),
            "status": self.status,
            "higher_is_better": self.higher_is_better,
            "details": self.details,
        }


@dataclass(slots=True)
class Outcome:
    """What one benchmark module returns: its figures and notes on how it measured."""

    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- sampling ----------------------------------------------------------------------


def _settle() -> None:
    # Start each sample from a clean young heap so one side does not pay for the
    # garbage the other left behind (a full collection happens once per
    # comparison: it is too slow to do before every short sample).  GC stays
    # enabled while timing: allocation churn is part of what a library costs.
    gc.collect(1)


def repeat_sync(sample: Callable[[], float], settings: Settings) -> list[float]:
    """Run ``sample`` ``warmup + repeats`` times; keep the last ``repeats`` results."""
    kept: list[float] = []
    gc.collect()
    for index in range(settings.rounds):
        _settle()
        value = sample()
        if index >= settings.warmup:
            kept.append(value)
    return kept


def compare_sync(
    candidate: Callable[[], float], baseline: Callable[[], float], settings: Settings
) -> tuple[list[float], list[float]]:
    """Interleave candidate and baseline samples (ABBA order); return both lists."""
    base, cand = interleave_sync([baseline, candidate], settings)
    return cand, base


def interleave_sync(
    samplers: Sequence[Callable[[], float]], settings: Settings
) -> list[list[float]]:
    """Several sides (a baseline and one or more candidates), every one once per
    round, the order reversing from round to round; the first ``warmup`` rounds are
    dropped.  Sample ``i`` of every side comes from round ``i``, so each
    candidate's samples pair with a shared baseline's round by round."""
    kept: list[list[float]] = [[] for _ in samplers]
    gc.collect()
    for index in range(settings.rounds):
        order = list(zip(samplers, kept, strict=True))
        if index % 2:
            order.reverse()
        for sample, into in order:
            _settle()
            value = sample()
            if index >= settings.warmup:
                into.append(value)
    return kept


async def repeat_async(sample: Callable[[], Awaitable[float]], settings: Settings) -> list[float]:
    kept: list[float] = []
    gc.collect()
    for index in range(settings.rounds):
        _settle()
        value = await sample()
        if index >= settings.warmup:
            kept.append(value)
    return kept


async def compare_async(
    candidate: Callable[[], Awaitable[float]],
    baseline: Callable[[], Awaitable[float]],
    settings: Settings,
) -> tuple[list[float], list[float]]:
    """:func:`compare_sync` for coroutines (works on trio and asyncio alike)."""
    cand, (base,) = await compare_many_async(candidate, [baseline], settings)
    return cand, base


async def compare_many_async(
    candidate: Callable[[], Awaitable[float]],
    baselines: Sequence[Callable[[], Awaitable[float]]],
    settings: Settings,
) -> tuple[list[float], list[list[float]]]:
    """One candidate against several baselines, all interleaved round by round
    (the order within a round alternates)."""
    cand: list[float] = []
    bases: list[list[float]] = [[] for _ in baselines]
    gc.collect()
    for index in range(settings.rounds):
        order = [*zip(baselines, bases, strict=True), (candidate, cand)]
        if index % 2:
            order.reverse()
        for sample, into in order:
            _settle()
            value = await sample()
            if index >= settings.warmup:
                into.append(value)
    return cand, bases


def calibrate(sample: Callable[[int], float], seconds: float, minimum: int = 100) -> int:
    """How many operations make one ``sample(n)`` (which returns ops/s) last ``seconds``.

    For micro-benchmarks: a sample of a few milliseconds is at the mercy of a
    single preemption on a busy machine, so each side gets its own count, sized
    by time.  Ratios compare rates (per operation), so the counts need not match.
    The probe grows until it lasts at least a tenth of ``seconds`` (like
    ``timeit``'s autorange).
    """
    probe = minimum
    while True:
        measured = sample(probe)
        if probe / measured >= seconds / 10 or probe >= 1 << 24:
            return max(minimum, round(measured * seconds))
        probe *= 4


def compare_calibrated(
    candidate: Callable[[int], float],
    baseline: Callable[[int], float],
    settings: Settings,
    seconds: float,
) -> tuple[list[float], list[float], dict[str, int]]:
    """:func:`compare_sync` with per-side operation counts from :func:`calibrate`."""
    seconds *= min(1.0, settings.scale)
    cand_n = calibrate(candidate, seconds)
    base_n = calibrate(baseline, seconds)
    cand, base = compare_sync(lambda: candidate(cand_n), lambda: baseline(base_n), settings)
    return cand, base, {"operations_per_sample": cand_n, "baseline_operations_per_sample": base_n}


def rate(amount: float, started: float) -> float:
    """``amount`` per second since ``started`` (a ``time.perf_counter`` reading)."""
    elapsed = time.perf_counter() - started
    return amount / elapsed if elapsed > 0 else float("inf")


async def settle(
    condition: Callable[[], bool], what: str, *, limit: float = 30.0, idle: float = 0.1
) -> None:
    """Wait (real time, bounded by ``limit``) until ``condition`` holds, then ``idle``
    more seconds so that every task reaches the place where it waits; it must still
    hold then, or the benchmark cannot trust what it is about to measure."""
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 -- plain state of other tasks, polled
            await anyio.sleep(0.005)
    await anyio.sleep(idle)
    if not condition():
        raise BenchmarkError(f"lost condition: {what}")


# -- CPU pinning -------------------------------------------------------------------


@dataclass(slots=True)
class Pinning:
    """Which CPU the benchmark process runs on, and its child processes.

    ``cpu`` is None when the process could not be pinned (no
    ``os.sched_setaffinity`` on this platform, or the call was refused); then
    nothing is pinned and ``note`` says why.  With a single usable CPU the
    children share it.
    """

    cpu: int | None = None
    child_cpu: int | None = None
    available: tuple[int, ...] = ()
    note: str = "not pinned"
    active: bool = False  # False while a benchmark runs unpinned (``PINNED = False``)

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu,
            "child_cpu": self.child_cpu,
            "available": list(self.available),
            "note": self.note,
        }


_PINNING = Pinning()


def pinning() -> Pinning:
    """The process's current pinning (set by :func:`pin_process`)."""
    return _PINNING


def _set_affinity_all_threads(cpus: set[int]) -> None:
    """``sched_setaffinity`` of pid 0 only moves the calling thread (Linux); move
    every thread of the process, so that a thread started earlier (a thread pool,
    a library's I/O thread) does not stay on another CPU."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            continue  # a thread that has just ended, or one we may not move


def pin_process() -> Pinning:
    """Pin this process to one CPU (the highest-numbered it may use: CPU 0 tends to
    take more of the machine's interrupts); child processes go to the lowest other
    one.  Falls back to running unpinned, with a note saying why."""
    global _PINNING
    getter = getattr(os, "sched_getaffinity", None)
    setter = getattr(os, "sched_setaffinity", None)
    if getter is None or setter is None:
        _PINNING = Pinning(note="not pinned: os.sched_setaffinity is not available here")
        return _PINNING
    try:
        available = tuple(sorted(getter(0)))
    except OSError as exc:
        _PINNING = Pinning(note=f"not pinned: sched_getaffinity failed ({exc})")
        return _PINNING
    cpu = available[-1]
    child = available[0] if len(available) > 1 else cpu
    try:
        _set_affinity_all_threads({cpu})
    except OSError as exc:
        _PINNING = Pinning(available=available, note=f"not pinned: sched_setaffinity ({exc})")
        return _PINNING
    shared = " (the only CPU this process may use: children share it)" if child == cpu else ""
    _PINNING = Pinning(
        cpu=cpu,
        child_cpu=child,
        available=available,
        note=f"pinned to CPU {cpu}, child processes to CPU {child}{shared}",
        active=True,
    )
    return _PINNING


def unpin() -> None:
    """Let the process use every CPU it could at start (for a benchmark that needs
    them all, such as worker processes); :func:`repin` undoes it."""
    if _PINNING.cpu is not None and _PINNING.active:
        _set_affinity_all_threads(set(_PINNING.available))
        _PINNING.active = False


def repin() -> None:
    if _PINNING.cpu is not None and not _PINNING.active:
        _set_affinity_all_threads({_PINNING.cpu})
        _PINNING.active = True


def release() -> None:
    """Back to the affinity the process had before :func:`pin_process` (the runner
    calls it when done: ``main()`` may run inside another program, a test)."""
    global _PINNING
    if _PINNING.cpu is not None:
        _set_affinity_all_threads(set(_PINNING.available))
    _PINNING = Pinning(available=_PINNING.available, note="released")


def pin_child(pid: int) -> int | None:
    """Move a child process (its main thread, before it starts any other) to the
    children's CPU; the CPU, or None if nothing is pinned (or it has gone)."""
    cpu = _PINNING.child_cpu
    if cpu is None or not _PINNING.active:
        return None
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError:
        return None
    return cpu

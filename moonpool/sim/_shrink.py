"""Shrinking a failing seed's fault plan: which of its faults did the damage.

A seed that fails under chaos has usually had hundreds of faults injected --
split writes, short reads, a clog, a reset, buggify firings, a kill.  Most of
them are noise the program survived.  Replaying the seed with some faults
suppressed (a *fault plan*, see :mod:`moonpool._ground._fault_plan`) and seeing
whether it still fails *the same way* tells them apart; delta debugging (Zeller's
``ddmin``) finds a small set that still fails in few replays: whole families
first (no partial I/O at all?), then halves, quarters, ..., then single faults,
until removing any one fault left makes the seed pass.

Python's DST tools shrink a failing *schedule*; none shrinks the fault plan.
This module is the search alone -- replays are a callback -- so it is tested
without running a simulation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, final

from moonpool._ground._fault_plan import InjectedFault, format_fault_plan

__all__ = ["ShrinkError", "ShrunkPlan", "shrink_faults"]

#: How many kept faults the text shows (a time-limited shrink may keep hundreds).
SHOWN = 20

FailsWith = Callable[[frozenset[str]], bool]
"""Replays the seed allowing only these faults: True when it still fails the same way."""


class ShrinkError(ValueError):
    """A seed cannot be shrunk: it passes, or it does not fail the same way again."""


ShrinkError.__module__ = "moonpool.sim"


@final
@dataclass(frozen=True)
class ShrunkPlan:
    """A small set of faults that still makes a seed fail, and how to replay it."""

    seed: int
    #: The faults kept, as they happened in the replay of the shrunk plan.
    faults: tuple[InjectedFault, ...]
    #: How many faults the failing seed had before shrinking.
    original_faults: int
    #: The failure the shrunk plan still produces (the same as the seed's).
    failure: str
    #: Replays it took, and their wall-clock time.
    replays: int
    wall_time: float
    #: False when the time limit ended the search early: the plan still fails,
    #: but removing one more fault might too.
    minimal: bool
    #: The command (or code) that replays the seed with only these faults.
    replay: str = ""

    @property
    def plan(self) -> str:
        """The plan as ``--fault-plan`` takes it."""
        return format_fault_plan(fault.id for fault in self.faults)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report's ``"shrunk"`` entry."""
        return {
            "seed": self.seed,
            "faults": [
                {
                    "id": fault.id,
                    "family": fault.family,
                    "time": fault.time,
                    "host": fault.host,
                    "text": fault.text,
                }
                for fault in self.faults
            ],
            "plan": self.plan,
            "replay": self.replay,
            "original_faults": self.original_faults,
            "failure": self.failure,
            "replays": self.replays,
            "wall_time": self.wall_time,
            "minimal": self.minimal,
        }

    def __str__(self) -> str:
        kept = len(self.faults)
        how = "" if self.minimal else " (time ran out: maybe not minimal)"
        lines = [
            f"shrunk seed {self.seed}: {kept} of {self.original_faults} faults still make it "
            f"fail{how}, found in {self.replays} replays ({self.wall_time:.1f}s); "
            "at the times of the replay below:"
        ]
        shown = self.faults[:SHOWN]
        lines += [f"  {number}. {fault.describe()}" for number, fault in enumerate(shown, 1)]
        if kept > len(shown):
            lines.append(f"  ... and {kept - len(shown)} more (all of them in the --json report)")
        if not self.faults:
            lines.append("  (none: the seed fails without any fault -- a plain bug)")
        lines.append(f"  fails with: {self.failure}")
        if self.replay and len(self.replay) <= 2000:
            lines.append(f"  replay: {self.replay}")
        elif self.replay:
            lines.append(
                "  replay: the plan is too long for a command line: save the report with "
                "--json and replay with --seed N --fault-plan @report.json"
            )
        return "\n".join(lines)


ShrunkPlan.__module__ = "moonpool.sim"


class _Search:
    def __init__(self, fails: FailsWith, out_of_time: Callable[[], bool]) -> None:
        # out_of_time: the time limit passed, or the user asked to stop (Ctrl-C).
        self._fails = fails
        self._out_of_time = out_of_time
        self._seen: dict[frozenset[str], bool] = {}
        self.replays = 0
        self.stopped = False

    def fails(self, ids: Sequence[str]) -> bool:
        key = frozenset(ids)
        known = self._seen.get(key)
        if known is not None:
            return known
        if self._out_of_time():
            self.stopped = True
            return False  # not tried: keep what is known to fail
        self.replays += 1
        result = self._seen[key] = self._fails(key)
        return result


def shrink_faults(
    faults: Sequence[InjectedFault],
    fails: FailsWith,
    *,
    time_limit: float = 60.0,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[list[InjectedFault], int, bool]:
    """The faults of ``faults`` to keep, the replays made, and whether the result is minimal.

    ``fails`` must be true for the whole of ``faults`` (the failing run itself);
    the result is a subset for which it is still true and, unless ``time_limit``
    (wall seconds) ran out or ``stop()`` said so, one from which removing any
    single fault makes it false.
    """
    started = time.perf_counter()
    search = _Search(fails, lambda: stop() or time.perf_counter() - started > time_limit)
    by_id = {fault.id: fault for fault in faults}
    current = list(by_id)
    if search.fails([]):
        return [], search.replays, True
    # Whole families first: most failures need none of the split writes or short
    # reads, and one replay says so for hundreds of them.
    families: dict[str, list[str]] = {}
    for fault_id in current:
        families.setdefault(by_id[fault_id].family, []).append(fault_id)
    for family in sorted(families, key=lambda name: -len(families[name])):
        dropped = set(families[family])
        candidate = [fault_id for fault_id in current if fault_id not in dropped]
        if len(candidate) < len(current) and search.fails(candidate):
            current = candidate
    current = _ddmin(current, search)
    return [by_id[fault_id] for fault_id in current], search.replays, not search.stopped


def _ddmin(current: list[str], search: _Search) -> list[str]:
    """Zeller's ddmin: the smallest failing subset reachable by removing chunks.

    Called once the empty plan is known to pass, so one fault is the floor.
    """
    chunks = 2
    while len(current) >= 2 and not search.stopped:
        size = -(-len(current) // chunks)  # ceiling division
        parts = [current[start : start + size] for start in range(0, len(current), size)]
        reduced = False
        for part in parts:
            if search.fails(part):  # one chunk alone is enough
                current, chunks, reduced = part, 2, True
                break
        if not reduced:
            for part in parts:
                dropped = set(part)
                rest = [fault_id for fault_id in current if fault_id not in dropped]
                if search.fails(rest):  # that chunk was not needed
                    current, chunks, reduced = rest, max(chunks - 1, 2), True
                    break
        if not reduced:
            if chunks >= len(current):
                break  # every single fault is needed: one-minimal
            chunks = min(chunks * 2, len(current))
    return current

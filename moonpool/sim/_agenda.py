"""The runtime's own timed events (kills, restarts, grace expiries), kept off trio's timers.

If attrition slept on a trio timer, a deadlocked program would never look
deadlocked: the next kill would always be pending, and the run would go on
killing processes until the time budget ran out.  So the runtime's events live
here instead, and the supervising instrument fires them when the run is idle
and the event comes no later than the program's own next timer: the clock
jumps to it and the agenda task runs it.  With no program timer at all, only
events that *commit* the world -- a grace period already running out, which
kills a process that ignores its reboot -- are waited for; future kills and
restarts are not (they would keep a stuck program busy for ever), so a program
that only they could wake is reported as deadlocked, not rescued.  Events
passed over that way run, late, once the program has a timer again.

Events due at one instant run in one batch; events they schedule for that same
instant wait for the next turn, so even a zero delay cannot make the agenda
task spin without letting the run loop (and its budgets) look in.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from math import inf

import trio

__all__ = ["Agenda"]


class _Entry:
    __slots__ = ("action", "cancelled", "commits", "seq", "time")

    def __init__(self, time: float, seq: int, action: Callable[[], None], commits: bool) -> None:
        self.time = time
        self.seq = seq
        self.action = action
        self.commits = commits
        self.cancelled = False

    def __lt__(self, other: _Entry) -> bool:
        return (self.time, self.seq) < (other.time, other.seq)


class Agenda:
    """A heap of (time, action); :meth:`run` executes them as the supervisor wakes it."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._parked: trio.lowlevel.Task | None = None
        self._committed_only = False  # the next wake runs committing events only

    def at(self, time: float, action: Callable[[], None], *, commits: bool = False) -> _Entry:
        """Run ``action()`` at simulated ``time`` (see the module doc for when it fires)."""
        entry = _Entry(time, next(self._seq), action, commits)
        heapq.heappush(self._heap, entry)
        return entry

    @staticmethod
    def cancel(entry: _Entry | None) -> None:
        if entry is not None:
            entry.cancelled = True

    def _prune(self) -> None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)

    def next_time(self, program_deadline: float) -> float:
        """When the next event must fire given the program's next timer, or inf."""
        self._prune()
        if not self._heap or self._parked is None:
            return inf
        if program_deadline < inf:
            first = self._heap[0].time
            self._committed_only = False
            return first if first <= program_deadline else inf
        self._committed_only = True
        return min((e.time for e in self._heap if e.commits and not e.cancelled), default=inf)

    def wake(self) -> None:
        """Let the agenda task run what is due (called by the instrument, clock already set)."""
        task, self._parked = self._parked, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def run(self) -> None:
        """The agenda task: forever, wait to be woken, then run every due event."""
        while True:
            self._parked = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
            now = trio.current_time()
            due: list[_Entry] = []
            passed: list[_Entry] = []
            while self._heap and self._heap[0].time <= now:
                entry = heapq.heappop(self._heap)
                (passed if self._committed_only and not entry.commits else due).append(entry)
            for entry in passed:
                heapq.heappush(self._heap, entry)
            for entry in due:
                if not entry.cancelled:
                    entry.action()
            await trio.lowlevel.checkpoint()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

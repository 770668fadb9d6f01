"""The runtime's own timed events (kills, restarts, grace expiries), kept off trio's timers.

If attrition slept on a trio timer, a deadlocked program would never look
deadlocked: the next kill would always be pending, and the run would go on
killing processes until the time budget ran out.  So the runtime's events live
here instead, and the supervising instrument fires them when the run is idle:

* an event whose time comes before the program's own next timer fires (the
  clock jumps to it, the agenda task runs it);
* with no program timer at all, only events that *commit* the world to
  something -- a restart already scheduled, a grace period already running --
  are waited for; a future random kill is not, so a stuck program is reported
  as deadlocked at once.
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

    def __init__(self, time: float, seq: int, commits: bool, action: Callable[[], None]) -> None:
        self.time = time
        self.seq = seq
        self.commits = commits
        self.action = action
        self.cancelled = False

    def __lt__(self, other: _Entry) -> bool:
        return (self.time, self.seq) < (other.time, other.seq)


class Agenda:
    """A heap of (time, action); :meth:`run` executes them as the supervisor wakes it."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._parked: trio.lowlevel.Task | None = None

    def at(self, time: float, action: Callable[[], None], *, commits: bool) -> _Entry:
        """Run ``action()`` at simulated ``time``; ``commits``: see the module doc."""
        entry = _Entry(time, next(self._seq), commits, action)
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
        first = self._heap[0].time
        if program_deadline < inf:
            return first if first <= program_deadline else inf
        committed = min((e.time for e in self._heap if e.commits and not e.cancelled), default=inf)
        return first if first <= committed < inf else inf

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
            while self._heap and self._heap[0].time <= now:
                entry = heapq.heappop(self._heap)
                if not entry.cancelled:
                    entry.action()
            await trio.lowlevel.checkpoint()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

"""The runtime's own timed events (kills, restarts, grace expiries), kept off trio's timers.

If attrition slept on a trio timer, a deadlocked program would never look
deadlocked: the next kill would always be pending, and the run would go on
killing processes until the time budget ran out.  So the runtime's events live
here instead, and the supervising instrument fires them when the run is idle
and the event comes no later than the program's own next timer: the clock
jumps to it and the agenda task runs it.  With no program timer at all the run
is deadlocked, whatever the agenda holds -- a program that only a kill, a
restart or an expiring grace period could wake would hang without them, so it
is reported, not rescued.

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
    __slots__ = ("action", "cancelled", "seq", "time")

    def __init__(self, time: float, seq: int, action: Callable[[], None]) -> None:
        self.time = time
        self.seq = seq
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

    def at(self, time: float, action: Callable[[], None]) -> _Entry:
        """Run ``action()`` at simulated ``time`` (see the module doc for when it fires)."""
        entry = _Entry(time, next(self._seq), action)
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
        return first if first <= program_deadline < inf else inf

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
            due = []
            while self._heap and self._heap[0].time <= now:
                due.append(heapq.heappop(self._heap))
            for entry in due:
                if not entry.cancelled:
                    entry.action()
            await trio.lowlevel.checkpoint()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

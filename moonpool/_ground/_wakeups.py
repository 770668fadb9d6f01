"""Timed wake-ups of the simulated network, fired by the simulation's run-loop instrument.

A simulated read waits for bytes that are already on their way: their arrival
time is known when they are written.  Waiting for it on a trio timer costs a
cancel scope per wait, a ``Cancelled`` raised and caught per delivery, and a
turn of the run loop that only advances the clock (trio's autojump) before the
turn that runs the reader.  Inside a simulation the supervising instrument
already decides, on every idle turn, where time goes next (see
:mod:`moonpool.sim._supervisor`), so the network hands it those arrival times
instead: when nothing is runnable and the earliest wake-up comes no later than
every trio timer, the instrument moves the clock there and wakes the reader in
the same turn.  This changes no schedule: the reader runs in the same batch,
with the same timers expired beside it, as it did when its own timer woke it.
A wake-up that wakes no task (a push that completed no read, see
``SimStream.receive_into``) is followed by the next one in that same turn, or
trio's autojump would skip past it to the next trio timer.

A wake-up counts as a pending timer: a run waiting only for bytes in flight is
not deadlocked.  Outside a simulation (a plain ``trio.run`` on an autojump
clock) nobody fires these, and the network waits on trio timers as before.
"""

from __future__ import annotations

import heapq
import itertools
from math import inf
from typing import Protocol

__all__ = ["Wakeups", "WakeupTarget"]

#: The most wake-ups one fire_due call runs.
FIRE_LIMIT = 10_000


class WakeupTarget(Protocol):
    """What a wake-up wakes: it says whether it still wants ``time``, and takes it."""

    def wants(self, time: float) -> bool: ...

    def wake(self, time: float) -> None: ...


class Wakeups:
    """A heap of ``(time, target)``; stale entries (``not target.wants(time)``) are skipped."""

    __slots__ = ("_heap", "_order")

    def __init__(self) -> None:
        # (time, insertion number, target): the number orders equal times in the
        # order they were asked for and keeps targets from ever being compared.
        self._heap: list[tuple[float, int, WakeupTarget]] = []
        self._order = itertools.count()

    def at(self, time: float, target: WakeupTarget) -> None:
        """Wake ``target`` at simulated ``time`` (if it still wants it then)."""
        heapq.heappush(self._heap, (time, next(self._order), target))

    def next_time(self) -> float:
        """The earliest wake-up still wanted, or ``inf``."""
        heap = self._heap
        while heap:
            time, _, target = heap[0]
            if target.wants(time):
                return time
            heapq.heappop(heap)
        return inf

    def due(self, now: float) -> bool:
        """Whether a wake-up (perhaps a stale one) is due at ``now``: cheap, every turn."""
        heap = self._heap
        return bool(heap) and heap[0][0] <= now

    def fire_due(self, now: float) -> None:
        """Wake every target whose wake-up is due at ``now``, earliest first.

        At most ``FIRE_LIMIT`` of them: a wake-up may ask for another at ``now``
        (two push readers answering each other with no latency), and the caller
        must get back to its wall-clock check.
        """
        heap = self._heap
        for _ in range(FIRE_LIMIT):
            if not heap or heap[0][0] > now:
                return
            time, _, target = heapq.heappop(heap)
            if target.wants(time):
                target.wake(time)

    def __len__(self) -> int:
        return len(self._heap)

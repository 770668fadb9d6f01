"""The run-loop instrument of one seed: trace hash, failure detection, runtime events.

It watches every turn of trio's run loop and ends the seed -- with a message
naming who is stuck and where, in the user's own lines -- on any of:

* deadlock: no task runnable, no timer pending (the runtime's own future kills
  do not count: see :mod:`moonpool.sim._agenda`), so nothing can ever happen;
* processes not returning within the shutdown grace period at the end;
* the simulated-time budget or the wall-clock budget running out.

Exceptions and assertion violations are reported to it by the tasks that see
them (:meth:`Supervisor.fail`).  None of these waits: each is detected on the
turn of the run loop where it becomes true.

It also drives the clock.  When nothing is runnable it moves simulated time to
whatever comes first -- a trio timer, an arrival on the simulated network (see
:mod:`moonpool._ground._wakeups`) or a runtime event (:mod:`moonpool.sim._agenda`)
-- and wakes what is due in that same turn of the run loop.

**The trace hash** folds in, in order: every task step (which task, numbered in
spawn order), every change of simulated time (before the steps it causes),
every task exit, the size of each chunk pushed to a reader between turns
(``SimStream.receive_into``: a delivery no task step records), and the events
the runtime names -- faults injected, connects, crashes and reboots,
violations, phase ends, the failure.  Two runs
of a seed with equal hashes stepped the same tasks in the same order at the
same simulated times; any divergence, even a timer a microsecond off, shows.
It does not hash the bytes programs exchange or the values they compute (a
run that steps identically with other data has the same hash): that is what
``always`` and the workloads' checks are for.

A failed seed is cancelled.  If its teardown then gets stuck -- a task shielded
from the cancellation waits for ever, or keeps retrying in a ``finally`` -- the
supervisor abandons it: every blocked task gets :class:`SeedAbandoned` raised
where it waits, through any shield, so ``trio.run`` returns and the next seed
can run.  The failure says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from math import inf
from typing import TYPE_CHECKING

import trio

from moonpool._ground._run import _FNV_PRIME, _MASK64, SimRun
from moonpool._ground._wakeups import Wakeups
from moonpool.sim._agenda import Agenda
from moonpool.sim._exceptions import SeedAbandoned
from moonpool.sim._hang_report import describe_waiting_tasks
from moonpool.sim._interrupt import CtrlC
from moonpool.sim._trio_internals import (
    RunnerProbe,
    abandon_step,
    current_runner_probe,
    force_abort,
)

if TYPE_CHECKING:
    import trio.testing

__all__ = ["Supervisor"]

#: How long a failed seed's teardown may take -- in simulated seconds and in turns
#: of the run loop, both deterministic, so that a failing seed replays with the
#: same trace on any machine -- before its remaining tasks are abandoned.
TEARDOWN_SIM_TIME = 30.0
TEARDOWN_TURNS = 10_000


class Supervisor(trio.abc.Instrument):
    """Run-loop instrument and failure sink of one seed (see the module doc)."""

    def __init__(
        self,
        run: SimRun,
        clock: trio.testing.MockClock,
        *,
        sim_time_budget: float,
        wall_time_budget: float,
        shutdown_grace: float,
    ) -> None:
        self.run = run
        self.clock = clock
        self.agenda = Agenda()
        # The simulated network's arrival times: fired here, so that a delivery
        # costs no trio timer (see moonpool._ground._wakeups).
        self.wakeups = run.wakeups = Wakeups()
        self.sim_time_budget = sim_time_budget
        self.wall_time_budget = wall_time_budget
        self.shutdown_grace = shutdown_grace
        self.failure: tuple[str, str, str] | None = None  # kind, message, traceback
        self.failure_time = 0.0
        self.cancel_scope: trio.CancelScope | None = None
        self.root_task: trio.lowlevel.Task | None = None
        self.phase = "boot"
        self.finished = False  # the lifecycle is over: only teardown is left
        self.grace_deadline = inf  # set when processes are told to shut down
        # The processes whose task has not finished (set by the iteration).
        self.still_running: Callable[[], list[str]] = list
        # More lines for hang reports (which processes are down, and until when).
        self.more_context: Callable[[], list[str]] = list
        self.ctrl_c = CtrlC()  # replaced by the run's, which the SIGINT handler uses
        self.interrupted = False
        self._roles: dict[trio.lowlevel.Task, str] = {}
        self._task_index: dict[trio.lowlevel.Task, int] = {}
        self._probe: RunnerProbe | None = None
        self._turns = 0
        self._last_time = 0.0
        self._wall_deadline = time.perf_counter() + wall_time_budget
        self._failure_turn = 0
        self.abandoned = 0  # tasks abandoned in a stuck teardown
        # While abandoning: the seed's tasks, each told to stop at its next step.
        self._abandon: set[trio.lowlevel.Task] = set()

    # -- trio.abc.Instrument hooks ------------------------------------------------

    def before_run(self) -> None:
        self._probe = current_runner_probe()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self._task_index[task] = len(self._task_index)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.run.trace(~self._task_index.get(task, -1))

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        # The hottest hook of a simulation: SimRun.trace inlined (FNV-1a step).
        if self._abandon and task in self._abandon:
            # A task of a stuck teardown that was runnable (spinning in a shield,
            # say): it gets SeedAbandoned where it resumes.
            self._abandon.discard(task)
            if abandon_step(task, SeedAbandoned):
                self.abandoned += 1
        run = self.run
        run.events += 1
        run.trace_hash = ((run.trace_hash ^ self._task_index[task]) * _FNV_PRIME) & _MASK64

    def before_io_wait(self, timeout: float) -> None:
        probe = self._probe
        assert probe is not None
        self._turns += 1
        now = self.clock.current_time()
        if now != self._last_time:
            # Time is part of the trace: a run that does the same steps at other
            # times (say, sleeps computed from the wall clock) is a different run.
            self._last_time = now
            self.run.trace(hash(now))  # float hashes are not salted by PYTHONHASHSEED
        wakeups = self.wakeups
        if wakeups.due(now):
            # Bytes due now for a push reader (SimStream.receive_into) are handed
            # over here, between two turns, whether or not tasks are runnable.
            wakeups.fire_due(now)
        if self._turns & 0xFF == 0 and time.perf_counter() > self._wall_deadline:
            self.fail(
                "wall_time_budget",
                f"iteration exceeded its wall-clock budget of {self.wall_time_budget}s "
                f"(sim time {now:.3f}s, {self.phase} phase); a task may be spinning without "
                f"sleeping.\n{self.waiting_tasks()}",
            )
            return
        if self.failure is not None or self.interrupted:
            self._deliver_while_idle(probe)  # bytes in flight still arrive in teardown
            self._watch_teardown(self.clock.current_time(), probe)
            return
        # A push (SimStream.receive_into) may wake no task and ask for a later
        # arrival; trio's autojump would then skip to its next *timer*, past that
        # arrival.  So while only the network's wake-ups fired, look again.
        while self._move_time(now, probe):
            now = self.clock.current_time()
            if self._out_of_wall_time(now):
                return

    def _move_time(self, now: float, probe: RunnerProbe) -> bool:
        """With nothing to run: move the clock to what comes next, or fail the seed.

        True if it fired only network wake-ups (what they did may need another look).
        """
        if probe.has_runnable_tasks() or probe.has_idle_waiters():
            return False
        if self.finished:
            self._deliver_while_idle(probe)
            return False
        program_deadline = probe.next_deadline()
        arrival = self.wakeups.next_time()
        next_deadline = min(program_deadline, arrival)
        event_at = self.agenda.next_time(next_deadline)
        if event_at <= self.sim_time_budget and event_at < inf:
            if event_at > now:
                self.clock.jump(event_at - now)
            self.agenda.wake()
            if arrival <= event_at:
                self.wakeups.fire_due(self.clock.current_time())
            return False
        if (
            next_deadline < inf
            and next_deadline <= self.sim_time_budget
            and not (self.phase == "shutdown" and next_deadline > self.grace_deadline)
        ):
            # Time moves to the next timer or arrival now, in this turn (trio's
            # autojump would spend a turn of its own on it).
            self._advance(now, next_deadline)
            return arrival < program_deadline  # else trio's timer fires after this hook
        if self.phase == "shutdown" and next_deadline > self.grace_deadline:
            names = ", ".join(self.still_running()) or "?"
            how = (
                "are blocked with no timer pending"
                if next_deadline == inf
                else f"were still running when the {self.shutdown_grace}s grace period ended"
            )
            self.fail(
                "shutdown_timeout",
                f"process(es) {names} did not finish after the simulation told every "
                f"process to stop at {self.grace_deadline - self.shutdown_grace:.3f}s, after "
                f"every check: they {how}; a process must return once ctx.shutdown is set.\n"
                f"{self.waiting_tasks()}",
            )
        elif next_deadline == inf:
            self.fail(
                "deadlock",
                f"deadlock at sim time {now:.3f}s in the {self.phase} phase: every task is "
                f"blocked and no timer is pending, so nothing can ever wake them.\n"
                f"{self.waiting_tasks()}",
            )
        elif min(next_deadline, event_at) > self.sim_time_budget:
            self.fail(
                "sim_time_budget",
                f"simulated time budget of {self.sim_time_budget}s exhausted in the "
                f"{self.phase} phase: the next timer is at {next_deadline:.3f}s.\n"
                f"{self.waiting_tasks()}",
            )
        return False

    def _deliver_while_idle(self, probe: RunnerProbe) -> None:
        """Fire the network's wake-ups while nothing runs and no trio timer comes first."""
        while not (probe.has_runnable_tasks() or probe.has_idle_waiters()):
            arrival = self.wakeups.next_time()
            if arrival == inf or arrival > probe.next_deadline():
                return
            now = self.clock.current_time()
            self._advance(now, arrival)
            if time.perf_counter() > self._wall_deadline:
                return  # a livelock of pushes: the teardown watch deals with it

    def _out_of_wall_time(self, now: float) -> bool:
        """Fail the seed if it ran past its wall-clock budget (checked while time moves
        without a turn of the run loop: pushes that answer each other at once)."""
        if time.perf_counter() <= self._wall_deadline:
            return False
        self.fail(
            "wall_time_budget",
            f"iteration exceeded its wall-clock budget of {self.wall_time_budget}s "
            f"(sim time {now:.3f}s, {self.phase} phase); bytes handed over between turns "
            f"(SimStream.receive_into) may be answering each other without end.\n"
            f"{self.waiting_tasks()}",
        )
        return True

    def _advance(self, now: float, to: float) -> None:
        """Move the clock to ``to`` and wake what is due then, in this turn.

        What trio's autojump and timer expiry did, one turn sooner: the new time
        is traced before the steps it causes, the network's wake-ups due by then
        fire here, and trio expires its own timers right after this hook, so both
        kinds run in one batch.  The clock lands on ``to`` exactly: ``now + (to -
        now)`` can fall an ulp short in floating point, and nothing would then
        be due -- trio's autojump moves on to the next *trio* timer, which would
        leave a network arrival behind, late by however long that is.
        """
        clock = self.clock
        while now < to:  # converges at once: the second difference is exact
            clock.jump(to - now)
            now = clock.current_time()
        if now != self._last_time:
            self._last_time = now
            self.run.trace(hash(now))
        self.wakeups.fire_due(now)

    def _watch_teardown(self, now: float, probe: RunnerProbe) -> None:
        """Abandon a failed seed whose teardown is stuck (see the module doc)."""
        slow = (
            now - self.failure_time > TEARDOWN_SIM_TIME
            or self._turns - self._failure_turn > TEARDOWN_TURNS
        )
        if probe.has_runnable_tasks() and not slow:
            return
        stuck = (
            not probe.has_runnable_tasks()
            and min(probe.next_deadline(), self.wakeups.next_time()) == inf
        )
        if not (stuck or slow) or self.root_task is None:
            return
        stack = [self.root_task]
        while stack:
            task = stack.pop()
            stack.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
            if force_abort(task, SeedAbandoned):
                self.abandoned += 1
            else:
                self._abandon.add(task)  # runnable: stopped at its next step

    # -- roles and reports ----------------------------------------------------------

    def role_started(self, task: trio.lowlevel.Task, label: str) -> None:
        self._roles[task] = label

    def role_ended(self, task: trio.lowlevel.Task) -> None:
        self._roles.pop(task, None)

    def waiting_tasks(self) -> str:
        tasks = describe_waiting_tasks(self.root_task, self._roles, self._task_index)
        return "\n".join([tasks, *self.more_context()])

    # -- iteration control --------------------------------------------------------

    def fail(self, kind: str, message: str, tb: str = "") -> None:
        """Record the first failure and cancel everything; later ones are consequences."""
        if self.failure is not None:
            return
        self.failure = (kind, message, tb or message)
        self.failure_time = self.clock.current_time()
        self._failure_turn = self._turns
        self.run.trace_text(f"failure:{kind}")
        self.run.note("failure", f"[{kind}] {message.splitlines()[0] if message else kind}")
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def interrupt(self) -> None:
        """Ctrl-C asked to stop this seed (called from the run loop, see ``CtrlC``)."""
        self.interrupted = True
        self.failure_time = self.clock.current_time()
        self._failure_turn = self._turns
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

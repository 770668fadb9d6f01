"""Every private trio detail the simulation runtime depends on, in one place.

trio has no public API for four things a deterministic simulator needs:

1. **A seeded scheduler.**  trio already randomises the order in which tasks that
   became runnable together are stepped (so that programs do not grow hidden
   ordering assumptions).  Under Hypothesis it makes that order reproducible by
   sorting each batch by task creation order and shuffling it with a module-level
   ``random.Random`` (``trio._core._run._r``).  We switch on the same mode and seed
   that generator from the simulation seed, so "which ready task runs first" is a
   pure function of the seed -- and still varies between seeds, which is how races
   get explored.
2. **A cheap idleness probe.**  Deadlock detection runs on every turn of the run
   loop; it needs "is the run queue empty?" and "when is the next deadline?".
   ``trio.lowlevel.current_statistics()`` answers both but also gathers I/O
   statistics, which is too slow to call per turn, so we read the runner directly.

3. **Ending a seed whose teardown is stuck.**  Once a seed has failed, it is
   cancelled; a task shielded from that (a ``finally`` retrying forever, say)
   would keep ``trio.run`` alive for ever.  :func:`force_abort` delivers an
   exception to a blocked task the way trio delivers a cancellation, but
   through any shield -- trio's own ``Task._attempt_abort`` -- and
   :func:`abandon_step` does it to a runnable task (one spinning in a shield)
   by replacing what it is about to be resumed with (``Task._next_send``).

4. **A clock that is cheap to read.**  ``MockClock.current_time`` reads the real
   clock and scales it by the rate -- zero in a simulation -- on every call (a
   few per task step).  :func:`sim_clock` makes one that returns the virtual time it keeps,
   which with a zero rate is the same number, bit for bit.

``tests/sim/test_trio_internals.py`` exercises each of these against the installed
trio; if an upgrade moves them, that test fails loudly and the pin in
``pyproject.toml`` must not be widened until this module is fixed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import trio._core._run as _trio_run

if TYPE_CHECKING:
    from trio.testing import MockClock

__all__ = [
    "RunnerProbe",
    "sim_clock",
    "abandon_step",
    "current_runner_probe",
    "force_abort",
    "seeded_scheduler",
]


@contextmanager
def seeded_scheduler(seed: int) -> Iterator[None]:
    """Make trio's batch order a function of ``seed`` for the duration of the block.

    The previous mode and generator state are restored afterwards, so a real
    ``trio.run`` later in the same process is unaffected.
    """
    generator: random.Random = _trio_run._r
    saved_state = generator.getstate()
    saved_flag = _trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    _trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    generator.seed(seed)
    try:
        yield
    finally:
        _trio_run._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag  # type: ignore[misc]
        generator.setstate(saved_state)


class RunnerProbe(Protocol):
    def has_runnable_tasks(self) -> bool: ...

    def next_deadline(self) -> float: ...

    def has_idle_waiters(self) -> bool: ...


class _Probe:
    __slots__ = ("_deadlines", "_runq", "_waiting_for_idle")

    def __init__(self, runner: Any) -> None:
        self._runq = runner.runq
        self._deadlines = runner.deadlines
        self._waiting_for_idle = runner.waiting_for_idle

    def has_runnable_tasks(self) -> bool:
        return bool(self._runq)

    def next_deadline(self) -> float:
        deadline: float = self._deadlines.next_deadline()
        return deadline

    def has_idle_waiters(self) -> bool:
        """True while a task sits in ``trio.testing.wait_all_tasks_blocked``."""
        return bool(self._waiting_for_idle)


def current_runner_probe() -> RunnerProbe:
    """A probe on the runner of the trio run this thread is inside.

    Valid from an instrument's ``before_run`` hook onwards.
    """
    return _Probe(_trio_run.GLOBAL_RUN_CONTEXT.runner)


def force_abort(task: Any, make_error: Any) -> bool:
    """Raise ``make_error()`` in ``task`` at the point where it is blocked, shields or not.

    Returns False when the task is not blocked (it is runnable, or running).
    """
    if getattr(task, "_abort_func", None) is None:
        return False

    def raise_error() -> None:
        raise make_error()

    task._attempt_abort(raise_error)
    return True


def abandon_step(task: Any, make_error: Any) -> bool:
    """Make ``task``, about to be stepped, resume with ``make_error()`` raised.

    Only from an instrument's ``before_task_step`` hook (trio reads what to send
    into the task right after it).  Returns False if the task is not about to run.
    """
    if getattr(task, "_next_send_fn", None) is None or task._next_send is None:
        return False  # not about to run, or about to start (nothing to throw into yet)
    import outcome

    task._next_send = outcome.Error(make_error())
    return True


def sim_clock() -> MockClock:
    """An autojump ``MockClock`` (rate zero) whose ``current_time`` skips the real clock.

    With a zero rate ``MockClock`` computes ``virtual_base + 0 * (real - base)``:
    exactly its private ``_virtual_base``, which ``jump`` moves.  Reading that
    directly is the same time, bit for bit, for a fraction of the cost.
    (``MockClock`` is final, and the run loop's autojump insists on one, so the
    method is replaced on the instance rather than overridden.)
    """
    # Imported here, not at module level: trio.testing imports pytest when it is
    # installed, and `import moonpool.transport` for real networks should not.
    import trio.testing

    clock = trio.testing.MockClock(autojump_threshold=0)

    def current_time() -> float:
        now: float = clock._virtual_base  # type: ignore[attr-defined]
        return now

    clock.current_time = current_time  # type: ignore[method-assign]
    return clock

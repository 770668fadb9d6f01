"""Ctrl-C during a simulation: stop between seeds, or cancel the running seed.

Python's default SIGINT handler raises ``KeyboardInterrupt`` at whatever line
runs, and in a simulation that is almost always inside a seed's ``trio.run``:
in a workload (where a task group wraps it), in the supervising instrument
(which trio then disables, silently dropping the seed's budgets and deadlock
detection) or inside trio's own bookkeeping (``TrioInternalError``).  None of
that says anything about the code under test.  So while a simulation runs,
SIGINT is ours:

1. the first Ctrl-C lets the running seed finish (seeds are short) and stops
   the run after it;
2. the second cancels the running seed through its trio token -- the one
   signal-safe way into a running trio loop -- and the seed is left out of the
   report;
3. the third raises ``KeyboardInterrupt`` at once, for a seed that never
   reaches a checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import final

import trio

__all__ = ["CtrlC", "ctrl_c_handled"]


@final
class CtrlC:
    """Ctrl-C presses seen during a run, and how to cancel the seed now running."""

    __slots__ = ("_seed", "presses")

    def __init__(self) -> None:
        self.presses = 0
        # The running seed's trio token and what cancels the seed.
        self._seed: tuple[trio.lowlevel.TrioToken, Callable[[], None]] | None = None

    @property
    def stop_requested(self) -> bool:
        return self.presses > 0

    @contextmanager
    def cancellable_seed(self, cancel: Callable[[], None]) -> Iterator[None]:
        """While the block runs, a second Ctrl-C calls ``cancel`` inside the
        current trio run (so only call this from inside one)."""
        self._seed = (trio.lowlevel.current_trio_token(), cancel)
        try:
            yield
        finally:
            self._seed = None

    def press(self, signum: int, frame: FrameType | None) -> None:
        """The SIGINT handler."""
        self.presses += 1
        if self.presses >= 3:
            raise KeyboardInterrupt
        seed = self._seed
        if self.presses == 2 and seed is not None:
            token, cancel = seed
            # If the seed ended meanwhile, the run stops after it anyway.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(cancel)


@contextmanager
def ctrl_c_handled() -> Iterator[CtrlC]:
    """Take SIGINT over for the block (see the module doc); yields the presses.

    Only from the main thread (the only one that may set handlers) and only
    over Python's default handler: a program that installed its own, or
    ignores SIGINT, keeps its way.  ``trio.run`` leaves a handler that is not
    the default alone, so the seeds run under this one.
    """
    ctrl_c = CtrlC()
    owned = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if owned:
        signal.signal(signal.SIGINT, ctrl_c.press)
    try:
        yield ctrl_c
    finally:
        if owned and signal.getsignal(signal.SIGINT) == ctrl_c.press:
            signal.signal(signal.SIGINT, signal.default_int_handler)

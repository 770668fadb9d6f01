"""Ctrl-C during a simulation: finish the running seed, then stop.

Python's default SIGINT handler raises ``KeyboardInterrupt`` at whatever line
runs, and in a simulation that is almost always inside a seed's ``trio.run``:
in a workload (where a task group wraps it), or inside trio's own bookkeeping,
which it can corrupt (``TrioInternalError``).  Either way the seed's outcome
says nothing about the code under test.  Seeds are short, so the first Ctrl-C
only asks the run to stop after the current seed; a second one, for a seed that
will not finish, interrupts at once as usual.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["stop_requested_by_ctrl_c"]


@contextmanager
def stop_requested_by_ctrl_c() -> Iterator[Callable[[], bool]]:
    """While the block runs, the first Ctrl-C only sets a flag; yields a reader of it.

    Takes over SIGINT only where Python's default handler is installed and only
    from the main thread (the only one that may set handlers); elsewhere the
    flag stays ``False`` and Ctrl-C behaves as it did.  ``trio.run`` leaves a
    handler that is not the default alone, so seeds run under this one.
    """
    pressed = False

    def first_press(signum: int, frame: FrameType | None) -> None:
        nonlocal pressed
        pressed = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one interrupts

    owned = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if owned:
        signal.signal(signal.SIGINT, first_press)
    try:
        yield lambda: pressed
    finally:
        if owned and signal.getsignal(signal.SIGINT) is first_press:
            signal.signal(signal.SIGINT, signal.default_int_handler)

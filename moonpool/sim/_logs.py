"""Log records of one iteration go on its timeline instead of flooding stderr.

A simulation of thousands of seeds under chaos logs a lot of legitimate trouble
(closed connections, corrupted frames).  Printed as it happens, that drowns the
report; thrown away, it is missing exactly when a seed fails.  So each record of
the seed -- moonpool's and the user's own -- becomes a timeline event, stamped
with simulated time and the host that logged it, and a failure carries the
tail.  Logging a user has configured is left alone: records still reach their
handlers, and their levels are not changed; only Python's last-resort stderr
printing is held back when nobody configured logging.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from moonpool._ground._run import SimRun

__all__ = ["captured_logs"]


class _TimelineHandler(logging.Handler):
    def __init__(self, run: SimRun) -> None:
        super().__init__(logging.DEBUG)
        self._run = run

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is the caller's bug, not a reason to crash
            message = f"{record.msg!r} % {record.args!r}"
        self._run.note("log", f"{record.levelname} {record.name}: {message}")


def _only_pytest_handlers(logger: logging.Logger) -> bool:
    return all(type(h).__module__.startswith("_pytest") for h in logger.handlers)


@contextmanager
def captured_logs(run: SimRun) -> Iterator[None]:
    """Put every INFO-or-above record logged during the block on ``run``'s timeline."""
    root, ours = logging.getLogger(), logging.getLogger("moonpool")
    handler = _TimelineHandler(run)
    saved = root.level, ours.level
    # Nobody (or only pytest's capture) configured logging: lowering the root level
    # shows the user's INFO lines on the timeline and prints nothing anywhere else
    # (this handler keeps logging.lastResort quiet).  Configured logging keeps its
    # levels: raising what its handlers print is not ours to do.
    if _only_pytest_handlers(root) and root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])

"""Log records of one iteration, kept with the run instead of flooding stderr.

A simulation of thousands of seeds under chaos logs a lot of legitimate trouble
(closed connections, corrupted frames).  Printed as it happens, that drowns the
report; thrown away, it is missing exactly when a seed fails.  So each iteration
keeps its last log lines, stamped with simulated time, and a failure's report
carries them.  Logging a user has configured is left alone: records still reach
their handlers; only Python's last-resort stderr printing is held back.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["captured_logs"]

KEPT_LINES = 200


class _RunLogHandler(logging.Handler):
    def __init__(self, lines: deque[str]) -> None:
        super().__init__(logging.DEBUG)
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            now = f"{trio.current_time():10.4f}s"
        except RuntimeError:  # outside the run (setup or teardown)
            now = " " * 11
        self._lines.append(f"{now} {record.levelname:<7} {record.name}: {record.getMessage()}")


@contextmanager
def captured_logs(logger_name: str = "moonpool") -> Iterator[deque[str]]:
    """Collect ``logger_name``'s records (the last :data:`KEPT_LINES`) during the block."""
    lines: deque[str] = deque(maxlen=KEPT_LINES)
    logger = logging.getLogger(logger_name)
    handler = _RunLogHandler(lines)
    saved_level, saved_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    # Nobody configured logging: without this, every record would be printed to
    # stderr by logging.lastResort.  With handlers configured, records flow as usual.
    unconfigured = not logging.getLogger().handlers
    if unconfigured:
        logger.propagate = False
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate

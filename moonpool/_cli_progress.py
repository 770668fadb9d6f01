"""The command line's progress display: live on a terminal, periodic lines in a log.

On a terminal, a rich progress bar: seeds done (of the total when it is known),
seeds per second, the time left, failures so far and the last seed finished.
Not on a terminal (CI logs), one plain line per hundred seeds and per failure,
so that a log shows that the run is alive without a line per seed.  Nothing at
all with ``--quiet``.  The display is on stderr: stdout carries the report.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moonpool.sim import FailureRecord, RunRecord

__all__ = ["Progress"]

#: In a log, a line every this many seeds (and one per failure).
LOG_EVERY = 100


class Progress:
    """Called with each seed's record as it finishes (``set_progress``)."""

    def __init__(self, *, enabled: bool, total: int | None) -> None:
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.failed = 0
        self._live: Any = None
        self._task: Any = None
        if enabled and sys.stderr.isatty():
            self._start_live()

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        columns: list[Any] = [TextColumn("[bold]moonpool")]
        if self.total is not None:
            columns += [BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        else:
            columns += [TextColumn("{task.completed} seeds"), TimeElapsedColumn()]
        columns += [
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[failures]}"),
            TextColumn("[dim]{task.fields[seed]}"),
        ]
        self._live = RichProgress(
            *columns, console=Console(file=sys.stderr), transient=False, refresh_per_second=8
        )
        self._task = self._live.add_task(
            "seeds", total=self.total, rate="", failures="no failures", seed=""
        )
        self._live.start()

    def __call__(self, record: RunRecord, failure: FailureRecord | None) -> None:
        self.done += 1
        self.failed += failure is not None
        if not self.enabled:
            return
        if self._live is not None:
            task = self._live.tasks[0]
            elapsed = task.elapsed or 0.0
            rate = f"{self.done / elapsed:.1f} seeds/s" if elapsed > 0 else ""
            failures = f"[red]{self.failed} failed" if self.failed else "no failures"
            self._live.update(
                self._task,
                completed=self.done,
                rate=rate,
                failures=failures,
                seed=f"seed {record.seed} {'ok' if record.ok else 'FAILED'}",
            )
        elif failure is not None or self.done % LOG_EVERY == 0:
            of = f"/{self.total}" if self.total is not None else ""
            print(
                f"[{self.done}{of}] seed {record.seed} {'ok' if record.ok else 'FAILED'}; "
                f"{self.done - self.failed} passed, {self.failed} failed",
                file=sys.stderr,
                flush=True,
            )

    def finish(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

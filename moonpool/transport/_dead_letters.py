"""``DeadLetters``: a bounded record of what could not be delivered.

Nothing the transport gives up on disappears silently: a one-way message it
could not send, a reply whose client has gone, a request still pending when its
transport closed each leave a :class:`DeadLetter` here -- destination, reason,
time -- and count in :attr:`DeadLetters.total`.  Only the latest ``capacity``
are kept, so a flood of failures costs bounded memory; the count is exact.
Inside a simulation each is also counted in the report's ``observed_totals``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import NamedTuple, final

from moonpool._ground._run import current_run

__all__ = ["DEFAULT_DEAD_LETTERS", "DeadLetter", "DeadLetters"]

DEFAULT_DEAD_LETTERS = 1000


class DeadLetter(NamedTuple):
    """One undelivered message."""

    #: ``"one-way"``, ``"reply"`` or ``"request"``.
    kind: str
    destination: str
    reason: str
    #: The transport's clock (simulated time inside a simulation).
    time: float


@final
class DeadLetters:
    """The latest undelivered messages, oldest first, and exact counts of all of them."""

    def __init__(self, capacity: int = DEFAULT_DEAD_LETTERS) -> None:
        if capacity < 0:
            raise ValueError(f"dead letter capacity must be >= 0, got {capacity}")
        self._letters: deque[DeadLetter] = deque(maxlen=capacity)
        #: Every dead letter ever recorded, also those no longer kept.
        self.total = 0

    def __repr__(self) -> str:
        return f"<DeadLetters total={self.total} kept={len(self._letters)}>"

    def __len__(self) -> int:
        return len(self._letters)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(list(self._letters))

    def __bool__(self) -> bool:
        return self.total > 0

    def record(self, kind: str, destination: str, reason: str, time: float) -> None:
        self._letters.append(DeadLetter(kind, destination, reason, time))
        self.total += 1
        run = current_run()
        if run is not None:
            run.observe(f"dead letter ({kind})")  # shown in the simulation's report

"""``CircuitBreaker``: fail fast towards a remote that keeps failing.

After ``threshold`` consecutive failures (connects that fail, calls that time out
or lose their connection) the circuit *opens*: calls fail at once with
:class:`~moonpool.transport.CircuitOpen`, without touching the network, so a dead
remote costs its callers nothing and gets no load while it recovers.  After a
cool-down (``cooldown``, shortened by up to half of itself from the transport's
seeded random stream, so that many clients do not probe in lockstep) the
circuit is *half open*: one call is let through as a probe.  Its success closes
the circuit; its failure opens it again for another cool-down.

Pure state: the caller passes the time in, so it is tested with plain calls.
"""

from __future__ import annotations

import random
from enum import Enum
from typing import final

__all__ = ["CircuitBreaker", "CircuitState"]


class CircuitState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@final
class CircuitBreaker:
    """The circuit towards one remote address."""

    __slots__ = ("_rng", "cooldown", "failures", "opened", "probe_at", "state", "threshold")

    def __init__(self, threshold: int, cooldown: float, rng: random.Random) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._rng = rng
        self.state = CircuitState.CLOSED
        self.failures = 0  # consecutive
        self.probe_at = 0.0
        self.opened = 0  # times it opened

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state.value} failures={self.failures}>"

    def allow(self, now: float) -> bool:
        """Whether a call may go out now; a True in half-open state makes it the probe."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN and now >= self.probe_at:
            self.state = CircuitState.HALF_OPEN
            return True
        return False  # open and cooling down, or a probe is already out

    def retry_in(self, now: float) -> float:
        """Seconds until a probe will be let through (0 once one may be)."""
        return max(0.0, self.probe_at - now) if self.state is CircuitState.OPEN else 0.0

    def record_success(self) -> None:
        self.failures = 0
        self.state = CircuitState.CLOSED

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED and self.failures >= self.threshold
        ):
            self.state = CircuitState.OPEN
            self.opened += 1
            self.probe_at = now + self.cooldown * (1.0 - 0.5 * self._rng.random())

    def probe_abandoned(self) -> None:
        """The probe ended without an answer either way (cancelled): allow another."""
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.OPEN
            self.probe_at = 0.0

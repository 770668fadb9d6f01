"""``CircuitBreaker``: fail fast towards a remote that keeps failing.

After ``threshold`` consecutive failed calls (a call that times out, or fails
because its connection could not be made or broke) the circuit *opens*: calls fail at once with
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
    """Where a destination's circuit breaker stands (``ClientTransport.circuit_state``):
    closed (calls go through), open (they fail at once with ``CircuitOpen``), or
    half-open (one probe call is let through to decide)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@final
class CircuitBreaker:
    """The circuit towards one remote address."""

    __slots__ = ("_rng", "cooldown", "failures", "probe_at", "state", "threshold")

    def __init__(self, threshold: int, cooldown: float, rng: random.Random) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._rng = rng
        self.state = CircuitState.CLOSED
        self.failures = 0  # consecutive
        self.probe_at = 0.0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state.value} failures={self.failures}>"

    def admit(self, now: float) -> bool | None:
        """Whether a call may go out now: None if not, True if it is the probe (the
        one call let through after the cool-down), False for any call while closed.

        Only the probe's outcome decides a half-open circuit: pass its answer back
        as ``probe`` to :meth:`record_failure` and call :meth:`probe_abandoned`
        only for it.
        """
        state = self.state
        if state is CircuitState.CLOSED:
            return False
        if state is CircuitState.OPEN and now >= self.probe_at:
            self.state = CircuitState.HALF_OPEN
            return True
        return None  # open and cooling down, or a probe is already out

    def retry_in(self, now: float) -> float:
        """Seconds until a probe will be let through (0 once one may be)."""
        return max(0.0, self.probe_at - now) if self.state is CircuitState.OPEN else 0.0

    def record_success(self) -> None:
        """Any call's answer (the probe's, or a late one's) shows the remote answers."""
        self.failures = 0
        self.state = CircuitState.CLOSED

    def record_failure(self, now: float, *, probe: bool = False) -> None:
        if probe:
            if self.state is CircuitState.HALF_OPEN:
                self._open(now)
            return
        if self.state is CircuitState.CLOSED:
            self.failures += 1
            if self.failures >= self.threshold:
                self._open(now)
        # Open or half open: a late failure of a call admitted earlier changes nothing.

    def _open(self, now: float) -> None:
        self.state = CircuitState.OPEN
        self.probe_at = now + self.cooldown * (1.0 - 0.5 * self._rng.random())

    def probe_abandoned(self) -> None:
        """The probe ended without an outcome (cancelled, or failed before it was
        queued): let another through."""
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.OPEN
            self.probe_at = 0.0

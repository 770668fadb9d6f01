"""The state of the one simulation iteration currently running, if any.

Simulation helpers (``buggify``, the assertions, the simulated network) need the
run's seed-derived state without the user threading it through every call.  A
:class:`contextvars.ContextVar` set around ``trio.run`` does that: every task of
the run inherits it, code outside a simulation sees ``None`` and turns into a
no-op, and two simulations on two threads cannot see each other.
"""

from __future__ import annotations

import random
from contextvars import ContextVar
from dataclasses import dataclass, field
from hashlib import blake2b

from moonpool._ground._fault_plan import InjectedFault
from moonpool._ground._timeline import Timeline
from moonpool._ground._wakeups import Wakeups

__all__ = ["SimRun", "current_run", "derive_random", "in_simulation", "sim_random", "stable_hash"]

_FNV_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF


def stable_hash(text: str) -> int:
    """A 64-bit FNV-1a hash of ``text``: unlike ``hash()``, the same in every process."""
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value = ((value ^ byte) * _FNV_PRIME) & _MASK64
    return value


def derive_random(seed: int, stream: str) -> random.Random:
    """An independent, reproducible random stream for one part of a run.

    Separate streams keep parts from perturbing each other: a network fault
    decision added in a new release does not change which request a workload
    picks.  String seeds are hashed with SHA-512 by ``random.Random``, so the
    result does not depend on ``PYTHONHASHSEED``.
    """
    return random.Random(f"moonpool/{seed}/{stream}")


@dataclass(eq=False)
class AssertionRecord:
    """Per-site counts for one ``always``/``sometimes``/``reachable``/``unreachable``."""

    kind: str
    message: str
    hits: int = 0
    true_count: int = 0
    false_count: int = 0


@dataclass(eq=False)
class SimRun:
    """Everything one iteration accumulates; owned by the runtime, read by helpers."""

    seed: int
    buggify_enabled: bool
    buggify_activation: float = 0.25
    #: False once every workload's ``run`` has returned: from then on the network
    #: injects no faults and buggify never fires (the settle and check phases).
    chaos_active: bool = True
    events: int = 0
    trace_hash: int = 0xCBF29CE484222325
    faults: dict[str, int] = field(default_factory=dict)
    #: Things the system under test did that a report should show, not faults
    #: injected into it (dead letters, say): name -> count.
    observed: dict[str, int] = field(default_factory=dict)
    assertions: dict[tuple[str, str], AssertionRecord] = field(default_factory=dict)
    assertion_failures: list[str] = field(default_factory=list)
    #: The values passed to the first violated ``always``/``unreachable`` (repr'd).
    violation_details: dict[str, str] = field(default_factory=dict)
    #: Per buggify site reached: its own random stream when active, else None.
    buggify_sites: dict[str, random.Random | None] = field(default_factory=dict)
    #: Keep the whole timeline (a replay asked for it), not just its tail.
    record_timeline: bool = False
    #: The names of the faults allowed to happen (a shrink's replay), or None: all.
    fault_plan: frozenset[str] | None = None
    #: Every fault that happened and could be suppressed, in order (for shrinking).
    fault_log: list[InjectedFault] = field(default_factory=list)
    #: The simulated network's timed wake-ups, fired by the run-loop instrument
    #: that drives this run's clock (None: nobody does, timers are used instead).
    wakeups: Wakeups | None = None
    timeline: Timeline = field(init=False)
    random: random.Random = field(init=False)
    _ordinals: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.random = derive_random(self.seed, "sim")
        self.timeline = Timeline(complete=self.record_timeline)

    def trace(self, value: int) -> None:
        """Fold one observed event into the trace hash (FNV-1a over 64-bit words)."""
        self.trace_hash = ((self.trace_hash ^ (value & _MASK64)) * _FNV_PRIME) & _MASK64

    def trace_text(self, text: str) -> None:
        # BLAKE2b in C, not stable_hash's byte loop: this runs for every fault
        # injected (a tenth as long), and nothing outside the run depends on it.
        self.trace(int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little"))

    def observe(self, name: str) -> None:
        """Count one occurrence of ``name`` for the report (see :attr:`observed`)."""
        self.observed[name] = self.observed.get(name, 0) + 1

    def admit_fault(
        self,
        name: str,
        family: str,
        text: str,
        host: str | None = None,
        ordinal: int | None = None,
    ) -> bool:
        """The dice decided on a fault: whether it happens (the fault plan may say no).

        ``name`` says what the decision was about (``reset/a->b``); the fault is
        ``name#k``, k counting such decisions so far (or ``ordinal``).  An admitted
        fault is traced, put on the timeline and logged for shrinking; the caller
        counts it.
        """
        if ordinal is None:
            ordinal = self._ordinals.get(name, 0)
            self._ordinals[name] = ordinal + 1
        fault_id = f"{name}#{ordinal}"
        plan = self.fault_plan
        if plan is not None and fault_id not in plan:
            return False
        now, where, _, _ = self.timeline.add("fault", text, host)
        self.fault_log.append(InjectedFault(fault_id, family, now, where, text))
        self.trace_text(f"fault:{fault_id}")
        return True

    def note(self, kind: str, text: str, host: str | None = None) -> None:
        """Put an event on the timeline (``host``: the running task's, by default)."""
        self.timeline.add(kind, text, host)


_current: ContextVar[SimRun | None] = ContextVar("moonpool_sim_run", default=None)


def current_run() -> SimRun | None:
    """The running iteration's state, or ``None`` outside a simulation."""
    return _current.get()


def set_current_run(run: SimRun | None) -> object:
    return _current.set(run)


def reset_current_run(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def in_simulation() -> bool:
    """True inside a simulation iteration."""
    return _current.get() is not None


def sim_random() -> random.Random:
    """The current simulation's seeded random stream, for code that has no ``ctx``.

    Raises ``RuntimeError`` outside a simulation: code that needs randomness in
    both worlds should take a ``random.Random`` argument instead.
    """
    run = _current.get()
    if run is None:
        raise RuntimeError("moonpool.sim.random() called outside a simulation")
    return run.random

"""Attrition: processes killed and rebooted during the run phase, drawn from the seed.

The idea is FoundationDB's ``MachineAttrition`` workload and upstream moonpool's
``Attrition``: while the workloads run, processes die -- crashing at once or
rebooting gracefully -- and come back after a recovery delay, with at most
``max_dead`` of them down at any time.  This module is the configuration and
the pure draws (no clock, no trio); ``_processes`` carries them out.

Each decision comes from a stream keyed by what it decides -- the kill times
from one, the victim, kind and recovery of the k-th kill from another -- so that
suppressing one kill (when shrinking a failure) leaves every other where it was.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import final

import msgspec

from moonpool._ground._run import derive_random
from moonpool.sim._context import KILL_KINDS, KillKind

__all__ = ["MIN_INTERVAL", "Attrition", "KillPlan"]

MIN_INTERVAL = 0.001


class Attrition(msgspec.Struct, frozen=True, kw_only=True):
    """How processes are killed during the run phase (see ``set_attrition``).

    ``interval`` is the mean simulated time between kills (a Poisson process, at
    least a millisecond); ``crash``, ``reboot`` and ``wipe`` are the relative
    weights of the kinds (0 turns one off; ``wipe``, a crash that also empties
    the process's disk, is off unless asked for: a wiped server has lost its
    data, and only a test whose model allows that should see it); attrition
    never kills a process while ``max_dead`` are down (processes a workload
    killed count too); ``recovery`` is the (low, high) range of the delay
    before a killed process boots again.  In swarm mode
    (``ChaosConfig(swarm=True)``) each seed draws its own variant: a subset of
    the kinds, a ``max_dead`` between 1 and this one, and an interval between
    half and twice this one.
    """

    max_dead: int = 1
    interval: float = 3.0
    crash: float = 1.0
    reboot: float = 1.0
    wipe: float = 0.0
    recovery: tuple[float, float] = (0.5, 3.0)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_dead, int)
            or isinstance(self.max_dead, bool)
            or self.max_dead < 1
        ):
            raise ValueError(f"Attrition.max_dead must be an integer >= 1, got {self.max_dead!r}")
        # Written so that NaN fails too.  Below a millisecond, kills would outnumber
        # everything else the simulation does.
        if isinstance(self.interval, bool) or not MIN_INTERVAL <= self.interval < math.inf:
            raise ValueError(
                f"Attrition.interval must be a finite number of seconds >= {MIN_INTERVAL}, "
                f"got {self.interval!r}"
            )
        for kind in KILL_KINDS:
            weight = getattr(self, kind)
            if isinstance(weight, bool) or not 0 <= weight < math.inf:
                raise ValueError(f"Attrition.{kind} is a weight >= 0, got {weight!r}")
        if not any(getattr(self, kind) > 0 for kind in KILL_KINDS):
            raise ValueError("Attrition needs a kind with a weight > 0 (crash=, reboot= or wipe=)")
        recovery = self.recovery
        if not (isinstance(recovery, tuple) and len(recovery) == 2):
            raise ValueError(
                f"Attrition.recovery is a (low, high) pair of seconds, got {recovery!r}"
            )
        low, high = recovery
        if not 0 <= low <= high < math.inf:
            raise ValueError(
                f"Attrition.recovery needs finite 0 <= low <= high, got {self.recovery!r}"
            )

    def kinds(self) -> tuple[KillKind, ...]:
        """The kinds this configuration can draw, in canonical order."""
        return tuple(kind for kind in KILL_KINDS if getattr(self, kind) > 0)

    def for_seed(self, rng: random.Random, *, swarm: bool) -> Attrition:
        """The attrition one seed runs with: itself, or a swarm-drawn variant."""
        if not swarm:
            return self
        kinds = self.kinds()
        kept = [kind for kind in kinds if rng.random() < 0.5] or [rng.choice(kinds)]
        weights = {kind: (getattr(self, kind) if kind in kept else 0.0) for kind in KILL_KINDS}
        return msgspec.structs.replace(
            self,
            max_dead=rng.randint(1, self.max_dead),
            interval=self.interval * rng.uniform(0.5, 2.0),
            **weights,
        )


@final
@dataclass(frozen=True)
class KillPlan:
    """What the k-th kill of a seed does, if a victim is available then."""

    kind: KillKind
    recovery: float
    pick: float  # in [0, 1): which of the candidates, in name order

    def victim(self, candidates: list[str]) -> str:
        return sorted(candidates)[int(self.pick * len(candidates))]


class AttritionDraws:
    """The seeded draws of one seed's attrition."""

    def __init__(self, seed: int, config: Attrition) -> None:
        self.seed = seed
        self.config = config
        self._times = derive_random(seed, "attrition/times")
        self.kills = 0

    def next_gap(self) -> float:
        """Simulated seconds until the next kill attempt."""
        return self._times.expovariate(1.0 / self.config.interval)

    def plan(self) -> KillPlan:
        """The next kill's kind, recovery delay and victim pick."""
        rng = derive_random(self.seed, f"attrition/kill/{self.kills}")
        self.kills += 1
        kinds = self.config.kinds()
        kind = rng.choices(kinds, weights=[getattr(self.config, k) for k in kinds])[0]
        return KillPlan(kind=kind, recovery=rng.uniform(*self.config.recovery), pick=rng.random())

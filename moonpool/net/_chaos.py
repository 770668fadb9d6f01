"""What faults the simulated network injects, and how often.

A :class:`ChaosConfig` is plain frozen data (a msgspec Struct) so that a run's
configuration can be printed in its report, saved as JSON and loaded back.  The
decisions themselves are made by :mod:`moonpool.net._faults` from the run's seeded
random stream; this module only describes them.

Fault families (names used as keys in the report's fault counts):

``latency``          every delivery is delayed by a sampled one-way latency
``connect_failure``  a connect attempt is refused although someone listens
``connect_delay``    a connect attempt takes extra time before completing
``reset``            an established connection is reset mid-stream
``partial_io``       a write is split into chunks / a read returns fewer bytes
``partition``        a pair of hosts, or one host, is cut off for a while, then healed
``clog``             one direction of a connection stalls for a while
``bit_flip``         a byte in flight is corrupted (off by default: TCP checksums
                     make this rare in practice; turn it on to test checksums)
"""

from __future__ import annotations

import math
import random
from typing import Literal

import msgspec

__all__ = ["FAULT_FAMILIES", "ChaosConfig", "LatencyConfig"]

FAULT_FAMILIES = (
    "latency",
    "connect_failure",
    "connect_delay",
    "reset",
    "partial_io",
    "partition",
    "clog",
    "bit_flip",
)
"""The network's fault families, as ``ChaosConfig.enabled_families()`` and a report's
fault totals name them (``ChaosConfig.without()`` takes these names)."""


class LatencyConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One-way delivery latency, in simulated seconds.

    ``fixed`` always uses ``low``; ``uniform`` draws in ``[low, high]``;
    ``exponential`` draws ``low`` plus an exponential tail of mean ``high - low``
    (capped at ``10 * high`` so a run cannot stall on one absurd draw).
    With ``per_pair``, each (source, destination) pair gets its own base latency
    drawn once, and per-message jitter is drawn around it -- closer to a real
    network, where some links are simply slower than others.  ``per_pair`` does
    not apply to ``fixed``, which stays exact.
    """

    distribution: Literal["fixed", "uniform", "exponential"] = "uniform"
    low: float = 0.0005
    high: float = 0.005
    per_pair: bool = True

    def __post_init__(self) -> None:
        # Written so that NaN fails too; an infinite latency would never deliver.
        if not (0 <= self.low <= self.high < math.inf):
            raise ValueError(
                f"latency needs finite 0 <= low <= high, got low={self.low} high={self.high}"
            )

    def sample(self, rng: random.Random) -> float:
        if self.distribution == "fixed":
            return self.low
        if self.distribution == "uniform":
            return rng.uniform(self.low, self.high)
        mean = self.high - self.low
        if mean <= 0:
            return self.low
        return self.low + min(rng.expovariate(1.0 / mean), 10 * self.high)


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"ChaosConfig.{name} is a probability within [0, 1], got {value!r}")


def _check_range(name: str, value: tuple[float, float]) -> None:
    low, high = value
    # Written so that NaN fails too; an infinite duration would never come due.
    if not (0 <= low <= high < math.inf):
        raise ValueError(f"ChaosConfig.{name} needs finite 0 <= low <= high, got {value!r}")


class ChaosConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Network fault injection settings for :class:`~moonpool.net.SimNetwork`.

    Probabilities are per event: per connect attempt (``connect_failure``,
    ``connect_delay``), per write (``reset``, ``partial_io``, ``clog``) or per
    delivered chunk (``bit_flip``).  Partitions arrive as a Poisson process with
    the given mean interval.  With ``swarm`` on, each seed keeps a random subset
    of the enabled families (each with probability one half), so that rare
    combinations -- say, clogging without latency -- are explored too.
    """

    latency: LatencyConfig | None = None
    connect_failure: float = 0.0
    connect_delay: float = 0.0
    connect_delay_range: tuple[float, float] = (0.01, 1.0)
    reset: float = 0.0
    partial_io: float = 0.0
    partition_interval: float | None = None
    partition_duration: tuple[float, float] = (0.5, 5.0)
    clog: float = 0.0
    clog_duration: tuple[float, float] = (0.05, 1.0)
    bit_flip: float = 0.0
    swarm: bool = False

    def __post_init__(self) -> None:
        for name in ("connect_failure", "connect_delay", "reset", "partial_io", "clog", "bit_flip"):
            _check_probability(name, getattr(self, name))
        for name in ("connect_delay_range", "partition_duration", "clog_duration"):
            _check_range(name, getattr(self, name))
        interval = self.partition_interval
        # NaN slipped through a plain ``<= 0`` test, and inf crashed the network's
        # Poisson draw (expovariate(1/inf)); None is how to say "no partitions".
        if interval is not None and not 0 < interval < math.inf:
            raise ValueError(
                f"ChaosConfig.partition_interval must be finite and > 0 seconds, or None, "
                f"got {self.partition_interval!r}"
            )

    @classmethod
    def none(cls) -> ChaosConfig:
        """A perfect network: no latency, no faults.  Streams are lossless and ordered."""
        return cls()

    @classmethod
    def default(cls) -> ChaosConfig:
        """Realistic trouble: every family but bit flips, at rates a robust program survives."""
        return cls(
            latency=LatencyConfig(),
            connect_failure=0.05,
            connect_delay=0.1,
            reset=0.002,
            partial_io=0.3,
            partition_interval=30.0,
            clog=0.01,
        )

    @classmethod
    def swarm_default(cls) -> ChaosConfig:
        """:meth:`default` in swarm mode: each seed draws its own subset of families."""
        return msgspec.structs.replace(cls.default(), swarm=True)

    def enabled_families(self) -> tuple[str, ...]:
        """The fault families this configuration can inject, in canonical order."""
        enabled = {
            "latency": self.latency is not None,
            "connect_failure": self.connect_failure > 0,
            "connect_delay": self.connect_delay > 0,
            "reset": self.reset > 0,
            "partial_io": self.partial_io > 0,
            "partition": self.partition_interval is not None,
            "clog": self.clog > 0,
            "bit_flip": self.bit_flip > 0,
        }
        return tuple(family for family in FAULT_FAMILIES if enabled[family])

    def without(self, families: tuple[str, ...] | list[str]) -> ChaosConfig:
        """A copy with the named families switched off."""
        unknown = [family for family in families if family not in FAULT_FAMILIES]
        if unknown:
            raise ValueError(f"unknown fault families {unknown}; known: {list(FAULT_FAMILIES)}")
        off: dict[str, object] = {}
        for family in families:
            if family == "latency":
                off["latency"] = None
            elif family == "partition":
                off["partition_interval"] = None
            else:
                off[family] = 0.0
        return msgspec.structs.replace(self, **off)

    def for_seed(self, rng: random.Random) -> ChaosConfig:
        """The configuration one seed runs with: itself, or a swarm-drawn subset."""
        if not self.swarm:
            return self
        families = self.enabled_families()
        dropped = [family for family in families if rng.random() < 0.5]
        return msgspec.structs.replace(self.without(dropped), swarm=False)

"""Fault decisions for the simulated network, free of I/O.

Everything random the network does goes through :class:`FaultInjector`, which owns
the network's seeded random stream and counts what it injects.  Keeping the
decisions here (not scattered through stream code) makes them testable without an
event loop and keeps the order of random draws -- and so the replay of a seed --
easy to reason about.

Partitions are not driven by a background task: they form a timeline drawn from
their own random stream and generated lazily up to "now" whenever the network
asks.  The timeline therefore depends only on the seed and the set of hosts, not
on when or how often it is consulted, and a deadlocked program is still seen as
deadlocked (no hidden timer keeps the run alive).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import final

from moonpool.net._chaos import FAULT_FAMILIES, ChaosConfig

__all__ = ["FaultInjector", "Partition", "PartitionTimeline"]


@final
@dataclass(frozen=True)
class Partition:
    """``a`` cannot talk to ``b`` (``b`` is None: ``a`` is isolated from everyone)."""

    a: str
    b: str | None
    start: float
    end: float

    def cuts(self, src: str, dst: str) -> bool:
        if self.b is None:
            return (src == self.a) != (dst == self.a)
        return {src, dst} == {self.a, self.b}


class PartitionTimeline:
    """Random partitions as a Poisson process, plus partitions asked for by tests."""

    def __init__(
        self,
        rng: random.Random,
        mean_interval: float | None,
        duration: tuple[float, float],
        hosts: Callable[[], Sequence[str]],
    ) -> None:
        self._rng = rng
        self._mean_interval = mean_interval
        self._duration = duration
        self._hosts = hosts
        self._next_start = rng.expovariate(1.0 / mean_interval) if mean_interval else None
        self.active: list[Partition] = []
        self.generated = 0

    def add(self, partition: Partition) -> None:
        self.active.append(partition)

    def stop(self) -> None:
        """Heal every partition now and generate no more (asked-for ones still work)."""
        self.active = []
        self._next_start = None

    def _advance(self, now: float) -> None:
        if not self.active and (self._next_start is None or self._next_start > now):
            return  # the common case, on every write: nothing to generate or expire
        while self._next_start is not None and self._next_start <= now:
            start = self._next_start
            hosts = sorted(self._hosts())
            if len(hosts) >= 2:
                length = self._rng.uniform(*self._duration)
                a = self._rng.choice(hosts)
                if self._rng.random() < 0.5:
                    b: str | None = None
                else:
                    b = self._rng.choice([h for h in hosts if h != a])
                self.active.append(Partition(a, b, start, start + length))
                self.generated += 1
            assert self._mean_interval is not None
            self._next_start = start + self._rng.expovariate(1.0 / self._mean_interval)
        self.active = [p for p in self.active if p.end > now]

    def blocked_until(self, src: str, dst: str, now: float) -> float | None:
        """When traffic from ``src`` to ``dst`` may flow again, or None if it flows now."""
        self._advance(now)
        end = None
        for partition in self.active:
            if partition.start <= now and partition.cuts(src, dst):
                end = partition.end if end is None else max(end, partition.end)
        return end


class FaultInjector:
    """The simulated network's dice: seeded, counted, and traced."""

    def __init__(
        self,
        seed: int,
        chaos: ChaosConfig,
        hosts: Callable[[], Sequence[str]],
        on_fault: Callable[[str, str], None] | None = None,
    ) -> None:
        self.chaos = chaos
        self.active = True
        self.rng = random.Random(f"moonpool/{seed}/network")
        self.counts: dict[str, int] = {}
        self._on_fault = on_fault
        self._pair_latency: dict[tuple[str, str], float] = {}
        self.partitions = PartitionTimeline(
            random.Random(f"moonpool/{seed}/partitions"),
            chaos.partition_interval,
            chaos.partition_duration,
            hosts,
        )

    def record(self, family: str, detail: str = "") -> None:
        assert family in FAULT_FAMILIES or family == "buggify", family
        self.counts[family] = self.counts.get(family, 0) + 1
        if self._on_fault is not None:
            self._on_fault(family, detail)

    def calm(self) -> None:
        """Stop every fault (latency stays: it is how networks are, not a fault event)."""
        self.active = False
        self.partitions.stop()

    def _chance(self, probability: float) -> bool:
        return probability > 0 and self.active and self.rng.random() < probability

    # -- connect ------------------------------------------------------------------

    def connect_fails(self, src: str, address: str) -> bool:
        if self._chance(self.chaos.connect_failure):
            self.record("connect_failure", f"{src}->{address}")
            return True
        return False

    def connect_delay(self, src: str, address: str) -> float:
        if self._chance(self.chaos.connect_delay):
            delay = self.rng.uniform(*self.chaos.connect_delay_range)
            self.record("connect_delay", f"{src}->{address}")
            return delay
        return 0.0

    # -- data path ----------------------------------------------------------------

    def latency(self, src: str, dst: str, *, count: bool = True) -> float:
        config = self.chaos.latency
        if config is None:
            return 0.0
        # A fixed latency is exact ("always uses low"): no per-pair base, no jitter.
        if config.per_pair and config.distribution != "fixed":
            base = self._pair_latency.get((src, dst))
            if base is None:
                base = self._pair_latency[(src, dst)] = config.sample(self.rng)
            # Jitter of up to 20% around the pair's base latency.
            value = base * (0.9 + 0.2 * self.rng.random())
        else:
            value = config.sample(self.rng)
        if count:
            self.record("latency")
        return value

    def resets(self, src: str, dst: str) -> bool:
        if self._chance(self.chaos.reset):
            self.record("reset", f"{src}->{dst}")
            return True
        return False

    def split_points(self, size: int) -> list[int]:
        """Where to cut one write into several deliveries (empty: deliver whole)."""
        if size < 2 or not self._chance(self.chaos.partial_io):
            return []
        pieces = self.rng.randint(2, min(4, size))
        points = sorted(self.rng.sample(range(1, size), pieces - 1))
        self.record("partial_io", f"write split in {pieces}")
        return points

    def short_read(self, available: int) -> int:
        """How many of ``available`` bytes one receive returns."""
        if available < 2 or not self._chance(self.chaos.partial_io):
            return available
        self.record("partial_io", "short read")
        return self.rng.randint(1, available - 1)

    def clog_duration(self, src: str, dst: str) -> float:
        if self._chance(self.chaos.clog):
            self.record("clog", f"{src}->{dst}")
            return self.rng.uniform(*self.chaos.clog_duration)
        return 0.0

    def maybe_flip_bit(self, data: bytes) -> bytes:
        if not data or not self._chance(self.chaos.bit_flip):
            return data
        position = self.rng.randrange(len(data) * 8)
        corrupted = bytearray(data)
        corrupted[position // 8] ^= 1 << (position % 8)
        self.record("bit_flip", f"bit {position}")
        return bytes(corrupted)

    def partition_until(self, src: str, dst: str, now: float) -> float | None:
        before = self.partitions.generated
        until = self.partitions.blocked_until(src, dst, now)
        for _ in range(self.partitions.generated - before):
            self.record("partition")
        return until

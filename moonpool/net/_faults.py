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

import hashlib
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
        admit: Callable[[Partition, int], bool] | None = None,
    ) -> None:
        self._rng = rng
        self._admit = admit
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
                partition = Partition(a, b, start, start + length)
                # Drawn whether or not it is then suppressed: the k-th stays the k-th.
                if self._admit is None or self._admit(partition, self.generated):
                    self.active.append(partition)
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


_MASK64 = 0xFFFFFFFFFFFFFFFF
_TWO_64 = float(1 << 64)


def _stable_key(text: str) -> int:
    """64 bits of SHA-256 of ``text``: the same in every process."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: a cheap, well-spread hash of a 64-bit integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


Decision = tuple[str, str, str]
"""What a decision is about: (kind, source, destination), e.g. ("reset", "a", "b")."""


def _name(decision: Decision, at: int | None) -> str:
    """The fault's name (see ``_fault_plan``): ``kind/src->dst``, ``@offset`` if any."""
    kind, src, dst = decision
    return f"{kind}/{src}->{dst}" if at is None else f"{kind}/{src}->{dst}@{at}"


def _where(at: int | None) -> str:
    return "" if at is None else f" at byte {at}"


class _Dice:
    """The details of one fault decision (how many pieces, how long a clog), drawn
    from its hash: far cheaper than seeding a ``random.Random`` per decision."""

    __slots__ = ("_state",)

    def __init__(self, state: int) -> None:
        self._state = state

    def random(self) -> float:
        self._state = _mix64(self._state + 1)
        return self._state / _TWO_64

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def randrange(self, stop: int) -> int:
        return min(int(self.random() * stop), stop - 1)

    def randint(self, low: int, high: int) -> int:
        return low + self.randrange(high - low + 1)

    def sample(self, population: range, count: int) -> list[int]:
        picked: list[int] = []
        while len(picked) < count:  # count is small (< 4): rejection is quick
            value = population[self.randrange(len(population))]
            if value not in picked:
                picked.append(value)
        return picked


Admit = Callable[[str, str, str, str, "int | None"], bool]
"""Whether a fault the dice chose happens: (name, family, text, host, ordinal) -> bool.

Inside a simulation it is the run's ``admit_fault`` (which applies a fault plan
and logs the fault); elsewhere every fault happens.
"""


def _always(name: str, family: str, text: str, host: str, ordinal: int | None) -> bool:
    return True


class FaultInjector:
    """The simulated network's dice: seeded, counted, and traced.

    Each kind of decision on each direction (``reset`` on client -> server, say)
    has dice of its own, which come up the same whether or not the fault is then
    allowed to happen.  A replay that suppresses one fault (a shrink, see
    :mod:`moonpool._ground._fault_plan`) therefore leaves every other decision
    where it was: only what the program does differently afterwards can move it.

    Decisions on the data path are made *at a byte offset* of their direction
    (``at``: the bytes written, or read, on it so far): whether the write that
    starts at byte 1234 of server -> client is reset is a pure function of the
    seed, the direction and 1234.  Splitting a write in two, or not, adds or
    removes a decision at the cut and moves no other -- so a shrink can drop the
    hundreds of split writes around a reset and keep the reset where it was.
    Decisions without a position (connects; ``at=None``) draw from a stream per
    decision kind and pair, in order.
    """

    def __init__(
        self,
        seed: int,
        chaos: ChaosConfig,
        hosts: Callable[[], Sequence[str]],
        admit: Admit | None = None,
    ) -> None:
        self.chaos = chaos
        self.active = True
        self.seed = seed
        self.counts: dict[str, int] = {}
        self._admit = admit or _always
        # Per decision: its stream (decisions without a position, and latency), the
        # hash key of positioned ones, and the last offset decided at (with a count).
        self._streams: dict[Decision, random.Random] = {}
        self._keys: dict[Decision, int] = {}
        self._last: dict[Decision, tuple[int, int]] = {}
        self._pair_latency: dict[tuple[str, str], float] = {}
        self.partitions = PartitionTimeline(
            random.Random(f"moonpool/{seed}/partitions"),
            chaos.partition_interval,
            chaos.partition_duration,
            hosts,
            admit=self._admit_partition,
        )

    def _stream(self, decision: Decision) -> random.Random:
        stream = self._streams.get(decision)
        if stream is None:
            seed = f"moonpool/{self.seed}/network/{_name(decision, None)}"
            stream = self._streams[decision] = random.Random(seed)
        return stream

    def _admit_partition(self, partition: Partition, ordinal: int) -> bool:
        where = f"{partition.a} isolated" if partition.b is None else f"{partition.a}|{partition.b}"
        text = f"partition {where} for {partition.end - partition.start:.3f}s"
        return self.record("partition", "partition", text, partition.a, ordinal=ordinal)

    def record(
        self, family: str, name: str, text: str, host: str, *, ordinal: int | None = None
    ) -> bool:
        """Count the fault ``name`` if it may happen (see :data:`Admit`); say whether."""
        assert family in FAULT_FAMILIES or family == "buggify", family
        if not self._admit(name, family, text, host, ordinal):
            return False
        self.counts[family] = self.counts.get(family, 0) + 1
        return True

    def calm(self) -> None:
        """Stop every fault (latency stays: it is how networks are, not a fault event)."""
        self.active = False
        self.partitions.stop()

    def _chance(
        self, decision: Decision, probability: float, at: int | None
    ) -> random.Random | _Dice | None:
        """Dice for the details of ``decision`` (at byte ``at``) if it is a fault.

        Keyed by tuples: the decision's name is formatted only when it comes up
        "fault", not on every write.
        """
        if probability <= 0 or not self.active:
            return None
        if at is None:
            stream = self._stream(decision)
            return stream if stream.random() < probability else None
        key = self._keys.get(decision)
        if key is None:
            seed = f"moonpool/{self.seed}/network/{_name(decision, None)}"
            key = self._keys[decision] = _stable_key(seed)
        # A second decision at the same byte (the write a reset refused, resent on a
        # new connection) gets dice of its own, or one reset would repeat forever.
        last = self._last.get(decision)
        again = last[1] + 1 if last is not None and last[0] == at else 0
        self._last[decision] = (at, again)
        value = _mix64(key ^ at ^ (again << 48))
        if value >= probability * _TWO_64:
            return None
        return _Dice(value)  # this one decision's details

    # -- connect ------------------------------------------------------------------

    def connect_fails(self, src: str, address: str) -> bool:
        decision = ("connect_failure", src, address)
        if self._chance(decision, self.chaos.connect_failure, None) is None:
            return False
        text = f"connect refused {src}->{address}"
        return self.record("connect_failure", _name(decision, None), text, src)

    def connect_delay(self, src: str, address: str) -> float:
        decision = ("connect_delay", src, address)
        stream = self._chance(decision, self.chaos.connect_delay, None)
        if stream is None:
            return 0.0
        delay = stream.uniform(*self.chaos.connect_delay_range)
        text = f"connect delayed {delay:.3f}s {src}->{address}"
        return delay if self.record("connect_delay", _name(decision, None), text, src) else 0.0

    # -- data path ----------------------------------------------------------------

    def latency(self, src: str, dst: str, *, count: bool = True) -> float:
        config = self.chaos.latency
        if config is None:
            return 0.0
        rng = self._stream(("latency", src, dst))
        # A fixed latency is exact ("always uses low"): no per-pair base, no jitter.
        if config.per_pair and config.distribution != "fixed":
            base = self._pair_latency.get((src, dst))
            if base is None:
                base = self._pair_latency[(src, dst)] = config.sample(rng)
            # Jitter of up to 20% around the pair's base latency.
            value = base * (0.9 + 0.2 * rng.random())
        else:
            value = config.sample(rng)
        if count:
            self.counts["latency"] = self.counts.get("latency", 0) + 1
        return value

    def resets(self, src: str, dst: str, at: int | None = None) -> bool:
        """Whether the write starting at byte ``at`` of ``src -> dst`` is reset."""
        decision = ("reset", src, dst)
        if self._chance(decision, self.chaos.reset, at) is None:
            return False
        text = f"reset {src}->{dst}{_where(at)}"
        return self.record("reset", _name(decision, at), text, src)

    def split_points(
        self, size: int, src: str = "", dst: str = "", at: int | None = None
    ) -> list[int]:
        """Where to cut one write into several deliveries (empty: deliver whole)."""
        if size < 2:
            return []
        decision = ("partial_io/write", src, dst)
        stream = self._chance(decision, self.chaos.partial_io, at)
        if stream is None:
            return []
        pieces = stream.randint(2, min(4, size))
        points = sorted(stream.sample(range(1, size), pieces - 1))
        text = f"write of {size} bytes split in {pieces} {src}->{dst}{_where(at)}"
        return points if self.record("partial_io", _name(decision, at), text, src) else []

    def short_read(
        self, available: int, src: str = "", dst: str = "", at: int | None = None
    ) -> int:
        """How many of ``available`` bytes one receive returns (``dst`` receives)."""
        if available < 2:
            return available
        decision = ("partial_io/read", src, dst)
        stream = self._chance(decision, self.chaos.partial_io, at)
        if stream is None:
            return available
        keep = stream.randint(1, available - 1)
        text = f"short read of {keep} of {available} bytes {src}->{dst}{_where(at)}"
        return keep if self.record("partial_io", _name(decision, at), text, dst) else available

    def clog_duration(self, src: str, dst: str, at: int | None = None) -> float:
        decision = ("clog", src, dst)
        stream = self._chance(decision, self.chaos.clog, at)
        if stream is None:
            return 0.0
        duration = stream.uniform(*self.chaos.clog_duration)
        text = f"clog {src}->{dst} for {duration:.3f}s{_where(at)}"
        return duration if self.record("clog", _name(decision, at), text, src) else 0.0

    def maybe_flip_bit(
        self, data: bytes, src: str = "", dst: str = "", at: int | None = None
    ) -> bytes:
        if not data:
            return data
        decision = ("bit_flip", src, dst)
        stream = self._chance(decision, self.chaos.bit_flip, at)
        if stream is None:
            return data
        position = stream.randrange(len(data) * 8)
        text = f"bit {position} flipped {src}->{dst}{_where(at)}"
        if not self.record("bit_flip", _name(decision, at), text, src):
            return data
        corrupted = bytearray(data)
        corrupted[position // 8] ^= 1 << (position % 8)
        return bytes(corrupted)

    def partition_until(self, src: str, dst: str, now: float) -> float | None:
        return self.partitions.blocked_until(src, dst, now)

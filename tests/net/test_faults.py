"""Fault decisions, tested without an event loop.

Rates are checked over many seeds and draws against the binomial (or Poisson)
distribution the configuration promises.  The tolerance is five standard
deviations: wide enough that a correct implementation never trips it (and the
seeds are fixed, so the test is deterministic anyway), narrow enough that a rate
off by a factor of two -- or a family that fires twice per decision, or never --
fails loudly.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import msgspec

from moonpool.net import FAULT_FAMILIES, ChaosConfig, LatencyConfig
from moonpool.net._faults import FaultInjector, Partition, PartitionTimeline

SEEDS = range(200)
HOSTS = ("client", "server", "storage")
SIGMAS = 5.0


def assert_binomial(hits: int, trials: int, p: float, what: str) -> None:
    expected = trials * p
    sd = math.sqrt(trials * p * (1 - p))
    assert abs(hits - expected) <= SIGMAS * sd, (
        f"{what}: {hits} of {trials} (rate {hits / trials:.4f}), expected {p} "
        f"({expected:.1f} +/- {SIGMAS * sd:.1f})"
    )


def assert_mean(values: list[float], mean: float, sd: float, what: str) -> None:
    """The sample mean is within SIGMAS standard errors of ``mean``."""
    tolerance = SIGMAS * sd / math.sqrt(len(values))
    observed = statistics.fmean(values)
    assert abs(observed - mean) <= tolerance, f"{what}: mean {observed}, expected {mean}"


def injector(seed: int, chaos: ChaosConfig, hosts: tuple[str, ...] = HOSTS) -> FaultInjector:
    return FaultInjector(seed, chaos, lambda: hosts)


# -- per-family rates -------------------------------------------------------------


def test_connect_failure_rate() -> None:
    chaos = ChaosConfig(connect_failure=0.05)
    hits = trials = 0
    for seed in SEEDS:
        faults = injector(seed, chaos)
        outcomes = [faults.connect_fails("client", "server:1") for _ in range(100)]
        assert faults.counts.get("connect_failure", 0) == sum(outcomes)
        hits += sum(outcomes)
        trials += len(outcomes)
    assert_binomial(hits, trials, 0.05, "connect_failure")


def test_connect_delay_rate_and_range() -> None:
    chaos = ChaosConfig(connect_delay=0.1, connect_delay_range=(0.2, 0.7))
    delays: list[float] = []
    trials = 0
    for seed in SEEDS:
        faults = injector(seed, chaos)
        drawn = [faults.connect_delay("client", "server:1") for _ in range(100)]
        trials += len(drawn)
        delayed = [d for d in drawn if d > 0]
        assert faults.counts.get("connect_delay", 0) == len(delayed)
        delays.extend(delayed)
    assert_binomial(len(delays), trials, 0.1, "connect_delay")
    assert all(0.2 <= d <= 0.7 for d in delays)
    assert_mean(delays, 0.45, 0.5 / math.sqrt(12), "connect delay")


def test_reset_rate() -> None:
    chaos = ChaosConfig(reset=0.002)
    hits = trials = 0
    for seed in SEEDS:
        faults = injector(seed, chaos)
        outcomes = [faults.resets("client", "server") for _ in range(1000)]
        assert faults.counts.get("reset", 0) == sum(outcomes)
        hits += sum(outcomes)
        trials += len(outcomes)
    assert_binomial(hits, trials, 0.002, "reset")


def test_partial_write_rate_and_split_shape() -> None:
    chaos = ChaosConfig(partial_io=0.3)
    splits = trials = 0
    piece_counts: Counter[int] = Counter()
    for seed in SEEDS:
        faults = injector(seed, chaos)
        rng = random.Random(seed)
        for _ in range(50):
            size = rng.randint(2, 64)
            points = faults.split_points(size)
            trials += 1
            if not points:
                continue
            splits += 1
            # Cut points are strictly inside the write and strictly increasing, so
            # every piece is non-empty and the pieces concatenate back to the write.
            assert points == sorted(set(points))
            assert points[0] > 0 and points[-1] < size
            assert 2 <= len(points) + 1 <= min(4, size)
            piece_counts[len(points) + 1] += 1
    assert_binomial(splits, trials, 0.3, "partial_io (write splits)")
    assert set(piece_counts) == {2, 3, 4}


def test_short_read_rate_and_bounds() -> None:
    chaos = ChaosConfig(partial_io=0.3)
    short = trials = 0
    for seed in SEEDS:
        faults = injector(seed, chaos)
        before = short
        for available in range(2, 52):
            kept = faults.short_read(available)
            trials += 1
            assert 1 <= kept <= available
            short += kept < available
        assert faults.counts.get("partial_io", 0) == short - before
    assert_binomial(short, trials, 0.3, "partial_io (short reads)")


def test_partial_io_counts_every_split_and_short_read() -> None:
    faults = injector(7, ChaosConfig(partial_io=0.5))
    injected = 0
    for _ in range(500):
        injected += bool(faults.split_points(100))
        injected += faults.short_read(100) < 100
    assert faults.counts["partial_io"] == injected


def test_tiny_transfers_are_never_split_and_draw_nothing() -> None:
    faults = injector(1, ChaosConfig(partial_io=1.0))
    state = _draw_states(faults)
    assert faults.split_points(0) == []
    assert faults.split_points(1) == []
    assert faults.short_read(0) == 0
    assert faults.short_read(1) == 1
    assert _draw_states(faults) == state
    assert faults.counts == {}


def test_clog_rate_and_duration() -> None:
    chaos = ChaosConfig(clog=0.01, clog_duration=(0.05, 1.0))
    durations: list[float] = []
    trials = 0
    for seed in SEEDS:
        faults = injector(seed, chaos)
        drawn = [faults.clog_duration("client", "server") for _ in range(500)]
        trials += len(drawn)
        clogs = [d for d in drawn if d > 0]
        assert faults.counts.get("clog", 0) == len(clogs)
        durations.extend(clogs)
    assert_binomial(len(durations), trials, 0.01, "clog")
    assert all(0.05 <= d <= 1.0 for d in durations)


def test_bit_flip_rate_and_exactly_one_bit() -> None:
    chaos = ChaosConfig(bit_flip=0.02)
    flips = trials = 0
    positions: Counter[int] = Counter()
    for seed in SEEDS:
        faults = injector(seed, chaos)
        rng = random.Random(seed)
        before = flips
        for _ in range(200):
            data = rng.randbytes(4)
            out = faults.maybe_flip_bit(data)
            trials += 1
            assert len(out) == len(data)
            diff = int.from_bytes(data, "big") ^ int.from_bytes(out, "big")
            assert diff.bit_count() in (0, 1)
            if diff:
                flips += 1
                positions[diff.bit_length() - 1] += 1
        assert faults.counts.get("bit_flip", 0) == flips - before
    assert_binomial(flips, trials, 0.02, "bit_flip")
    assert len(positions) > 24, "flips should land anywhere in the chunk, not on one bit"


def test_bit_flip_counts_match_corrupted_chunks() -> None:
    faults = injector(3, ChaosConfig(bit_flip=0.5))
    corrupted = sum(faults.maybe_flip_bit(b"payload") != b"payload" for _ in range(400))
    assert faults.counts["bit_flip"] == corrupted
    assert faults.maybe_flip_bit(b"") == b""


# -- latency ----------------------------------------------------------------------


def test_latency_is_applied_to_every_delivery_within_bounds() -> None:
    config = LatencyConfig(distribution="uniform", low=0.001, high=0.01, per_pair=False)
    faults = injector(5, ChaosConfig(latency=config))
    values = [faults.latency("client", "server") for _ in range(2000)]
    assert faults.counts["latency"] == 2000
    assert all(0.001 <= v <= 0.01 for v in values)
    assert_mean(values, 0.0055, 0.009 / math.sqrt(12), "uniform latency")


def test_per_pair_latency_is_a_stable_base_with_jitter() -> None:
    config = LatencyConfig(distribution="uniform", low=0.001, high=0.1, per_pair=True)
    faults = injector(11, ChaosConfig(latency=config))
    pairs = [(a, b) for a in HOSTS for b in HOSTS if a != b]
    samples = {pair: [faults.latency(*pair) for _ in range(200)] for pair in pairs}
    for pair, values in samples.items():
        # +/-10% around one base: max/min can never exceed 1.1/0.9.
        assert max(values) / min(values) <= 1.1 / 0.9 + 1e-9, pair
        assert min(values) >= 0.001 * 0.9 and max(values) <= 0.1 * 1.1
    bases = {round(statistics.fmean(values), 6) for values in samples.values()}
    assert len(bases) == len(pairs), "each direction of each pair gets its own base latency"


def test_latency_distributions() -> None:
    rng = random.Random(99)
    fixed = LatencyConfig(distribution="fixed", low=0.25, high=0.5)
    state = rng.getstate()
    assert {fixed.sample(rng) for _ in range(100)} == {0.25}
    assert rng.getstate() == state, "a fixed latency draws no randomness"

    uniform = LatencyConfig(distribution="uniform", low=0.01, high=0.03)
    values = [uniform.sample(rng) for _ in range(5000)]
    assert all(0.01 <= v <= 0.03 for v in values)
    assert_mean(values, 0.02, 0.02 / math.sqrt(12), "uniform")

    exponential = LatencyConfig(distribution="exponential", low=0.001, high=0.005)
    values = [exponential.sample(rng) for _ in range(5000)]
    assert all(0.001 <= v <= 0.001 + 10 * 0.005 for v in values)
    # Mean of low + Exp(mean=high-low) is high (the 10*high cap is ~12 means out).
    assert_mean(values, 0.005, 0.004, "exponential")
    assert LatencyConfig(distribution="exponential", low=0.2, high=0.2).sample(rng) == 0.2


def test_no_latency_configured_means_zero_and_no_count() -> None:
    faults = injector(1, ChaosConfig.none())
    assert faults.latency("a", "b") == 0.0
    assert faults.counts == {}


# -- a perfect network, reproducibility --------------------------------------------


def test_none_injects_nothing_and_draws_nothing() -> None:
    faults = injector(42, ChaosConfig.none())
    state = _draw_states(faults)
    for _ in range(100):
        assert not faults.connect_fails("a", "b:1")
        assert faults.connect_delay("a", "b:1") == 0.0
        assert faults.latency("a", "b") == 0.0
        assert not faults.resets("a", "b")
        assert faults.split_points(1000) == []
        assert faults.short_read(1000) == 1000
        assert faults.clog_duration("a", "b") == 0.0
        assert faults.maybe_flip_bit(b"data") == b"data"
        assert faults.partition_until("a", "b", 1e6) is None
    assert faults.counts == {}
    # Switched-off families do not consume randomness: turning one on or off in a
    # config does not reshuffle the decisions of the others more than necessary.
    assert _draw_states(faults) == state


def _decisions(seed: int, chaos: ChaosConfig) -> tuple[list[object], dict[str, int]]:
    faults = injector(seed, chaos)
    trace: list[object] = []
    for step in range(300):
        trace.append(faults.connect_fails("client", "server:1"))
        trace.append(faults.connect_delay("client", "server:1"))
        trace.append(faults.latency("client", "server"))
        trace.append(faults.resets("server", "client"))
        trace.append(tuple(faults.split_points(100)))
        trace.append(faults.short_read(100))
        trace.append(faults.clog_duration("client", "server"))
        trace.append(faults.maybe_flip_bit(b"abcdef"))
        trace.append(faults.partition_until("client", "server", step * 0.5))
    return trace, faults.counts


def test_same_seed_same_decisions_and_counts() -> None:
    chaos = msgspec.structs.replace(ChaosConfig.default(), bit_flip=0.01)
    first = _decisions(1234, chaos)
    assert _decisions(1234, chaos) == first
    assert _decisions(1235, chaos)[0] != first[0]
    # Every family fired at least once in this workload, so the comparison is not vacuous.
    assert set(first[1]) == set(FAULT_FAMILIES)


def _draw_states(faults: FaultInjector) -> dict[str, object]:
    """Where every decision stream of the injector stands (white box)."""
    return {name: stream.getstate() for name, stream in faults._streams.items()}


def test_admit_sees_every_injection_and_can_refuse_it() -> None:
    seen: list[tuple[str, str, str, str]] = []

    def admit(name: str, family: str, text: str, host: str, ordinal: int | None) -> bool:
        seen.append((name, family, text, host))
        return family != "reset"  # resets are suppressed, connect failures happen

    faults = FaultInjector(8, ChaosConfig(reset=0.5, connect_failure=0.5), lambda: HOSTS, admit)
    outcomes = []
    for _ in range(100):
        outcomes.append(faults.resets("client", "server"))
        outcomes.append(faults.connect_fails("client", "server:4500"))
    assert Counter(family for _, family, _, _ in seen) == {
        "reset": sum(1 for name, *_ in seen if name.startswith("reset/")),
        "connect_failure": faults.counts["connect_failure"],
    }
    assert "reset" not in faults.counts, "a refused fault is not counted"
    assert not any(outcomes[0::2]), "a refused reset does not happen"
    assert sum(outcomes[1::2]) == faults.counts["connect_failure"] > 0
    assert ("reset/client->server", "reset", "reset client->server", "client") in seen


def _resets_towards(faults: FaultInjector, dst: str, count: int) -> list[bool]:
    return [faults.resets("client", dst) for _ in range(count)]


def test_each_decision_has_its_own_stream() -> None:
    """Decisions about one direction do not move the dice of another: a shrink that
    suppresses faults (and so changes what the program does) keeps the rest in place."""
    chaos = ChaosConfig(reset=0.3, partial_io=0.3)
    alone = injector(5, chaos)
    expected = _resets_towards(alone, "a", 50)
    busy = injector(5, chaos)
    for _ in range(37):  # other decisions, in between, about other things
        busy.resets("client", "b")
        busy.split_points(100, "client", "a")
    assert _resets_towards(busy, "a", 50) == expected

    refused = FaultInjector(5, chaos, lambda: HOSTS, lambda *args: False)
    assert not any(_resets_towards(refused, "a", 50))
    # The dice were drawn all the same: once faults are allowed again, the next
    # decisions are the ones an unrestricted run would make.
    refused._admit = lambda *args: True
    assert _resets_towards(refused, "a", 20) == _resets_towards(alone, "a", 20)


# -- partitions --------------------------------------------------------------------


def _timeline(
    seed: int,
    mean_interval: float | None = 30.0,
    duration: tuple[float, float] = (0.5, 5.0),
    hosts: tuple[str, ...] = HOSTS,
) -> PartitionTimeline:
    return PartitionTimeline(random.Random(seed), mean_interval, duration, lambda: hosts)


def _observed(timeline: PartitionTimeline, until: float, step: float) -> list[Partition]:
    """Every partition the timeline produces up to ``until``, consulted every ``step``."""
    seen: dict[Partition, None] = {}
    for i in range(int(until / step) + 1):
        timeline.blocked_until("client", "server", i * step)
        seen.update(dict.fromkeys(timeline.active))
    return list(seen)


def test_partition_cuts() -> None:
    pair = Partition("a", "b", 0.0, 1.0)
    assert pair.cuts("a", "b") and pair.cuts("b", "a")
    assert not pair.cuts("a", "c") and not pair.cuts("c", "b") and not pair.cuts("a", "a")
    isolated = Partition("a", None, 0.0, 1.0)
    assert isolated.cuts("a", "b") and isolated.cuts("c", "a")
    assert not isolated.cuts("b", "c")
    assert not isolated.cuts("a", "a"), "a host can still talk to itself"


def test_manual_partition_starts_blocks_and_heals_on_time() -> None:
    timeline = _timeline(0, mean_interval=None)
    timeline.add(Partition("client", "server", 10.0, 20.0))
    timeline.add(Partition("client", None, 15.0, 25.0))
    assert timeline.blocked_until("client", "server", 9.99) is None
    assert timeline.blocked_until("client", "server", 10.0) == 20.0
    assert timeline.blocked_until("server", "client", 12.0) == 20.0
    # Overlapping partitions: traffic flows when the last one heals.
    assert timeline.blocked_until("server", "client", 16.0) == 25.0
    assert timeline.blocked_until("storage", "client", 16.0) == 25.0
    assert timeline.blocked_until("storage", "server", 16.0) is None
    assert timeline.blocked_until("client", "server", 24.99) == 25.0
    assert timeline.blocked_until("client", "server", 25.0) is None
    assert timeline.active == []


def test_partition_arrivals_are_poisson_at_the_configured_interval() -> None:
    horizon, mean_interval = 3000.0, 30.0
    total = 0
    for seed in SEEDS:
        faults = injector(seed, ChaosConfig(partition_interval=mean_interval))
        faults.partition_until("client", "server", horizon)
        assert faults.counts.get("partition", 0) == faults.partitions.generated
        total += faults.partitions.generated
    expected = len(SEEDS) * horizon / mean_interval
    assert abs(total - expected) <= SIGMAS * math.sqrt(expected), (total, expected)


def test_random_partitions_have_the_configured_shape_and_heal() -> None:
    isolations = total = 0
    for seed in range(20):
        partitions = _observed(_timeline(seed, 30.0, (0.5, 5.0)), until=600.0, step=0.1)
        assert partitions, "a 600 s window with a 30 s mean interval has partitions"
        starts = [p.start for p in partitions]
        assert starts == sorted(starts)
        for p in partitions:
            assert 0.5 <= p.end - p.start <= 5.0, p
            assert p.a in HOSTS
            assert p.b is None or (p.b in HOSTS and p.b != p.a), p
        isolations += sum(p.b is None for p in partitions)
        total += len(partitions)
    assert_binomial(isolations, total, 0.5, "isolations among random partitions")


def test_partition_timeline_does_not_depend_on_when_it_is_consulted() -> None:
    pairs = [(a, b) for a in HOSTS for b in HOSTS if a != b]
    for seed in range(10):
        coarse, fine = _timeline(seed, 5.0), _timeline(seed, 5.0)
        for i in range(1, 401):
            now = i * 1.0
            for j in range(9):  # ``fine`` is also asked in between
                fine.blocked_until("client", "storage", now - 1.0 + j * 0.1)
            answers_fine = [fine.blocked_until(a, b, now) for a, b in pairs]
            answers_coarse = [coarse.blocked_until(a, b, now) for a, b in pairs]
            assert answers_fine == answers_coarse, (seed, now)
        assert fine.generated == coarse.generated > 0


def test_blocked_traffic_always_heals_within_the_longest_partition() -> None:
    timeline = _timeline(77, 2.0, (0.5, 5.0))
    blocked = free = 0
    for i in range(5000):
        now = i * 0.1
        until = timeline.blocked_until("client", "server", now)
        if until is None:
            free += 1
        else:
            blocked += 1
            # Overlapping partitions can chain, but each is at most 5 s long and
            # they start no earlier than now, so "until" is bounded.
            assert now < until <= now + 5.0
    assert blocked > 0 and free > 0


def test_no_partitions_when_disabled_or_with_one_host() -> None:
    disabled = _timeline(1, mean_interval=None)
    assert disabled.blocked_until("client", "server", 1e9) is None
    assert disabled.generated == 0
    hosts: list[str] = ["only"]
    lonely = PartitionTimeline(random.Random(1), 1.0, (0.5, 1.0), lambda: hosts)
    assert lonely.blocked_until("only", "only", 100.0) is None
    assert lonely.generated == 0
    # The Poisson clock kept running: partitions come once there is someone to cut off.
    hosts.append("other")
    later = _observed(lonely, until=200.0, step=0.1)
    assert later
    assert all(p.start > 100.0 for p in later)


# -- swarm mode --------------------------------------------------------------------


def _swarm_config(seed: int, chaos: ChaosConfig | None = None) -> ChaosConfig:
    base = ChaosConfig.swarm_default() if chaos is None else chaos
    return base.for_seed(random.Random(f"moonpool/{seed}/chaos-config"))


def test_swarm_keeps_each_family_half_the_time() -> None:
    enabled = ChaosConfig.default().enabled_families()
    kept: Counter[str] = Counter()
    seeds = range(1000)
    for seed in seeds:
        kept.update(_swarm_config(seed).enabled_families())
    for family in enabled:
        assert_binomial(kept[family], len(seeds), 0.5, f"swarm keeps {family}")
    assert "bit_flip" not in kept, "swarm only drops families, it never adds one"


def test_swarm_subsets_vary_by_seed_and_are_reproducible() -> None:
    subsets = [_swarm_config(seed).enabled_families() for seed in range(200)]
    assert [_swarm_config(seed).enabled_families() for seed in range(200)] == subsets
    # 7 families give 128 subsets; 200 seeds should explore most of them.
    assert len(set(subsets)) >= 80


def test_swarm_config_for_a_seed_keeps_rates_and_is_final() -> None:
    default = ChaosConfig.default()
    for seed in range(50):
        config = _swarm_config(seed)
        assert not config.swarm, "the per-seed config is concrete, not swarm again"
        assert config.for_seed(random.Random(0)) is config
        dropped = [f for f in default.enabled_families() if f not in config.enabled_families()]
        assert config == default.without(dropped)


def test_non_swarm_config_is_used_as_is_without_drawing() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    chaos = ChaosConfig.default()
    assert chaos.for_seed(rng) is chaos
    assert rng.getstate() == state

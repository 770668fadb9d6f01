"""ChaosConfig / LatencyConfig: presets, validation, ``without`` and serialisation.

These are plain data tests (no event loop).  The rates the configuration produces
are checked in ``test_faults.py``.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

import moonpool.sim
from moonpool.net import FAULT_FAMILIES, ChaosConfig, LatencyConfig

ALL_BUT_BIT_FLIP = tuple(family for family in FAULT_FAMILIES if family != "bit_flip")


def test_fault_families_are_the_documented_set_in_canonical_order() -> None:
    assert FAULT_FAMILIES == (
        "latency",
        "connect_failure",
        "connect_delay",
        "reset",
        "partial_io",
        "partition",
        "clog",
        "bit_flip",
    )


def test_chaos_config_is_reexported_from_sim() -> None:
    assert moonpool.sim.ChaosConfig is ChaosConfig
    assert moonpool.sim.LatencyConfig is LatencyConfig


def test_none_is_a_perfect_network() -> None:
    chaos = ChaosConfig.none()
    assert chaos.enabled_families() == ()
    assert chaos.latency is None
    assert chaos.partition_interval is None
    assert not chaos.swarm
    assert chaos == ChaosConfig()


def test_default_enables_every_family_but_bit_flips() -> None:
    chaos = ChaosConfig.default()
    assert chaos.enabled_families() == ALL_BUT_BIT_FLIP
    assert chaos.bit_flip == 0.0
    assert not chaos.swarm
    # Rates a robust program survives: faults are the exception, not the rule.
    for name in ("connect_failure", "connect_delay", "reset", "partial_io", "clog"):
        assert 0.0 < getattr(chaos, name) < 0.5, name


def test_swarm_default_is_default_in_swarm_mode() -> None:
    swarm = ChaosConfig.swarm_default()
    assert swarm.swarm
    assert msgspec.structs.replace(swarm, swarm=False) == ChaosConfig.default()


@pytest.mark.parametrize("family", FAULT_FAMILIES)
def test_each_family_is_enabled_by_its_own_field(family: str) -> None:
    special: dict[str, dict[str, Any]] = {
        "latency": {"latency": LatencyConfig()},
        "partition": {"partition_interval": 10.0},
    }
    chaos = ChaosConfig(**special.get(family, {family: 0.1}))
    assert chaos.enabled_families() == (family,)


@pytest.mark.parametrize("family", FAULT_FAMILIES)
def test_without_switches_off_exactly_the_named_family(family: str) -> None:
    everything = msgspec.structs.replace(ChaosConfig.default(), bit_flip=0.001)
    assert everything.enabled_families() == FAULT_FAMILIES
    reduced = everything.without([family])
    assert reduced.enabled_families() == tuple(f for f in FAULT_FAMILIES if f != family)
    # The original is untouched (frozen data) and settings of other families are kept.
    assert everything.enabled_families() == FAULT_FAMILIES
    assert reduced.connect_delay_range == everything.connect_delay_range
    assert reduced.partition_duration == everything.partition_duration
    assert reduced.clog_duration == everything.clog_duration


def test_without_accepts_tuples_and_lists_and_can_remove_everything() -> None:
    chaos = ChaosConfig.default()
    assert chaos.without(("reset", "clog")) == chaos.without(["reset", "clog"])
    assert chaos.without(list(FAULT_FAMILIES)).enabled_families() == ()
    assert chaos.without([]) == chaos


def test_without_rejects_unknown_families_by_name() -> None:
    with pytest.raises(ValueError, match="resets"):
        ChaosConfig.default().without(["resets"])


def test_configs_are_frozen() -> None:
    chaos = ChaosConfig.default()
    with pytest.raises(AttributeError):
        chaos.reset = 0.5  # type: ignore[misc]
    latency = LatencyConfig()
    with pytest.raises(AttributeError):
        latency.low = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "name", ["connect_failure", "connect_delay", "reset", "partial_io", "clog", "bit_flip"]
)
@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan])
def test_probabilities_outside_zero_one_are_rejected(name: str, value: float) -> None:
    settings: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=name):
        ChaosConfig(**settings)


@pytest.mark.parametrize("name", ["connect_failure", "reset", "bit_flip"])
def test_probability_bounds_are_inclusive(name: str) -> None:
    for bound in (0.0, 1.0):
        settings: dict[str, Any] = {name: bound}
        assert getattr(ChaosConfig(**settings), name) == bound


@pytest.mark.parametrize("name", ["connect_delay_range", "partition_duration", "clog_duration"])
@pytest.mark.parametrize(
    "value", [(-1.0, 1.0), (2.0, 1.0), (0.0, math.inf), (math.nan, 1.0), (0.0, math.nan)]
)
def test_bad_duration_ranges_are_rejected(name: str, value: tuple[float, float]) -> None:
    # A NaN or infinite duration would schedule a delivery that never comes due,
    # which shows up much later as a confusing hang instead of here.
    settings: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=name):
        ChaosConfig(**settings)


@pytest.mark.parametrize("value", [0.0, -5.0, math.nan, math.inf])
def test_bad_partition_interval_is_rejected(value: float) -> None:
    # inf used to be accepted and then crashed SimNetwork(...) with ZeroDivisionError
    # (expovariate(1/inf)); NaN silently disabled partitions.  None means "no partitions".
    with pytest.raises(ValueError, match="partition_interval"):
        ChaosConfig(partition_interval=value)


@pytest.mark.parametrize(
    ("low", "high"), [(-0.1, 0.1), (0.2, 0.1), (0.0, math.inf), (math.nan, 0.1), (0.0, math.nan)]
)
def test_bad_latency_bounds_are_rejected(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="latency"):
        LatencyConfig(low=low, high=high)


def test_json_round_trip_preserves_the_config() -> None:
    for chaos in (
        ChaosConfig.none(),
        ChaosConfig.default(),
        ChaosConfig.swarm_default(),
        ChaosConfig(latency=LatencyConfig(distribution="exponential", low=0.01, high=0.1)),
    ):
        assert msgspec.json.decode(msgspec.json.encode(chaos), type=ChaosConfig) == chaos


def test_invalid_json_config_is_rejected_on_load() -> None:
    with pytest.raises(msgspec.ValidationError, match="reset"):
        msgspec.json.decode(b'{"reset": 2.0}', type=ChaosConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"latency": {"distribution": "pareto"}}', type=ChaosConfig)

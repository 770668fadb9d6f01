"""The load balancer's choices: spread, steering away from a slow server, exclusion."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from moonpool.transport._load_balance import STRATEGIES, LoadBalancer, Strategy

SERVERS = ("a:1", "b:1", "c:1")


def _spread(strategy: Strategy, *, requests: int = 3000, slow: str | None = None) -> Counter[str]:
    """Requests per server, one arriving per tick, each answered 3 ticks later (30 by
    ``slow``): requests overlap, so the numbers in flight differ and matter."""
    balancer = LoadBalancer(strategy, random.Random(7))
    outstanding: Counter[str] = Counter()
    done_at: list[tuple[int, str]] = []
    chosen: Counter[str] = Counter()
    for tick in range(requests):
        for due, server in [entry for entry in done_at if entry[0] <= tick]:
            done_at.remove((due, server))
            outstanding[server] -= 1
        server = balancer.choose(SERVERS, outstanding)
        assert server is not None
        chosen[server] += 1
        outstanding[server] += 1
        done_at.append((tick + (30 if server == slow else 3), server))
    return chosen


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_spreads_evenly_over_equal_servers(strategy: Strategy) -> None:
    spread = _spread(strategy)
    assert set(spread) == set(SERVERS)
    assert max(spread.values()) / min(spread.values()) <= 1.3, spread


def test_load_aware_strategies_steer_away_from_a_slow_server() -> None:
    shares = {s: _spread(s, slow="c:1")["c:1"] / 3000 for s in STRATEGIES}
    assert shares["round_robin"] == pytest.approx(1 / 3, abs=0.01)  # blind to it
    assert shares["least_outstanding"] < 0.12, shares
    assert shares["power_of_two"] < 0.12, shares


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_choices_are_the_same_for_the_same_seed(strategy: Strategy) -> None:
    def choices(seed: int) -> list[str | None]:
        balancer = LoadBalancer(strategy, random.Random(seed))
        load = {"a:1": 2, "b:1": 0, "c:1": 1}
        return [balancer.choose(SERVERS, load) for _ in range(50)]

    assert choices(1) == choices(1)
    if strategy == "power_of_two":
        assert choices(1) != choices(2), "the draws come from the rng given"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_excluded_servers_are_never_chosen_and_none_left_means_none(strategy: Strategy) -> None:
    balancer = LoadBalancer(strategy, random.Random(3))
    picks = {balancer.choose(SERVERS, {}, exclude={"b:1"}) for _ in range(100)}
    assert picks == {"a:1", "c:1"}
    assert balancer.choose(SERVERS, {}, exclude=set(SERVERS)) is None
    assert balancer.choose((), {}) is None


def test_least_outstanding_takes_the_idlest_and_breaks_ties_in_turn() -> None:
    balancer = LoadBalancer("least_outstanding", random.Random(0))
    assert balancer.choose(SERVERS, {"a:1": 3, "b:1": 1, "c:1": 2}) == "b:1"
    assert [balancer.choose(SERVERS, {}) for _ in range(4)] == ["c:1", "a:1", "b:1", "c:1"]


def test_an_unknown_strategy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fastest'; known: round_robin"):
        LoadBalancer("fastest", random.Random())  # type: ignore[arg-type]

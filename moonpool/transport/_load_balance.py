"""Which server gets the next request: the choice alone, pure and seeded.

A client that talks to several servers (the plan's ``ServerGroup``) asks a
:class:`LoadBalancer` for each request, telling it how many requests each server
has outstanding and which servers to leave out (failed, or already tried by this
request).  Three strategies, the ones FoundationDB's ``loadBalance`` and the
literature compare:

``round_robin``        each server in turn: even spread, blind to a slow server.
``least_outstanding``  the server with the fewest requests in flight (ties in
                       turn): a slow server piles up requests and is avoided.
``power_of_two``       two servers drawn at random, the less loaded of the two
                       (Mitzenmacher's "power of two choices"): nearly the spread
                       of least-outstanding without a global minimum, and no herd
                       when many clients see the same numbers.

The random draws come from the ``random.Random`` given (in a simulation, the
transport's seeded stream), so a seed replays the same choices.  No clock, no
I/O: unit tested without an event loop.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from typing import Final, Literal, final, get_args

__all__ = ["STRATEGIES", "LoadBalancer", "Strategy"]

Strategy = Literal["round_robin", "least_outstanding", "power_of_two"]
STRATEGIES: Final[tuple[Strategy, ...]] = get_args(Strategy)


@final
class LoadBalancer:
    """Picks a server for each request by one :data:`Strategy`."""

    __slots__ = ("_cursor", "_rng", "strategy")

    def __init__(self, strategy: Strategy, rng: random.Random) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.strategy: Strategy = strategy
        self._rng = rng
        self._cursor = 0

    def choose(
        self,
        servers: Sequence[str],
        outstanding: Mapping[str, int],
        *,
        exclude: Collection[str] = (),
    ) -> str | None:
        """The server for the next request, or ``None`` when every one is excluded.

        ``outstanding`` counts each server's requests in flight (missing: none).
        """
        candidates = [server for server in servers if server not in exclude]
        if not candidates:
            return None
        if self.strategy == "power_of_two" and len(candidates) > 2:
            first, second = self._rng.sample(candidates, 2)
            return second if outstanding.get(second, 0) < outstanding.get(first, 0) else first
        # Round robin, and the tie-break of the others: start after the last choice.
        start = self._cursor % len(candidates)
        ordered = candidates[start:] + candidates[:start]
        if self.strategy == "round_robin":
            chosen = ordered[0]
        else:
            chosen = min(ordered, key=lambda server: outstanding.get(server, 0))
        self._cursor = candidates.index(chosen) + 1
        return chosen

"""ServerGroup: how evenly each strategy spreads load, how it treats a slow server,
and what failover costs under attrition.

Measured in simulation (simulated time, so the figures are exact and the same on
every machine): three servers on a calm simulated network, 16 callers sharing one
``ServerGroup``; then the same with one server ten times slower; then
``examples/multi_server.py``'s replicas under attrition (``max_dead=1``), chaos
and buggify, for the fraction of calls answered within their deadline and what a
failover adds to a call's latency.  Wall time is not the point here: the
``real_tcp`` benchmarks cover speed.
"""

from __future__ import annotations

import contextlib
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Final

import anyio
import trio
import trio.testing

from benchmarks._core import Figure, Outcome, Settings
from moonpool.net import ChaosConfig, SimNetwork
from moonpool.sim import Attrition, FixedCount, SimulationBuilder, WorkloadContext
from moonpool.transport import (
    ClientTransport,
    ReceivedEnvelope,
    ServerGroup,
    ServerTransport,
    TransportError,
)
from moonpool.transport._load_balance import STRATEGIES, Strategy

NAME: Final = "load_balance"
DESCRIPTION: Final = "ServerGroup strategies: spread, a slow server, failover (sim time)"

SERVERS: Final = ("s0:4500", "s1:4500", "s2:4500")
SERVICE: Final = 0.002  # seconds a server takes per request; the slow one ten times that
CALLERS: Final = 16


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _spread_run(
    strategy: Strategy, requests: int, slow: str | None
) -> tuple[Counter[str], list[float]]:
    """Requests per server and each request's latency (simulated seconds)."""
    served: Counter[str] = Counter()
    latencies: list[float] = []

    async def main() -> None:
        network = SimNetwork(seed=1, chaos=ChaosConfig.none(), host="client")

        async def serve(address: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            delay = SERVICE * (10 if address == slow else 1)
            async with ServerTransport.bind(network.for_host(address[:2]), address) as server:
                task_status.started()
                async with anyio.create_task_group() as tasks:
                    async for request in server:

                        async def answer(request: ReceivedEnvelope[Any] = request) -> None:
                            await trio.sleep(delay)
                            served[address] += 1
                            with contextlib.suppress(TransportError):
                                server.send_reply(request, b"ok")

                        tasks.start_soon(answer)

        async with trio.open_nursery() as servers:
            for address in SERVERS:
                await servers.start(serve, address)
            async with ClientTransport(network) as client:
                group = ServerGroup(client, SERVERS, strategy=strategy)
                numbers = iter(range(requests))

                async def caller() -> None:
                    for _ in numbers:
                        started = trio.current_time()
                        await group.get_reply(b"x", timeout=30)
                        latencies.append(trio.current_time() - started)

                async with trio.open_nursery() as callers:
                    for _ in range(CALLERS):
                        callers.start_soon(caller)
            servers.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return served, latencies


_calls: list[tuple[bool, bool, float]] = []  # (answered, failed over, latency) per call


async def _timed_client(ctx: WorkloadContext) -> None:
    servers = sorted(address for name, address in ctx.peers.items() if name.startswith("r"))
    async with ClientTransport(ctx.network) as client:
        group = ServerGroup(client, servers)
        for _ in range(20):
            before, started = group.failovers, anyio.current_time()
            try:
                await group.get_reply(b"GET 1", timeout=30)
                answered = True
            except TransportError:
                answered = False
            _calls.append((answered, group.failovers > before, anyio.current_time() - started))
            await anyio.sleep(ctx.random.uniform(0, 0.3))


def _failover_run(seeds: int) -> list[tuple[bool, bool, float]]:

    from benchmarks.sim_ping_pong import load_example

    example = load_example(Path(__file__).resolve().parent.parent / "examples" / "multi_server.py")
    _calls.clear()
    (
        SimulationBuilder()
        .enable_buggify()
        .set_database(None)
        .set_attrition(Attrition(max_dead=1, interval=2.0))
        .register_process("replica", example.replica, count=3)
        .register_workload("client", _timed_client, count=3)
        .set_iteration_control(FixedCount(seeds))
        .set_base_seed(2026)
        .run()
    )
    return list(_calls)


def run(settings: Settings) -> Outcome:
    requests = settings.count(3000, minimum=60)
    figures: list[Figure] = []
    notes: list[str] = []
    for strategy in STRATEGIES:
        served, _ = _spread_run(strategy, requests, slow=None)
        spread = max(served.values()) / max(1, min(served.values()))
        figures.append(
            Figure(
                f"spread max/min, 3 equal servers, {strategy}",
                "x",
                [spread],
                [1.0],
                "a perfect spread",
                target=1.3,
                higher_is_better=False,
                details={"served": dict(served)},
            )
        )
    for strategy in STRATEGIES:
        served, latencies = _spread_run(strategy, requests, slow="s2:4500")
        share = served["s2:4500"] / requests
        p99 = _percentile(latencies, 0.99) * 1e3
        figures.append(Figure(f"slow server's share, {strategy}", "%", [share * 100]))
        figures.append(Figure(f"p99 latency, one server 10x slower, {strategy}", "ms", [p99]))
        mean = statistics.mean(latencies) * 1e3
        figures.append(Figure(f"mean latency, one server 10x slower, {strategy}", "ms", [mean]))
        notes.append(
            f"{strategy}: the slow server took {share:.1%} of {requests} requests; "
            f"p50 {_percentile(latencies, 0.5) * 1e3:.2f} ms, mean {mean:.2f} ms, p99 {p99:.2f} ms "
            f"(simulated; p99 falls on the slow server's own requests whichever strategy)"
        )
    seeds = settings.count(500, minimum=5)
    calls = _failover_run(seeds)
    answered = sum(1 for ok, _, _ in calls if ok) / len(calls)
    plain = [latency for ok, moved, latency in calls if ok and not moved]
    moved = [latency for ok, was_moved, latency in calls if ok and was_moved]
    figures.append(
        Figure(
            "calls answered within their deadline under attrition",
            "%",
            [answered * 100],
            [100.0],
            "every call",
            target=1.0,
        )
    )
    if moved and plain:
        for label, fraction in (("p50", 0.5), ("p99", 0.99)):
            added = (_percentile(moved, fraction) - _percentile(plain, fraction)) * 1e3
            figures.append(Figure(f"latency a failover adds, {label}", "ms", [max(added, 1e-9)]))
    with_failover = statistics.median(moved) * 1e3 if moved else 0.0
    notes.append(
        f"failover: {seeds} seeds of 3 replicas (attrition max_dead=1, chaos, buggify), "
        f"{len(calls)} calls, {len(moved)} failed over; median latency without a failover "
        f"{statistics.median(plain) * 1e3:.2f} ms, with {with_failover:.2f} ms"
    )
    return Outcome(figures=figures, notes=notes)

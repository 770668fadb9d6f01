"""Ping-pong over the transport, in simulation, with buggify and network faults on."""

from __future__ import annotations

import anyio
import pytest

from moonpool.sim import (
    Attrition,
    ChaosConfig,
    FixedCount,
    SimulationBuilder,
    UntilAllSometimesReached,
    WorkloadContext,
    always,
)
from moonpool.transport import ClientTransport, ConnectionFailed, TransportTimeout
from tests.transport.ping_pong import example

# Seeds that once failed under chaos; each replays its run exactly, forever.
REGRESSION_SEEDS = [
    # ServerTransport handed a request read on one connection to whichever
    # connection's reader drained the shared queue: client-1 got client-0's pong.
    1407832018,
]


def test_ping_pong_until_all_sometimes_reached() -> None:
    report = example.simulation().set_iteration_control(UntilAllSometimesReached(100)).run()
    report.assert_success()
    assert report.fault_totals.get("buggify", 0) > 0
    assert {"latency", "partial_io"} <= set(report.fault_totals)
    pongs = next(a for a in report.assertions if a.message == "every pong answers its own ping")
    assert pongs.hits >= 20


def test_ping_pong_regression_seeds_swarm() -> None:
    report = example.simulation().set_chaos(ChaosConfig.swarm_default()).set_seeds(REGRESSION_SEEDS)
    report.run().assert_success()


def test_ping_pong_swarm_many_seeds() -> None:
    report = (
        example.simulation()
        .set_chaos(ChaosConfig.swarm_default())
        .set_iteration_control(FixedCount(150))
        .run()
    )
    report.assert_success()


@pytest.mark.slow
def test_ping_pong_every_ping_answered_over_a_thousand_seeds() -> None:
    """The example's strongest claim -- every ping of every client is answered within
    its deadline, through crashes and reboots -- over 1,000 seeds of default chaos."""
    report = example.simulation().set_iteration_control(FixedCount(1000)).run()
    report.assert_success()
    assert report.iterations == 1000
    answered = next(a for a in report.assertions if "every ping of every client" in a.message)
    assert answered.hits == 1000 * 2 * example.PINGS_PER_CLIENT
    assert report.fault_totals["crash"] > 500 and report.fault_totals["reboot"] > 500


@pytest.mark.slow
def test_ping_pong_chaos_thousand_seeds_swarm() -> None:
    """The chaos nox session: 1,000+ seeds in swarm mode, zero failures."""
    report = (
        example.simulation()
        .set_chaos(ChaosConfig.swarm_default())
        .set_iteration_control(FixedCount(1200))
        .run()
    )
    report.assert_success()
    assert report.iterations == 1200


CONCURRENT = 50
ATTRITION = Attrition(max_dead=1, interval=2.0)


async def burst_client(ctx: WorkloadContext) -> None:
    """50 concurrent get_reply calls on one transport, each checked against its own id."""
    server = ctx.peers["server"]
    answered = 0
    async with ClientTransport(ctx.network) as transport:

        async def one(n: int) -> None:
            nonlocal answered
            message = f"PING {ctx.name} {n}".encode()
            deadline = anyio.current_time() + 60
            while anyio.current_time() < deadline:
                try:
                    reply = await transport.get_reply(server, message, timeout=2.0)
                except (TransportTimeout, ConnectionFailed):
                    await anyio.sleep(ctx.random.uniform(0.01, 0.1))
                    continue
                always(reply == b"PONG" + message[4:], "concurrent pong matches its own ping")
                answered += 1
                return

        async with anyio.create_task_group() as group:
            for n in range(CONCURRENT):
                group.start_soon(one, n)
    always(answered == CONCURRENT, "all 50 concurrent pings of a client answered")


def test_three_clients_fifty_concurrent_requests_each() -> None:
    report = (
        SimulationBuilder()
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_attrition(ATTRITION)
        .register_process("server", example.ping_server)
        .register_workload("client", burst_client, count=3)
        .set_iteration_control(FixedCount(30))
        .run()
    )
    report.assert_success()
    matched = next(a for a in report.assertions if "concurrent pong" in a.message)
    assert matched.hits == 30 * 3 * CONCURRENT  # every call of every client, every seed


async def partition_watcher(ctx: WorkloadContext) -> None:
    """Cuts the server off for 5 s in the middle of the run; pings must resume after."""
    network = ctx.network
    await anyio.sleep(0.5)
    network.isolate("server", 5.0)  # type: ignore[attr-defined]


async def patient_client(ctx: WorkloadContext) -> None:
    server = ctx.peers["server"]
    async with ClientTransport(ctx.network) as transport:
        failures_during_partition = 0
        for n in range(40):
            message = f"PING {ctx.name} {n}".encode()
            while True:
                try:
                    reply = await transport.get_reply(server, message, timeout=1.0)
                    break
                except (TransportTimeout, ConnectionFailed):
                    if 0.5 <= anyio.current_time() <= 5.5:
                        failures_during_partition += 1
            always(reply == b"PONG" + message[4:], "pong matches across a partition")
            await anyio.sleep(0.2)
        # 40 pings x 0.2 s span the partition: some failed in it, all succeeded in the end.
        always(failures_during_partition > 0, "the partition was felt")
        always(anyio.current_time() > 5.5, "the client outlived the partition")


def test_server_partitioned_away_and_back() -> None:
    report = (
        SimulationBuilder()
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_attrition(ATTRITION)
        .register_process("server", example.ping_server)
        .register_workload("chaos", partition_watcher)
        .register_workload("client", patient_client)
        .set_iteration_control(FixedCount(20))
        .run()
    )
    report.assert_success()
    assert report.fault_totals["partition"] >= 20


def test_shutdown_coordination_server_returns_on_shutdown() -> None:
    """Reboots and the final shutdown: the server returns within a 2.5 s grace period
    (its slowest buggified request takes 2 s), so no reboot escalates to a crash."""
    report = (
        SimulationBuilder()
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_shutdown_grace(2.5)
        .set_attrition(Attrition(max_dead=1, interval=2.0, crash=0.0, reboot=1.0))
        .register_process("server", example.ping_server)
        .register_workload("client", example.ping_client)
        .set_iteration_control(FixedCount(40))
        .run()
    )
    report.assert_success()
    events = [event.event for run in report.runs for event in run.process_events]
    assert events.count("reboot") > 20
    assert "grace_expired" not in events

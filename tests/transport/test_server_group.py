"""ServerGroup: spread, skipping failed servers, failing fast, failover, membership.

Scripted tests on a calm simulated network say exactly what must happen; the
simulation at the end runs three servers under attrition, chaos and buggify.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import trio

from moonpool.net import ChaosConfig, SimNetwork
from moonpool.sim import (
    Attrition,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    WorkloadContext,
    always,
    sometimes,
)
from moonpool.transport import (
    ClientTransport,
    NoServerAvailable,
    ReceivedEnvelope,
    ServerGroup,
    ServerTransport,
    TransportError,
    TransportTimeout,
)

SERVERS = ["s0:4500", "s1:4500", "s2:4500"]


def calm() -> SimNetwork:
    return SimNetwork(seed=5, chaos=ChaosConfig.none(), host="client")


async def answering(
    server: ServerTransport[Any], seen: Counter[str], *, delay: float = 0.0
) -> None:
    async with anyio.create_task_group() as tasks:
        async for request in server:

            async def answer(request: ReceivedEnvelope[Any] = request) -> None:
                seen[server.address] += 1
                await anyio.sleep(delay)
                with contextlib.suppress(TransportError):
                    server.send_reply(request, b"re:" + request.payload)

            tasks.start_soon(answer)


async def start_servers(
    network: SimNetwork,
    nursery: trio.Nursery,
    seen: Counter[str],
    addresses: list[str],
    *,
    slow: str | None = None,
    silent: str | None = None,
) -> None:
    """Start a server at each address (listening when this returns)."""

    async def serve(address: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        host = network.for_host(address.split(":")[0])
        async with ServerTransport.bind(host, address) as server:
            task_status.started()
            if address == silent:  # receives, never answers
                async for _ in server:
                    seen[server.address] += 1
            else:
                await answering(server, seen, delay=0.5 if address == slow else 0.001)

    for address in addresses:
        await nursery.start(serve, address)


@pytest.mark.trio
@pytest.mark.parametrize("strategy", ["round_robin", "least_outstanding", "power_of_two"])
async def test_requests_spread_over_every_server(autojump_clock: object, strategy: Any) -> None:
    network, seen = calm(), Counter[str]()
    async with trio.open_nursery() as nursery:
        await start_servers(network, nursery, seen, SERVERS)
        async with ClientTransport(network) as client:
            group = ServerGroup(client, SERVERS, strategy=strategy)
            async with trio.open_nursery() as calls:
                for n in range(300):
                    calls.start_soon(group.get_reply, b"%d" % n)
                    await trio.sleep(0.0005)
        nursery.cancel_scope.cancel()
    assert sum(seen.values()) == 300
    assert max(seen.values()) / min(seen.values()) <= 1.3, seen


@pytest.mark.trio
async def test_a_slow_server_gets_fewer_requests_when_load_aware(autojump_clock: object) -> None:
    network, seen = calm(), Counter[str]()
    async with trio.open_nursery() as nursery:
        await start_servers(network, nursery, seen, SERVERS, slow="s2:4500")
        async with ClientTransport(network) as client:
            group = ServerGroup(client, SERVERS, strategy="least_outstanding")
            async with trio.open_nursery() as calls:
                for n in range(300):
                    calls.start_soon(group.get_reply, b"%d" % n)
                    await trio.sleep(0.002)
        nursery.cancel_scope.cancel()
    assert seen["s2:4500"] < 0.15 * 300, seen


@pytest.mark.trio
async def test_a_server_that_is_down_is_failed_over_then_skipped(autojump_clock: object) -> None:
    network, seen = calm(), Counter[str]()
    async with trio.open_nursery() as nursery:
        await start_servers(network, nursery, seen, SERVERS[:2])  # s2 never listens
        async with ClientTransport(network) as client:
            group = ServerGroup(client, SERVERS, strategy="round_robin")
            for n in range(30):
                assert await group.get_reply(b"%d" % n, timeout=5) == b"re:%d" % n
            assert client.failure_monitor.is_failed("s2:4500")
            # Once known failed, it is not tried while the others answer.
            refused = client.failure_monitor.failures_seen
            for _ in range(30):
                await group.get_reply(b"again", timeout=5)
            assert client.failure_monitor.failures_seen == refused
        nursery.cancel_scope.cancel()
    assert sum(seen.values()) == 60 and "s2:4500" not in seen


@pytest.mark.trio
async def test_when_every_server_is_down_the_call_fails_fast(autojump_clock: object) -> None:
    network = calm()
    async with ClientTransport(network) as client:
        group = ServerGroup(client, SERVERS, failed_for=2.0)
        started = trio.current_time()
        with pytest.raises(NoServerAvailable, match="every server of the group"):
            await group.get_reply(b"x", timeout=60)
        assert trio.current_time() - started < 5, "not the 60 s timeout"
        with pytest.raises(NoServerAvailable, match="the server group is empty"):
            await ServerGroup(client, []).get_reply(b"x")


@pytest.mark.trio
async def test_try_get_reply_never_fails_over_once_the_request_may_be_written(
    autojump_clock: object,
) -> None:
    network, seen = calm(), Counter[str]()
    async with trio.open_nursery() as nursery:
        await start_servers(network, nursery, seen, SERVERS, silent="s0:4500")
        async with ClientTransport(network) as client:
            group = ServerGroup(client, SERVERS, strategy="round_robin", attempt_timeout=1.0)
            with pytest.raises(TransportTimeout):
                await group.try_get_reply(b"once", timeout=10)
            assert seen == {"s0:4500": 1}, "written once, to one server, and never again"
            # get_reply (at least once) moves on to another server instead.
            group = ServerGroup(client, SERVERS, strategy="round_robin", attempt_timeout=1.0)
            assert await group.get_reply(b"again", timeout=10) == b"re:again"
        nursery.cancel_scope.cancel()
    assert seen["s0:4500"] == 2 and sum(seen.values()) == 3


@pytest.mark.trio
async def test_members_can_change_while_calls_are_in_flight(autojump_clock: object) -> None:
    network, seen = calm(), Counter[str]()
    async with trio.open_nursery() as nursery:
        await start_servers(network, nursery, seen, SERVERS)
        async with ClientTransport(network) as client:
            group = ServerGroup(client, SERVERS[:1])
            async with trio.open_nursery() as calls:
                for n in range(60):
                    calls.start_soon(group.get_reply, b"%d" % n)
                    await trio.sleep(0.001)
                    if n == 20:
                        group.add(SERVERS[1])
                        group.add(SERVERS[2])
                    if n == 40:
                        group.remove(SERVERS[0])
            assert group.addresses == tuple(SERVERS[1:])
            assert group.outstanding() == {SERVERS[1]: 0, SERVERS[2]: 0}
            with pytest.raises(ValueError, match="already in the group"):
                group.add(SERVERS[1])
            with pytest.raises(ValueError, match="is not in the group"):
                group.remove(SERVERS[0])
        nursery.cancel_scope.cancel()
    assert sum(seen.values()) == 60 and len(seen) == 3


def test_bad_settings_are_clear_errors() -> None:
    network = calm()
    client = ClientTransport(network)
    for bad in ({"attempt_timeout": 0}, {"failed_for": float("inf")}):
        with pytest.raises(ValueError, match="must be a finite number of seconds"):
            ServerGroup(client, SERVERS, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown strategy"):
        ServerGroup(client, SERVERS, strategy="fastest")  # type: ignore[arg-type]


# -- under attrition, chaos and buggify ---------------------------------------------------

SERVER_COUNT = 3
CALLS_PER_CLIENT = 25


async def _replica(ctx: ProcessContext, record: Callable[[bytes], None]) -> None:
    """Answer ``re:<payload>`` until shut down, telling ``record`` of each request."""
    async with ServerTransport.bind(ctx.network, ctx.address) as server:

        async def stop() -> None:
            await ctx.shutdown.wait()
            await server.aclose()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stop)
            async for request in server:
                record(request.payload)
                with contextlib.suppress(TransportError):
                    server.send_reply(request, b"re:" + request.payload)


async def replica(ctx: ProcessContext) -> None:
    served: Counter[str] = ctx.state.setdefault("served", Counter())
    await _replica(ctx, lambda payload: served.update([ctx.name]))


async def group_client(ctx: WorkloadContext) -> None:
    servers = [address for name, address in sorted(ctx.peers.items()) if name.startswith("r")]
    async with ClientTransport(ctx.network) as client:
        group = ServerGroup(client, servers)
        for n in range(CALLS_PER_CLIENT):
            message = f"{ctx.name} {n}".encode()
            try:
                reply = await group.get_reply(message, timeout=30)
            except TransportError as exc:
                always(False, "every call through the group is answered", error=repr(exc))
                return
            always(reply == b"re:" + message, "each reply answers its own request")
            await anyio.sleep(ctx.random.uniform(0, 0.3))


def _under_attrition(process: Any, workload: Any, seeds: int) -> SimulationBuilder:
    """Three replicas crashed and rebooted one at a time, two clients; chaos, buggify."""
    return (
        SimulationBuilder()
        .enable_buggify()
        .set_attrition(Attrition(max_dead=1, interval=1.0))
        .register_process("r", process, count=SERVER_COUNT)
        .register_workload("client", workload, count=2)
        .set_iteration_control(FixedCount(seeds))
    )


def test_every_call_is_answered_while_servers_crash_and_reboot() -> None:
    report = _under_attrition(replica, group_client, 20).run()
    report.assert_success()
    assert report.kills is not None and sum(report.kills.values()) > 0


@pytest.mark.trio
async def test_hedging_sends_a_slow_call_to_a_second_server_first_reply_wins(
    autojump_clock: object,
) -> None:
    network, seen = calm(), Counter[str]()
    async with trio.open_nursery() as nursery:
        await start_servers(network, nursery, seen, SERVERS, slow="s0:4500")
        async with ClientTransport(network) as client:
            plain = ServerGroup(client, SERVERS, strategy="round_robin")
            started = trio.current_time()
            assert await plain.get_reply(b"a", timeout=10) == b"re:a"
            assert trio.current_time() - started >= 0.5 and plain.hedges == 0  # off by default
            hedged = ServerGroup(client, SERVERS, strategy="round_robin", hedge_after=0.05)
            started = trio.current_time()
            assert await hedged.get_reply(b"b", timeout=10) == b"re:b"
            assert trio.current_time() - started < 0.2, "the hedge answered, not s0"
            assert hedged.hedges == 1
            await trio.sleep(1)  # s0 finishes the request it was given: at least once
        nursery.cancel_scope.cancel()
    assert seen["s0:4500"] == 2 and sum(seen.values()) == 3
    with pytest.raises(ValueError, match="hedge_after must be"):
        ServerGroup(ClientTransport(network), SERVERS, hedge_after=0)


async def counting_replica(ctx: ProcessContext) -> None:
    executed: Counter[bytes] = ctx.state.setdefault("executed", Counter())
    await _replica(ctx, lambda payload: executed.update([payload]))


async def at_most_once_client(ctx: WorkloadContext) -> None:
    """try_get_reply through a group whose members change while calls are in flight."""
    servers = [address for name, address in sorted(ctx.peers.items()) if name.startswith("r")]
    answered: Counter[str] = ctx.state.setdefault("answered", Counter())
    async with ClientTransport(ctx.network) as client:
        group = ServerGroup(client, servers)

        async def churn() -> None:
            for _ in range(4):
                await anyio.sleep(ctx.random.uniform(0.2, 0.8))
                leaving = ctx.random.choice(group.addresses)
                group.remove(leaving)
                await anyio.sleep(ctx.random.uniform(0.2, 0.8))
                group.add(leaving)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(churn)
            for n in range(CALLS_PER_CLIENT):
                message = f"{ctx.name} {n}".encode()
                try:
                    reply = await group.try_get_reply(message, timeout=10)
                except TransportError:
                    answered["failed"] += 1  # may or may not have run: never resent
                else:
                    always(reply == b"re:" + message, "each reply answers its own request")
                    answered["ok"] += 1
                await anyio.sleep(ctx.random.uniform(0, 0.2))
        sometimes(group.failovers > 0, "a call moved on to another server before it was sent")


class AtMostOnceCheck:
    async def run(self, ctx: WorkloadContext) -> None:
        await at_most_once_client(ctx)

    async def check(self, ctx: WorkloadContext) -> None:
        executed: Counter[bytes] = ctx.state.get("executed", Counter())
        worst = max(executed.values(), default=0)
        always(worst <= 1, "try_get_reply through a group runs each request at most once",
               worst=worst)  # fmt: skip
        sometimes(ctx.state["answered"]["ok"] > 0, "calls are answered")


def test_try_get_reply_stays_at_most_once_while_members_and_servers_come_and_go() -> None:
    _under_attrition(counting_replica, AtMostOnceCheck, 30).run().assert_success()

"""Ping-pong over the moonpool transport: one program, simulated or on real TCP.

A server answers every ``PING <client> <n>`` with ``PONG <client> <n>``; clients
send pings, check that each pong answers its own ping, and retry pings that time
out or lose their connection.  The same two workload functions run

* in simulation, under chaos (the default when the CLI runs this file)::

      python -m moonpool run examples/ping_pong.py
      python -m moonpool run examples/ping_pong.py --seed 1234

* on real loopback TCP, on trio or asyncio::

      python examples/ping_pong.py --real --backend asyncio --requests 10000
"""

from __future__ import annotations

from typing import Any

import anyio

from moonpool.sim import (
    ChaosConfig,
    SimulationBuilder,
    UntilAllSometimesReached,
    WorkloadContext,
    always,
    buggify_with_prob,
    reachable,
    sometimes,
)
from moonpool.transport import (
    ClientTransport,
    ConnectionFailed,
    ReceivedEnvelope,
    ServerTransport,
    TransportClosed,
    TransportTimeout,
)

PINGS_PER_CLIENT = 20
PING_TIMEOUT = 1.0


async def ping_server(ctx: WorkloadContext) -> None:
    """Answer pings until the simulation (or the real run) shuts down."""
    async with ServerTransport.bind(ctx.network, ctx.address) as server:

        async def close_on_shutdown() -> None:
            await ctx.shutdown.wait()
            await server.aclose()

        async def answer(request: ReceivedEnvelope[Any]) -> None:
            kind, _, rest = request.payload.partition(b" ")
            always(kind == b"PING", "the server only ever receives pings")
            if buggify_with_prob(0.05):
                # A slow request (GC pause, busy disk): longer than the ping timeout.
                # Each request has its own task, so it delays nobody else -- handled
                # in line, one slow request per burst would time out all the others,
                # their retries would queue behind it, and the server would never
                # catch up (the simulation found that metastable failure).
                await anyio.sleep(ctx.random.uniform(1.0, 2.0))
            try:
                server.send_reply(request, b"PONG " + rest)
            except ConnectionFailed:
                reachable("a client vanished before its pong was sent")
            except TransportClosed:
                pass  # shutting down

        async with anyio.create_task_group() as group:
            group.start_soon(close_on_shutdown)
            async for request in server:
                group.start_soon(answer, request)


async def ping(transport: ClientTransport, ctx: WorkloadContext, server: str, n: int) -> bool:
    """One ping, retried until it is answered; False if shutdown came first."""
    message = f"PING {ctx.name} {n}".encode()
    timeouts = lost = 0
    while not ctx.shutdown.is_set():
        try:
            reply = await transport.get_reply(server, message, timeout=PING_TIMEOUT)
        except TransportTimeout:
            timeouts += 1
            continue
        except ConnectionFailed:
            lost += 1
            await anyio.sleep(ctx.random.uniform(0.01, 0.2))
            continue
        always(reply == b"PONG" + message[4:], "every pong answers its own ping")
        # Evaluated on every ping, so each site is known from the first seed on and
        # UntilAllSometimesReached keeps going until chaos has made each one true.
        sometimes(timeouts > 0, "a ping times out and is retried")
        sometimes(lost > 0, "a ping loses its connection and is retried")
        return True
    return False


async def ping_client(ctx: WorkloadContext) -> None:
    server = ctx.peers["server"]
    async with ClientTransport(ctx.network) as transport:
        answered = 0
        for n in range(PINGS_PER_CLIENT):
            if not await ping(transport, ctx, server, n):
                break
            answered += 1
        sometimes(answered == PINGS_PER_CLIENT, "a client gets all its pongs")


def simulation() -> SimulationBuilder:
    """The chaos simulation the README's main command runs."""
    return (
        SimulationBuilder()
        .set_iteration_control(UntilAllSometimesReached(100))
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .register_workload("server", ping_server)
        .register_workload("client", ping_client, count=2)
    )

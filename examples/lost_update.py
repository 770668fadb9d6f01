"""A counter service with a planted bug, to show how moonpool explains a failure.

A server **process** keeps a counter; client **workloads** increment it with
``get_reply`` -- *at least once*: when a connection breaks after a request was
written, the transport sends it again, with the same request id.  The server
applies every increment it receives, so a request that arrived, was applied,
and whose reply was then lost (a reset in the wrong instant) is applied twice.
The check finds it: the counter must lie between the increments acknowledged
and those plus the ones whose outcome is unknown (a timeout)::

    python -m moonpool run examples/lost_update.py               # fails on some seeds
    python -m moonpool run examples/lost_update.py --seed N --timeline --timeline-kind fault
    python -m moonpool run examples/lost_update.py --seed N --shrink
    python -m moonpool run examples/lost_update.py:fixed         # the fix: passes

The fix (``fixed``) is what at-least-once delivery asks of a server: remember
the ids of requests already applied, and answer a resend with the first answer.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio

from moonpool.sim import (
    ChaosConfig,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    WorkloadContext,
    always,
)
from moonpool.transport import (
    ClientTransport,
    ConnectionFailed,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    ServerTransport,
    TransportError,
    TransportTimeout,
)

INCREMENTS_PER_CLIENT = 30
TIMEOUT = 2.0


def counter_server(*, dedupe: bool) -> Any:
    """The server process; ``dedupe`` is the fix."""

    async def server(ctx: ProcessContext) -> None:
        # ctx.state outlives a process's incarnations: the counter is "on disk".
        state = ctx.state.setdefault("counter", {"value": 0, "answers": {}})
        answers: dict[int, bytes] = state["answers"]
        async with ServerTransport.bind(ctx.network, ctx.address) as transport:

            async def stop_on_shutdown() -> None:
                await ctx.shutdown.wait()
                await transport.aclose()

            def handle(request: ReceivedEnvelope[RequestResponseEnvelope]) -> bytes:
                if request.payload == b"get":
                    return str(state["value"]).encode()
                if dedupe and request.request_id in answers:
                    return answers[request.request_id]  # a resend: already applied
                state["value"] += 1
                answer = answers[request.request_id] = str(state["value"]).encode()
                return answer

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stop_on_shutdown)
                async for request in transport:
                    # A TransportError: the client's connection is gone; it resends.
                    with contextlib.suppress(TransportError):
                        transport.send_reply(request, handle(request))

    return server


class Incrementer:
    """Increments the counter; checks it once chaos is over."""

    async def run(self, ctx: WorkloadContext) -> None:
        tally = ctx.state.setdefault("tally", {"acked": 0, "unknown": 0})
        async with ClientTransport(ctx.network) as client:
            for _ in range(INCREMENTS_PER_CLIENT):
                try:
                    await client.get_reply(ctx.peers["server"], b"incr", timeout=TIMEOUT)
                    tally["acked"] += 1
                except (TransportTimeout, ConnectionFailed):
                    tally["unknown"] += 1  # applied or not: nobody knows
                await anyio.sleep(ctx.random.uniform(0.0, 0.2))

    async def check(self, ctx: WorkloadContext) -> None:
        tally = ctx.state["tally"]
        async with ClientTransport(ctx.network) as client:
            value = int(await client.get_reply(ctx.peers["server"], b"get", timeout=30.0))
        acked, unknown = tally["acked"], tally["unknown"]
        always(
            acked <= value <= acked + unknown,
            "counter is between acked and acked+unknown",
            counter=value,
            acked=acked,
            unknown=unknown,
        )


def _simulation(*, dedupe: bool) -> SimulationBuilder:
    return (
        SimulationBuilder()
        .set_iteration_control(FixedCount(50))
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .register_process("server", counter_server(dedupe=dedupe))
        .register_workload("client", Incrementer, count=2)
    )


def simulation() -> SimulationBuilder:
    """The buggy server: every resend is applied again."""
    return _simulation(dedupe=False)


def fixed() -> SimulationBuilder:
    """The fixed server: a resend gets the first answer."""
    return _simulation(dedupe=True)

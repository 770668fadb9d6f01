"""The server's push path: requests queued for ``async for`` straight from arrivals.

Where the stream can push (a simulation's wake-ups, asyncio's read callback), a
connection's requests are decoded and queued for the application without a step
of the connection's task; that task takes over when a request needs one: the
queue is full (backpressure), ``serve()`` took over, a writer must start.  These
tests hold the contract at those hand-overs, under chaos, buggify and attrition:
every request answered with its own reply, in each connection's order, none
twice, the queue never above its limit.
"""

from __future__ import annotations

import contextlib

import anyio
import pytest
import trio

from moonpool.net import RealNetwork
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
    ConnectionFailed,
    ReceivedEnvelope,
    ServerTransport,
    TransportError,
    TransportTimeout,
)

#: Small enough that pipelining clients fill it at once.
QUEUE_LIMIT = 3
CLIENTS = 3
IN_FLIGHT = 12
CALL_TIMEOUT = 30.0


def _payload(client: int, n: int) -> bytes:
    return b"c%d-%d:" % (client, n) + b"x" * (n * 37 % 300)


async def _slow_echo_loop(
    server: ServerTransport[object], rng_delay: object, *, stop_after: int | None = None
) -> int:
    """``async for`` with a pause per request; checks the queue bound each time.
    Returns how many it answered (stops after ``stop_after`` if given)."""
    answered = 0
    async for request in server:
        always(
            server.queued_requests <= QUEUE_LIMIT,
            "the request queue never holds more than max_pending_requests",
        )
        await trio.sleep(rng_delay())  # type: ignore[operator]
        with contextlib.suppress(TransportError):
            await request.reply(b"re:" + request.payload)
        answered += 1
        if stop_after is not None and answered >= stop_after:
            break
    return answered


async def _serving(ctx: ProcessContext, body):  # type: ignore[no-untyped-def]
    """Run ``body(server, delay)`` on a server with a small queue until shutdown."""
    async with ServerTransport.bind(
        ctx.network, ctx.address, max_pending_requests=QUEUE_LIMIT
    ) as server:
        async with anyio.create_task_group() as group:

            async def stop() -> None:
                await ctx.shutdown.wait()
                await server.aclose()

            group.start_soon(stop)

            def delay() -> float:
                return ctx.random.choice((0.0, 0.0, 0.001, 0.02))

            await body(server, delay)


async def async_for_server(ctx: ProcessContext) -> None:
    await _serving(ctx, _slow_echo_loop)


async def switching_server(ctx: ProcessContext) -> None:
    """Some requests through ``async for`` (pushed), the rest through ``serve()``,
    which reads in the connection's task: the hand-over happens with requests in
    flight on every connection."""

    async def body(server: ServerTransport[object], delay) -> None:  # type: ignore[no-untyped-def]
        await _slow_echo_loop(server, delay, stop_after=ctx.random.randint(1, 20))
        handled = 0

        async def handler(request: ReceivedEnvelope[object]) -> bytes:
            nonlocal handled
            handled += 1
            await trio.sleep(delay())
            return b"re:" + request.payload

        await server.serve(handler)
        sometimes(handled > 0, "serve() answered requests after async for stopped")

    await _serving(ctx, body)


def _client(index: int):  # type: ignore[no-untyped-def]
    async def pipelining_client(ctx: WorkloadContext) -> None:
        answers: list[int] = []
        async with ClientTransport(ctx.network) as client:

            async def call(n: int) -> None:
                try:
                    # At most once: never resent, so a request the server took in
                    # and then lost is not rescued by a resend after some later
                    # reset (get_reply's retries hid exactly that: a planted bug
                    # dropping requests at a full queue passed).  Its connection
                    # breaking is the only excuse for no reply.
                    reply = await client.try_get_reply(
                        ctx.peers["server"], _payload(index, n), timeout=CALL_TIMEOUT
                    )
                except ConnectionFailed:
                    sometimes(True, "a pipelined request's connection broke under it")
                    return
                except TransportTimeout:
                    always(False, "a request on a live connection is answered")
                    return
                always(reply == b"re:" + _payload(index, n), "each request gets its own reply")
                answers.append(n)

            for batch in range(3):
                async with anyio.create_task_group() as group:
                    for n in range(batch * IN_FLIGHT, (batch + 1) * IN_FLIGHT):
                        group.start_soon(call, n)
        always(len(answers) == len(set(answers)), "no call returns twice")
        sometimes(len(answers) == 3 * IN_FLIGHT, "every call of a client answered")

    return pipelining_client


@pytest.mark.parametrize(
    "server_process", [async_for_server, switching_server], ids=["async for", "then serve()"]
)
def test_pushed_requests_respect_the_queue_and_each_get_their_reply(
    server_process: object,
) -> None:
    builder = (
        SimulationBuilder()
        .enable_buggify()
        .set_attrition(Attrition(max_dead=1, interval=3.0))
        .register_process("server", server_process)  # type: ignore[arg-type]
        .set_iteration_control(FixedCount(60))
    )
    for index in range(CLIENTS):
        builder = builder.register_workload(f"client{index}", _client(index))
    report = builder.run()
    report.assert_success()
    faults = report.fault_totals
    assert faults.get("reset", 0) > 0, "network chaos reset connections"
    assert sum(faults.get(kind, 0) for kind in ("crash", "reboot", "restart", "wipe")) > 0


@pytest.mark.anyio
@pytest.mark.real_network
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_a_full_queue_pushes_back_without_losing_or_reordering(anyio_backend: str) -> None:
    """Real TCP (asyncio pushes, trio pulls): a slow ``async for`` behind a queue of 3
    answers 3 pipelining clients' 60 requests each, each once, with its own reply."""
    network = RealNetwork()
    seen: dict[bytes, list[int]] = {}
    with anyio.fail_after(30):
        async with (
            ServerTransport.bind(
                network, "127.0.0.1:0", max_pending_requests=QUEUE_LIMIT
            ) as server,
            anyio.create_task_group() as group,
        ):

            async def answer() -> None:
                async for request in server:
                    assert server.queued_requests <= QUEUE_LIMIT
                    client, n = request.payload.split(b"-")
                    seen.setdefault(client, []).append(int(n))
                    await anyio.sleep(0.0005)
                    await request.reply(b"re:" + request.payload)

            group.start_soon(answer)

            async def pipeline(name: bytes) -> None:
                async with ClientTransport(network, timeout=20) as client:
                    # One connection, 60 requests written before any is answered.
                    async with anyio.create_task_group() as calls:
                        for n in range(60):

                            async def call(n: int = n) -> None:
                                payload = name + b"-%d" % n
                                assert await client.get_reply(server.address, payload) == (
                                    b"re:" + payload
                                )

                            calls.start_soon(call)

            async with anyio.create_task_group() as clients:
                for name in (b"a", b"b", b"c"):
                    clients.start_soon(pipeline, name)
            group.cancel_scope.cancel()
    assert sorted(seen) == [b"a", b"b", b"c"]
    for numbers in seen.values():
        assert sorted(numbers) == list(range(60)), "each request reaches the app once"


def test_pushed_requests_are_noted_on_the_servers_host() -> None:
    """A pushed request is decoded outside any task, where the running task's host is
    unknown: its timeline event must still say which host received it."""
    builder = (
        SimulationBuilder()
        .enable_buggify()
        .set_attrition(Attrition(max_dead=1, interval=3.0))
        .register_process("server", async_for_server)
        .register_workload("client0", _client(0))
        .set_iteration_control(FixedCount(60))
        .record_timeline()
    )
    report = builder.run()
    report.assert_success()
    received = [
        event
        for run in report.runs
        for event in run.timeline
        if event.kind == "rpc" and event.text.startswith("received request")
    ]
    assert len(received) >= 60 * IN_FLIGHT
    assert {event.host for event in received} == {"server"}

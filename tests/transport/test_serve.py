"""``ServerTransport.serve(handler)``: requests answered inline by the connection's reader."""

from __future__ import annotations

import functools

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
    CheckedEnvelope,
    ClientTransport,
    ConnectionFailed,
    MaybeDelivered,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    RetryPolicy,
    ServerTransport,
    TransportClosed,
    TransportTimeout,
)

SERVER = "server:4500"


def calm() -> SimNetwork:
    return SimNetwork(seed=1, chaos=ChaosConfig.none(), host="client")


async def shout(request: ReceivedEnvelope[object]) -> bytes:
    return request.payload.upper()


@pytest.mark.trio
async def test_handler_return_value_is_the_reply(autojump_clock: object) -> None:
    network = calm()
    async with ServerTransport.bind(network.for_host("server"), SERVER) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, shout)
            async with ClientTransport(network) as client:
                replies = [await client.get_reply(SERVER, b"ping %d" % n) for n in range(5)]
            await server.aclose()  # serve() returns once the server closes
    assert replies == [b"PING %d" % n for n in range(5)]
    assert server.stats.replies_sent == 5


@pytest.mark.trio
async def test_handler_may_reply_itself_or_not_at_all(autojump_clock: object) -> None:
    network = calm()

    async def handler(request: ReceivedEnvelope[object]) -> bytes | None:
        if request.payload == b"mine":
            await request.reply(b"replied by the handler")
        return None  # "ignore" gets no reply at all

    async with ServerTransport.bind(network.for_host("server"), SERVER) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, handler)
            async with ClientTransport(network) as client:
                assert await client.get_reply(SERVER, b"mine") == b"replied by the handler"
                with pytest.raises(TransportTimeout):
                    await client.get_reply(SERVER, b"ignore", timeout=1.0)
            nursery.cancel_scope.cancel()
    assert server.stats.replies_sent == 1


@pytest.mark.trio
async def test_handler_exception_is_raised_by_serve(autojump_clock: object) -> None:
    network = calm()

    async def broken(request: ReceivedEnvelope[object]) -> bytes:
        if request.payload == b"bad":
            raise LookupError(f"no such key: {request.payload!r}")
        return b"fine"

    async with ServerTransport.bind(network.for_host("server"), SERVER) as server:
        async with ClientTransport(network) as client, trio.open_nursery() as nursery:
            # A request queued before serve() starts: answered first.
            nursery.start_soon(client.get_reply, SERVER, b"good")
            await trio.sleep(0.5)

            bad_failed = trio.Event()

            async def bad_request() -> None:
                await trio.sleep(0.5)
                # Its connection is closed after the server read it: at most once,
                # the client cannot know whether it was executed.
                with pytest.raises(MaybeDelivered):
                    await client.try_get_reply(SERVER, b"bad", timeout=5.0)
                bad_failed.set()

            nursery.start_soon(bad_request)
            with pytest.raises(LookupError, match="no such key: b'bad'"):
                await server.serve(broken)
            # The server is still usable: serve() can run again.
            await bad_failed.wait()
            nursery.start_soon(server.serve, shout)
            assert await client.get_reply(SERVER, b"again") == b"AGAIN"
            nursery.cancel_scope.cancel()
    assert server.stats.replies_sent == 2


@pytest.mark.trio
async def test_misuse_is_a_precise_error(autojump_clock: object) -> None:
    network = calm()
    server = ServerTransport.bind(network.for_host("server"), SERVER)
    with pytest.raises(TransportClosed, match="not open"):
        await server.serve(shout)
    async with server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, shout)
            await trio.sleep(0.1)
            with pytest.raises(RuntimeError, match="already running"):
                await server.serve(shout)
            with pytest.raises(RuntimeError, match="answering requests with serve"):
                await server.receive()
            with pytest.raises(RuntimeError, match="answering requests with serve"):
                async for _ in server:
                    pass
            nursery.cancel_scope.cancel()
        # Once serve() has stopped, async for works again.
        async with ClientTransport(network) as client, trio.open_nursery() as nursery:
            nursery.start_soon(client.get_reply, SERVER, b"after")
            request = await server.receive()
            server.send_reply(request, b"ok")
    assert request.payload == b"after"


@pytest.mark.trio
async def test_requests_waiting_before_serve_are_answered(autojump_clock: object) -> None:
    network = calm()
    async with ServerTransport.bind(network.for_host("server"), SERVER) as server:
        async with ClientTransport(network) as client, trio.open_nursery() as nursery:
            replies: list[bytes] = []
            all_answered = trio.Event()

            async def ask(n: int) -> None:
                replies.append(await client.get_reply(SERVER, b"early %d" % n))
                if len(replies) == 3:
                    all_answered.set()

            for n in range(3):
                nursery.start_soon(ask, n)
            await trio.sleep(1.0)  # all three are queued, nobody serves yet
            assert client.pending == 3
            nursery.start_soon(server.serve, shout)
            await all_answered.wait()
            nursery.cancel_scope.cancel()
    assert sorted(replies) == [b"EARLY %d" % n for n in range(3)]


@pytest.mark.trio
async def test_a_slow_handler_holds_up_only_its_own_connection(autojump_clock: object) -> None:
    network = calm()

    async def handler(request: ReceivedEnvelope[object]) -> bytes:
        if request.payload == b"slow":
            await trio.sleep(10)
        return request.payload

    async with ServerTransport.bind(network.for_host("server"), SERVER) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, handler)
            async with (
                ClientTransport(network.for_host("a")) as slow_client,
                ClientTransport(network.for_host("b")) as fast_client,
                trio.open_nursery() as clients,
            ):
                clients.start_soon(
                    functools.partial(slow_client.get_reply, timeout=30), SERVER, b"slow"
                )
                await trio.sleep(0.5)
                started = trio.current_time()
                assert await fast_client.get_reply(SERVER, b"fast") == b"fast"
                assert trio.current_time() - started < 1.0
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_reply_to_a_departed_client_is_dropped_quietly(autojump_clock: object) -> None:
    network = calm()
    handled = anyio.Event()

    async def handler(request: ReceivedEnvelope[object]) -> bytes:
        await trio.sleep(2)  # the client gives up and closes meanwhile
        handled.set()
        return b"too late"

    async with ServerTransport.bind(network.for_host("server"), SERVER) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, handler)
            async with ClientTransport(network) as client:
                with pytest.raises(TransportTimeout):
                    await client.get_reply(SERVER, b"x", timeout=1.0)
            await handled.wait()
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    # The server is still healthy: its reply had nowhere to go, that is all.
    assert server.stats.requests_received == 1


# -- under chaos ------------------------------------------------------------------------


async def serving_server(ctx: ProcessContext) -> None:
    async def handler(request: ReceivedEnvelope[object]) -> bytes:
        always(request.payload.startswith(b"PING "), "the server only receives pings")
        if ctx.random.random() < 0.05:
            await trio.sleep(ctx.random.random() * 0.2)  # a handler that sometimes waits
        return b"PONG " + request.payload[5:]

    async with ServerTransport.bind(ctx.network, ctx.address, envelope=CheckedEnvelope) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, handler)
            await ctx.shutdown.wait()
            nursery.cancel_scope.cancel()


async def pipelining_client(ctx: WorkloadContext) -> None:
    retry = RetryPolicy(max_attempts=3, backoff_initial=0.01)
    async with ClientTransport(ctx.network, envelope=CheckedEnvelope, retry=retry) as client:
        answered = 0

        async def ping(n: int) -> None:
            nonlocal answered
            try:
                reply = await client.get_reply(ctx.peers["server"], b"PING %d" % n, timeout=3.0)
            except (TransportTimeout, ConnectionFailed):
                return
            always(reply == b"PONG %d" % n, "each pong answers its own ping")
            answered += 1

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(ping, n)
                if ctx.random.random() < 0.3:
                    await trio.sleep(ctx.random.random() * 0.01)
        sometimes(answered == 40, "every ping of a burst is answered")


def test_serve_under_chaos() -> None:
    """Pipelined bursts against serve() with default chaos, bit flips and buggify."""
    chaos = ChaosConfig.default()
    report = (
        SimulationBuilder()
        .set_chaos(msgspec_replace(chaos, bit_flip=0.01))
        .enable_buggify()
        .set_attrition(Attrition(max_dead=1, interval=1.0))
        .register_process("server", serving_server)
        .register_workload("client", pipelining_client)
        .set_iteration_control(FixedCount(60))
        .run()
    )
    report.assert_success()
    assert report.fault_totals["partial_io"] > 0


def msgspec_replace(config: ChaosConfig, **changes: object) -> ChaosConfig:
    import msgspec

    return msgspec.structs.replace(config, **changes)


# -- a request followed by bad bytes -------------------------------------------------

_PING_FRAME = RequestResponseEnvelope.serializer().serialize(
    RequestResponseEnvelope.create_request(1, b"ping")
)
_BIG_REPLY = b"x" * 300_000  # more than a stream's buffer: the fast path cannot take it all


async def big_reply_server(ctx: ProcessContext) -> None:
    async def handler(request: ReceivedEnvelope[object]) -> bytes:
        return _BIG_REPLY

    async with ServerTransport.bind(ctx.network, ctx.address) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, handler)
            await ctx.shutdown.wait()
            nursery.cancel_scope.cancel()


async def request_then_garbage_client(ctx: WorkloadContext) -> None:
    """One connection sends a good request and garbage in one write, another a good
    request at the same instant: the first connection is closed for its bad bytes
    while its request (and the other's) are being answered."""
    await trio.sleep(0.05)
    try:
        bad = await ctx.network.connect(ctx.peers["server"])
        good = await ctx.network.connect(ctx.peers["server"])
    except OSError:
        return  # chaos refused a connect: nothing to check this seed
    async with bad, good:
        await trio.sleep(0.1)
        try:
            await bad.send(_PING_FRAME + b"\xff" * 16)
            await good.send(_PING_FRAME)
            reply = bytearray()
            with trio.move_on_after(5):
                while len(reply) < 12 + len(_BIG_REPLY):
                    reply += await good.receive()
        except (anyio.BrokenResourceError, anyio.EndOfStream):
            return  # chaos reset a connection
        if len(reply) == 12 + len(_BIG_REPLY):
            always(bytes(reply[12:]) == _BIG_REPLY, "the good connection gets its whole reply")
            sometimes(True, "the good connection was answered next to a bad one")


# Seeds on which the server crashed before the fix (1 in 200 under default chaos).
BAD_BYTES_REGRESSION_SEEDS = [38991381]


@pytest.mark.parametrize("seeds", [BAD_BYTES_REGRESSION_SEEDS, None], ids=["regression", "random"])
def test_bad_bytes_after_a_request_close_only_their_connection(seeds: list[int] | None) -> None:
    """Regression: replying on a connection that was closing (bad bytes) tried to start
    a writer in its finished task group, and the RuntimeError took the server down."""
    builder = (
        SimulationBuilder()
        .set_chaos(ChaosConfig.default())
        .enable_buggify()
        .set_attrition(Attrition(max_dead=1, interval=1.0))
        .register_process("server", big_reply_server)
        .register_workload("client", request_then_garbage_client)
    )
    if seeds is None:
        builder = builder.set_iteration_control(FixedCount(40))
    else:
        builder = builder.set_seeds(seeds)
    builder.run().assert_success()

"""The transport on real loopback TCP, on trio and asyncio.

The simulation tests prove the transport's logic under faults; these prove that the
same code survives the kernel: real ports, real timing, real resets.  Only
127.0.0.1, ::1 and localhost are used.  Every test is bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from moonpool.net import InvalidAddress, RealNetwork
from moonpool.sim import ProcessContext, WorkloadContext
from moonpool.transport import (
    CheckedEnvelope,
    ClientTransport,
    ConnectionFailed,
    FrameTooLarge,
    MaybeDelivered,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    RetryPolicy,
    ServerTransport,
    TransportClosed,
    TransportError,
    TransportTimeout,
)
from tests import ctrl_c
from tests.real.test_real_network import LOOPBACKS, free_port_address
from tests.transport.ping_pong import PATH as EXAMPLE_PATH
from tests.transport.ping_pong import example

pytestmark = [pytest.mark.anyio, pytest.mark.real_network]

#: Bound for a whole test body; each test is far faster than this.
LIMIT = 10.0

Handler = Callable[[ServerTransport[Any], ReceivedEnvelope[Any]], Awaitable[None]]


async def echo(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> None:
    server.send_reply(request, b"echo:" + request.payload)


@asynccontextmanager
async def serving(
    handler: Handler = echo, address: str = "127.0.0.1:0", **options: Any
) -> AsyncIterator[ServerTransport[Any]]:
    """A server on a free loopback port, answering with ``handler`` until the block ends."""
    async with (
        ServerTransport.bind(RealNetwork(), address, **options) as server,
        anyio.create_task_group() as group,
    ):

        async def serve() -> None:
            async for request in server:
                with contextlib.suppress(ConnectionFailed):  # that client left; others go on
                    await handler(server, request)

        group.start_soon(serve)
        yield server
        group.cancel_scope.cancel()


# -- the example's workloads, unchanged, on real sockets -------------------------


def real_context(
    kind: type[Any], name: str, address: str, peers: dict[str, str], shutdown: anyio.Event
) -> Any:
    return kind(
        name=name,
        address=address,
        peers=peers,
        network=example.AnnouncingNetwork(RealNetwork()),
        random=random.Random(),
        shutdown=shutdown,
    )


@pytest.mark.parametrize("listen_at", LOOPBACKS)
async def test_ping_pong_workloads_on_real_sockets(
    listen_at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(example, "PING_PAUSE", 0.0)  # no need to leave room for attrition
    shutdown = anyio.Event()
    server_ctx = real_context(ProcessContext, "server", listen_at, {}, shutdown)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(example.ping_server, server_ctx)
            await server_ctx.network.listening.wait()
            address = server_ctx.network.address
            assert not address.endswith(":0")
            async with anyio.create_task_group() as clients:
                for i in range(3):
                    ctx = real_context(
                        WorkloadContext, f"client-{i}", "", {"server": address}, shutdown
                    )
                    clients.start_soon(example.ping_client, ctx)
            # ping_client returns once every ping was answered (or its deadline
            # passed).  ``always`` is a no-op outside a simulation, so check a pong
            # here by hand as well.
            async with ClientTransport(RealNetwork()) as client:
                assert await client.get_reply(address, b"PING me 7") == b"PONG me 7"
            shutdown.set()  # the server process closes its transport and returns


async def test_example_run_real_checks_every_pong() -> None:
    with anyio.fail_after(LIMIT):
        run = await example.run_real(500, 50)
    assert run.ok, run.summary()
    assert len(run.latencies) == 500
    summary = run.summary()
    for word in ("requests/s", "p50", "p90", "p99", "max"):
        assert word in summary


async def test_example_load_generator_catches_a_wrong_pong() -> None:
    # The real run checks every reply itself (``always`` is a no-op outside a
    # simulation): an echo server is not a ping server, and the run must say so.
    with anyio.fail_after(LIMIT):
        async with serving() as server:
            run = await example.ping_load(RealNetwork(), server.address, 50, 5, 2.0)
    assert not run.ok
    assert isinstance(run.error, example.WrongReply)
    assert "FAILED: WrongReply" in run.summary()


def run_example(*args: str) -> subprocess.Popen[str]:
    return ctrl_c.start(
        [sys.executable, str(EXAMPLE_PATH), "--real", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=Path(EXAMPLE_PATH).parents[1],
    )


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_example_command_line(backend: str) -> None:
    process = run_example("--backend", backend, "--requests", "300", "--concurrency", "30")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"[{backend}]" in out
    assert "300 pongs checked" in out
    assert "requests/s" in out and "p99" in out
    assert not err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is a POSIX signal")
@pytest.mark.parametrize("presses", [1, 2])
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_example_ctrl_c_exits_130_without_traceback(backend: str, presses: int) -> None:
    process = run_example("--backend", backend, "--requests", "100000000", "--concurrency", "20")
    assert process.stdout is not None
    # The first line is printed once the server listens and pings are flowing.
    first = process.stdout.readline()
    assert "ping-pong on real TCP" in first, ctrl_c.press(process, [0])
    # An impatient user presses twice, the second time during the wind-down.
    _, err = ctrl_c.press(process, [0.2, 0.005][:presses])
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is a POSIX signal")
async def test_example_ctrl_c_is_a_cancellation() -> None:
    # SIGINT while pings flow (tasks start and end on every request): until_ctrl_c
    # must turn it into a cancellation.  Left to Python's default handler it is a
    # KeyboardInterrupt at a random line, sometimes inside trio's unprotected
    # Nursery.start_soon, which crashed the example with TrioInternalError.
    async def interrupt() -> None:
        await anyio.sleep(0.3)
        signal.raise_signal(signal.SIGINT)

    started = time.monotonic()
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(interrupt)
            result = await example.until_ctrl_c(partial(example.run_real, 10**8, 20))
    assert result is None
    assert time.monotonic() - started < 0.3 + 5.0  # stopped promptly, not at LIMIT


# -- many requests on one connection ---------------------------------------------


async def test_concurrent_get_reply_share_one_connection() -> None:
    count = 200
    held: list[ReceivedEnvelope[Any]] = []
    all_in = anyio.Event()

    async def reverse_order(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> None:
        # Hold every request, then answer them last-first: each caller must still
        # get its own reply, matched by correlation id, not by arrival order.
        held.append(request)
        if len(held) == count:
            all_in.set()
            for waiting in reversed(held):
                server.send_reply(waiting, b"re:" + waiting.payload)

    results: dict[int, bytes] = {}
    with anyio.fail_after(LIMIT):
        async with serving(reverse_order) as server, ClientTransport(RealNetwork()) as client:

            async def call(i: int) -> None:
                results[i] = await client.get_reply(server.address, f"req {i}".encode())

            async with anyio.create_task_group() as group:
                for i in range(count):
                    group.start_soon(call, i)
            assert all_in.is_set()
            assert server.stats.connections_accepted == 1
            assert server.stats.requests_received == count
            assert server.stats.replies_sent == count
    assert results == {i: f"re:req {i}".encode() for i in range(count)}
    assert client.pending == 0


async def test_many_concurrent_requests_with_interleaved_replies() -> None:
    async def jittery(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> None:
        server.send_reply(request, request.payload[::-1])

    with anyio.fail_after(LIMIT):
        async with serving(jittery) as server, ClientTransport(RealNetwork()) as client:
            rng = random.Random(7)
            payloads = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(300)]

            async def call(payload: bytes) -> None:
                assert await client.get_reply(server.address, payload) == payload[::-1]

            async with anyio.create_task_group() as group:
                for payload in payloads:
                    group.start_soon(call, payload)


async def test_serve_handler_sequential_concurrent_and_large() -> None:
    """serve(): replies written from the reader task, whole or in part, in any mix."""

    async def reverse(request: ReceivedEnvelope[Any]) -> bytes:
        return request.payload[::-1]

    rng = random.Random(11)
    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(RealNetwork(), "127.0.0.1:0") as server,
            anyio.create_task_group() as serving_group,
        ):
            serving_group.start_soon(server.serve, reverse)
            async with ClientTransport(RealNetwork()) as client:
                for size in (0, 1, 4096, 700_000, 16):  # one at a time: the direct path
                    payload = rng.randbytes(size)
                    assert await client.get_reply(server.address, payload) == payload[::-1]
                payloads = [rng.randbytes(rng.choice((7, 3000, 300_000))) for _ in range(60)]

                async def call(payload: bytes) -> None:
                    assert await client.get_reply(server.address, payload) == payload[::-1]

                async with anyio.create_task_group() as group:
                    for payload in payloads:
                        group.start_soon(call, payload)
            serving_group.cancel_scope.cancel()
    assert server.stats.replies_sent == 65


async def test_large_payloads_cross_many_reads_and_writes() -> None:
    # Frames far larger than a socket buffer: split across many reads and writes,
    # interleaved with small ones on the same connection.
    largest = 1024 * 1024 - 12 - len(b"echo:")  # the reply must fit the 1 MiB frame limit
    rng = random.Random(3)
    with anyio.fail_after(LIMIT):
        async with serving() as server, ClientTransport(RealNetwork()) as client:

            async def call(payload: bytes) -> None:
                assert await client.get_reply(server.address, payload) == b"echo:" + payload

            async with anyio.create_task_group() as group:
                for size in (largest, 300_000, 1, 65_536, 0, largest, 12_345):
                    group.start_soon(call, rng.randbytes(size))


async def test_an_oversize_request_fails_fast_and_says_why() -> None:
    with anyio.fail_after(LIMIT):
        async with serving() as server, ClientTransport(RealNetwork()) as client:
            # Over the client's own limit: refused at the call, nothing is sent.
            with pytest.raises(FrameTooLarge, match="max_frame_size=1048576"):
                await client.get_reply(server.address, b"x" * (2 * 1024 * 1024), timeout=5.0)
            assert server.stats.connections_closed_for_bad_input == 0
        # A client allowed more than the server: the server closes that connection.
        async with (
            serving() as server,
            ClientTransport(RealNetwork(), max_frame_size=4 * 1024 * 1024) as client,
        ):
            started = time.monotonic()
            # At most once, so that the closed connection ends the call (get_reply
            # would resend it, to be refused again, until its timeout).
            # MaybeDelivered: the server had read part of it when it hung up.
            with pytest.raises(MaybeDelivered) as info:
                await client.try_get_reply(server.address, b"x" * (2 * 1024 * 1024), timeout=5.0)
            assert time.monotonic() - started < 2.0
            message = str(info.value)
            assert not message.rstrip().endswith(":"), f"no reason given: {message!r}"
            assert server.stats.connections_closed_for_bad_input == 1
            # The client reconnects for the next request.
            assert await client.get_reply(server.address, b"small") == b"echo:small"


# -- time and failures -------------------------------------------------------------


async def never_answer(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> None:
    pass


async def test_timeout_with_real_time() -> None:
    with anyio.fail_after(LIMIT):
        async with serving(never_answer) as server, ClientTransport(RealNetwork()) as client:
            started = time.monotonic()
            with pytest.raises(TransportTimeout):
                await client.get_reply(server.address, b"hello?", timeout=0.2)
            elapsed = time.monotonic() - started
            assert 0.2 <= elapsed < 1.0
            assert client.pending == 0


async def test_default_timeout_comes_from_the_transport() -> None:
    with anyio.fail_after(LIMIT):
        async with (
            serving(never_answer) as server,
            ClientTransport(RealNetwork(), timeout=0.15) as client,
        ):
            started = time.monotonic()
            with pytest.raises(TransportTimeout):
                await client.get_reply(server.address, b"hello?")
            assert 0.15 <= time.monotonic() - started < 1.0


async def test_a_late_reply_is_dropped_and_counted() -> None:
    held: list[ReceivedEnvelope[Any]] = []

    async def hold(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> None:
        if request.payload == b"late":
            held.append(request)
        else:
            server.send_reply(request, request.payload)

    with anyio.fail_after(LIMIT):
        async with serving(hold) as server, ClientTransport(RealNetwork()) as client:
            with pytest.raises(TransportTimeout):
                await client.get_reply(server.address, b"late", timeout=0.1)
            server.send_reply(held[0], b"too late")
            # The connection stays healthy: the next request gets its own reply.
            assert await client.get_reply(server.address, b"next") == b"next"
            assert client.stats().dropped_replies == 1


async def test_server_restart_while_a_request_is_in_flight() -> None:
    """A server goes away while a request is in flight.  try_get_reply (at most
    once) fails fast with MaybeDelivered, and with plain ConnectionFailed while
    nobody listens; get_reply (at least once) resends the same request, same
    request_id, to the server restarted on that address, which answers it."""
    network = RealNetwork()
    seen: list[tuple[str, int, bytes]] = []  # (which server, request_id, payload)
    received = anyio.Event()

    def swallow(name: str) -> Handler:
        async def handler(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> None:
            seen.append((name, request.request_id, request.payload))
            received.set()  # and never answer

        return handler

    async def record_and_echo(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> None:
        seen.append(("restarted", request.request_id, request.payload))
        await echo(server, request)

    with anyio.fail_after(LIMIT):
        async with ClientTransport(network) as client, anyio.create_task_group() as group:
            # At most once: the request was read, then the server closed.
            async with serving(swallow("first")) as first:
                address = first.address

                async def close_when_received(server: ServerTransport[Any]) -> None:
                    await received.wait()
                    await server.aclose()

                group.start_soon(close_when_received, first)
                started = time.monotonic()
                with pytest.raises(MaybeDelivered):  # it was written: maybe executed
                    await client.try_get_reply(address, b"doomed", timeout=3.0)
                # The connection broke; the client need not wait out its timeout.
                assert time.monotonic() - started < 2.0
                assert [payload for _, _, payload in seen] == [b"doomed"]

            # Nobody listens now: fail fast, no hang, and say it never left.
            started = time.monotonic()
            with pytest.raises(ConnectionFailed, match="never sent") as info:
                await client.try_get_reply(address, b"anyone?", timeout=3.0)
            assert not isinstance(info.value, MaybeDelivered)
            assert time.monotonic() - started < 2.0

            # At least once: the server goes away with the request in flight and
            # comes back on the same port; the resent request is answered there.
            seen.clear()
            received = anyio.Event()
            replies: list[bytes] = []

            async def call() -> None:
                replies.append(await client.get_reply(address, b"resent", timeout=5.0))

            async with serving(swallow("doomed"), address=address) as doomed:
                group.start_soon(call)
                await received.wait()
                await doomed.aclose()
            started = time.monotonic()
            async with serving(record_and_echo, address=address) as second:
                assert second.address == address
                while not replies:  # noqa: ASYNC110 - the call's task appends it
                    await anyio.sleep(0.01)
                assert time.monotonic() - started < 3.0
                assert replies == [b"echo:resent"]
                # Resent as the same request: the request_id a server deduplicates by.
                request_id = seen[0][1]
                assert seen == [
                    ("doomed", request_id, b"resent"),
                    ("restarted", request_id, b"resent"),
                ]
                assert client.stats().retries >= 1

                # The same client keeps using the connection it reconnected with.
                for i in range(5):
                    reply = await client.get_reply(address, f"again {i}".encode(), timeout=3.0)
                    assert reply == f"echo:again {i}".encode()
                assert second.stats.connections_accepted == 1
                assert second.stats.requests_received == 6


async def test_connection_refused_fails_fast() -> None:
    with anyio.fail_after(LIMIT):
        address = await free_port_address()
        async with ClientTransport(RealNetwork()) as client:
            for _ in range(3):  # also after the first failure (reconnect backoff)
                started = time.monotonic()
                # At most once: plain ConnectionFailed, not MaybeDelivered -- a
                # request whose connection was never made provably never left.
                with pytest.raises(ConnectionFailed, match="never sent") as info:
                    await client.try_get_reply(address, b"ping", timeout=5.0)
                assert not isinstance(info.value, MaybeDelivered)
                assert time.monotonic() - started < 1.0
                assert address in str(info.value)
            # At least once (the default policy): connects are retried until the
            # deadline, and the timeout says what kept failing.
            started = time.monotonic()
            with pytest.raises(TransportTimeout, match="last failure: cannot connect") as timed:
                await client.get_reply(address, b"ping", timeout=0.3)
            assert 0.3 <= time.monotonic() - started < 1.0
            assert address in str(timed.value)
        # An explicit attempt limit makes get_reply itself fail fast.
        async with ClientTransport(RealNetwork(), retry=RetryPolicy(max_attempts=1)) as client:
            started = time.monotonic()
            with pytest.raises(ConnectionFailed) as info:
                await client.get_reply(address, b"ping", timeout=5.0)
            assert time.monotonic() - started < 1.0
            assert address in str(info.value)


async def test_use_after_close_raises_transport_closed() -> None:
    with anyio.fail_after(LIMIT):
        async with serving() as server:
            client = ClientTransport(RealNetwork())
            with pytest.raises(TransportClosed):  # not entered yet
                await client.get_reply(server.address, b"early")
            async with client:
                assert await client.get_reply(server.address, b"x") == b"echo:x"
            with pytest.raises(TransportClosed):
                await client.get_reply(server.address, b"late")
            with pytest.raises(TransportClosed):
                async with client:
                    pass


async def test_close_fails_pending_requests_with_transport_closed() -> None:
    with anyio.fail_after(LIMIT):
        async with serving(never_answer) as server, ClientTransport(RealNetwork()) as client:
            outcome: list[BaseException] = []

            async def wait_for_reply() -> None:
                try:
                    await client.get_reply(server.address, b"pending", timeout=5.0)
                except TransportError as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(wait_for_reply)
                while server.stats.requests_received == 0:  # noqa: ASYNC110 (a counter)
                    await anyio.sleep(0.01)
                await client.aclose()
            assert len(outcome) == 1
            assert isinstance(outcome[0], TransportClosed)


async def test_server_use_after_close() -> None:
    with anyio.fail_after(LIMIT):
        held: list[ReceivedEnvelope[Any]] = []

        async def hold(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> None:
            held.append(request)

        async with ClientTransport(RealNetwork()) as client:
            async with serving(hold) as server:
                with pytest.raises(TransportTimeout):
                    await client.get_reply(server.address, b"x", timeout=0.1)
            with pytest.raises(TransportClosed):
                server.send_reply(held[0], b"after close")
            with pytest.raises(TransportClosed):
                await server.receive()


@pytest.mark.parametrize(
    "destination",
    ["no-port", "127.0.0.1:", "127.0.0.1:99999", "::1:80", ":80", "127.0.0.1:http", "[::1]80"],
)
async def test_bad_destination_raises_invalid_address(destination: str) -> None:
    with anyio.fail_after(LIMIT):
        async with serving() as server, ClientTransport(RealNetwork()) as client:
            with pytest.raises(InvalidAddress):
                await client.get_reply(destination, b"x")
            assert issubclass(InvalidAddress, ValueError)
            # The transport is unharmed.
            assert await client.get_reply(server.address, b"ok") == b"echo:ok"


async def test_port_zero_destination_is_invalid_and_harmless() -> None:
    # Port 0 parses, but nothing can be reached there: the caller learns it at once
    # and the transport's other connections keep working.
    with anyio.fail_after(LIMIT):
        async with serving() as server, ClientTransport(RealNetwork()) as client:
            with pytest.raises(InvalidAddress):
                await client.get_reply("127.0.0.1:0", b"x")
            assert await client.get_reply(server.address, b"ok") == b"echo:ok"
            with pytest.raises(InvalidAddress):
                await client.get_reply("127.0.0.1:0", b"x")
            assert await client.get_reply(server.address, b"ok") == b"echo:ok"


# -- envelope-agnostic -------------------------------------------------------------


async def test_checked_envelope_end_to_end() -> None:
    async def answer(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> None:
        assert isinstance(request.envelope, CheckedEnvelope)
        server.send_reply(request, b"checked:" + request.payload)

    with anyio.fail_after(LIMIT):
        async with (
            serving(answer, envelope=CheckedEnvelope) as checked,
            serving() as plain,
            ClientTransport(RealNetwork()) as client,
        ):

            async def call_checked(i: int) -> None:
                payload = f"c{i}".encode() * 50
                reply = await client.get_reply(checked.address, payload, envelope=CheckedEnvelope)
                assert reply == b"checked:" + payload

            async def call_plain(i: int) -> None:
                reply = await client.get_reply(
                    plain.address, f"p{i}".encode(), envelope=RequestResponseEnvelope
                )
                assert reply == f"echo:p{i}".encode()

            # Both envelope types in flight at once from one client transport.
            async with anyio.create_task_group() as group:
                for i in range(50):
                    group.start_soon(call_checked, i)
                    group.start_soon(call_plain, i)
            assert checked.stats.connections_closed_for_bad_input == 0


async def test_envelope_mismatch_fails_fast_instead_of_hanging() -> None:
    # A RequestResponseEnvelope client talking to a CheckedEnvelope server: the
    # server cannot decode the frame and closes the connection; the client hears
    # about it through a connection failure, well before its timeout.
    with anyio.fail_after(LIMIT):
        async with (
            serving(envelope=CheckedEnvelope, max_frame_size=4096) as server,
            ClientTransport(RealNetwork()) as client,
        ):
            started = time.monotonic()
            # At most once, so that one closed connection ends the call; the
            # server read the request before closing, hence MaybeDelivered.
            with pytest.raises(MaybeDelivered):
                await client.try_get_reply(server.address, b"x" * 64, timeout=5.0)
            assert time.monotonic() - started < 2.0
            assert server.stats.connections_closed_for_bad_input == 1
            # At least once: resent on new connections, each closed the same way,
            # until the deadline; the timeout then names the last failure.
            started = time.monotonic()
            with pytest.raises(TransportTimeout, match="last failure: ") as info:
                await client.get_reply(server.address, b"x" * 64, timeout=0.5)
            assert time.monotonic() - started < 2.0
            assert server.address in str(info.value).partition("last failure: ")[2]
            assert server.stats.connections_closed_for_bad_input >= 2

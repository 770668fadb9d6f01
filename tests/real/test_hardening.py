"""A server under abuse on real loopback TCP, on trio and asyncio.

Raw sockets (``anyio.connect_tcp``) send what no ``ClientTransport`` would:
garbage, truncated frames, absurd length fields, frames dribbled one byte at a
time, and floods of idle connections.  Each bad connection must be closed by the
server (the raw socket sees EOF or a reset) with a logged reason or a counted
limit, memory must stay bounded, and a well-behaved client on its own connection
must keep getting replies throughout.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import re
import socket
import struct
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest
from anyio.abc import SocketAttribute

from moonpool.net import RealNetwork, parse_address
from moonpool.transport import (
    CheckedEnvelope,
    ClientTransport,
    ConnectionFailed,
    MaybeDelivered,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    SendQueueFull,
    ServerTransport,
    TransportTimeout,
)
from moonpool.transport._envelope import U32_MAX

pytestmark = [pytest.mark.anyio, pytest.mark.real_network]

LIMIT = 15.0  # bound for a whole test body
LOGGER = "moonpool.transport"
RR = RequestResponseEnvelope.serializer()


def frame(correlation_id: int, payload: bytes) -> bytes:
    return RR.serialize(RequestResponseEnvelope(correlation_id=correlation_id, payload=payload))


class GoodClient:
    """A well-behaved client that must be served before, during and after the abuse."""

    def __init__(self, client: ClientTransport, address: str) -> None:
        self.client = client
        self.address = address
        self.served = 0

    async def check(self) -> None:
        payload = f"good {self.served}".encode()
        with anyio.fail_after(2):
            reply = await self.client.get_reply(self.address, payload, timeout=2.0)
        assert reply == b"echo:" + payload
        self.served += 1

    async def keep_checking(self) -> None:
        """Ask every few milliseconds until cancelled; any failure fails the test."""
        while True:
            await self.check()
            await anyio.sleep(0.005)


@asynccontextmanager
async def abused_server(**options: Any) -> AsyncIterator[tuple[ServerTransport[Any], GoodClient]]:
    """An echo server, plus a good client already connected that keeps asking.

    On exit the good client must have been served throughout (it fails the test
    otherwise) and is served once more after the abuse.
    """
    envelope = options.get("envelope", RequestResponseEnvelope)
    async with (
        ServerTransport.bind(RealNetwork(), "127.0.0.1:0", **options) as server,
        ClientTransport(RealNetwork(), envelope=envelope) as client,
        anyio.create_task_group() as group,
    ):

        async def serve() -> None:
            async for request in server:
                with contextlib.suppress(ConnectionFailed):  # that client already left
                    server.send_reply(request, b"echo:" + request.payload)

        group.start_soon(serve)
        good = GoodClient(client, server.address)
        await good.check()  # its connection exists before any abuse starts
        group.start_soon(good.keep_checking)
        yield server, good
        served = good.served
        await good.check()
        group.cancel_scope.cancel()
    assert served > 1


async def raw_connect(address: str) -> anyio.abc.SocketStream:
    host, port = parse_address(address)
    return await anyio.connect_tcp(host, port)


async def closed_by_server(stream: anyio.abc.ByteStream, within: float = 3.0) -> bool:
    """True once the server closed the connection (EOF or reset), False if it did not."""
    with anyio.move_on_after(within):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True
    return False


async def read_until_eof(stream: anyio.abc.ByteStream) -> bytes:
    received = b""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            received += await stream.receive()
    return received


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition``: server counters have no event to wait on.  Callers bound it."""
    while not condition():  # noqa: ASYNC110
        await anyio.sleep(0.01)


def logged(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    """Warnings from the transport's logger containing every one of ``words``."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == LOGGER
        and record.levelno >= logging.WARNING
        and all(word in record.getMessage() for word in words)
    ]


@pytest.fixture(autouse=True)
def _capture_transport_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)


# -- bad bytes -----------------------------------------------------------------------


async def test_garbage_closes_that_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(1)
    with anyio.fail_after(LIMIT):
        async with abused_server() as (server, good):
            for i in range(5):
                raw = await raw_connect(server.address)
                async with raw:
                    # 0xFF-led garbage: the length field reads as ~4 GiB.
                    await raw.send(b"\xff" * 12 + rng.randbytes(4096))
                    assert await closed_by_server(raw)
                await good.check()
                assert server.stats.connections_closed_for_bad_input == i + 1
    assert len(logged(caplog, "FrameTooLarge")) == 5


async def test_garbage_that_frames_but_does_not_decode(caplog: pytest.LogCaptureFixture) -> None:
    # CheckedEnvelope frames carry a CRC: a plausible length with a wrong checksum
    # is a SerializationError (not FrameTooLarge), and closes just that connection.
    with anyio.fail_after(LIMIT):
        async with ServerTransport.bind(
            RealNetwork(), "127.0.0.1:0", envelope=CheckedEnvelope
        ) as s:
            raw = await raw_connect(s.address)
            async with raw:
                await raw.send(struct.pack("<II", 16, 0xDEADBEEF) + b"not msgpack at all")
                assert await closed_by_server(raw)
    assert s.stats.connections_closed_for_bad_input == 1
    messages = logged(caplog, "SerializationError")
    assert len(messages) == 1
    assert "FrameTooLarge" not in messages[0]


async def test_many_garbage_connections_at_once(caplog: pytest.LogCaptureFixture) -> None:
    count = 40
    rng = random.Random(2)
    with anyio.fail_after(LIMIT):
        async with abused_server() as (server, good):
            closed = 0

            async def abuse() -> None:
                nonlocal closed
                async with await raw_connect(server.address) as raw:
                    await raw.send(b"\xfe" * 16 + rng.randbytes(rng.randrange(0, 2048)))
                    was_closed = await closed_by_server(raw)
                closed += was_closed  # not "closed += await ...": that reads closed too early

            async with anyio.create_task_group() as group:
                for _ in range(count):
                    group.start_soon(abuse)
                await good.check()
            assert closed == count
            assert server.stats.connections_closed_for_bad_input == count
    assert len(logged(caplog, "FrameTooLarge")) == count


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"\x01\x00\x00\x00\x00", id="truncated-header"),
        pytest.param(frame(1, b"0123456789")[:-3], id="truncated-body"),
    ],
)
async def test_truncated_frame_then_eof(caplog: pytest.LogCaptureFixture, sent: bytes) -> None:
    with anyio.fail_after(LIMIT):
        async with abused_server() as (server, good):
            raw = await raw_connect(server.address)
            async with raw:
                await raw.send(sent)
                await raw.send_eof()
                assert await closed_by_server(raw)
            await good.check()
            assert server.stats.connections_closed_for_bad_input == 1
            assert server.stats.requests_received == good.served  # only the good ones
    assert len(logged(caplog, "SerializationError", "mid-frame")) == 1


async def test_complete_frames_then_eof_are_answered(caplog: pytest.LogCaptureFixture) -> None:
    # The counterpart of the test above: a client that half-closes after whole
    # frames did nothing wrong, and gets its replies before the server closes.
    with anyio.fail_after(LIMIT):
        async with abused_server(drain_timeout=5.0) as (server, _good):
            raw = await raw_connect(server.address)
            async with raw:
                await raw.send(frame(5, b"a") + frame(6, b"bb"))
                await raw.send_eof()
                started = time.monotonic()
                received = await read_until_eof(raw)
                # Closed as soon as the replies are out, not after the drain timeout.
                assert time.monotonic() - started < 1.0
            assert received == frame(5, b"echo:a") + frame(6, b"echo:bb")
            assert server.stats.connections_closed_for_bad_input == 0
    assert not logged(caplog, "SerializationError")


# -- length fields and memory ----------------------------------------------------------


async def test_a_4_gib_length_field_is_refused_before_allocation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with anyio.fail_after(LIMIT):
        async with abused_server() as (server, good):
            raw = await raw_connect(server.address)
            async with raw:
                tracemalloc.start()
                try:
                    baseline = tracemalloc.get_traced_memory()[0]
                    # Only the 12-byte header, no body: the server must give up on the
                    # header alone instead of waiting for (and buffering) 4 GiB.
                    await raw.send(struct.pack("<QI", 7, U32_MAX))
                    assert await closed_by_server(raw)
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
            assert peak - baseline < 1024 * 1024
            await good.check()
            assert server.stats.connections_closed_for_bad_input == 1
    assert len(logged(caplog, "FrameTooLarge", str(12 + U32_MAX))) == 1


async def test_frame_size_limit_is_exact(caplog: pytest.LogCaptureFixture) -> None:
    limit = 64 * 1024
    with anyio.fail_after(LIMIT):
        async with abused_server(max_frame_size=limit) as (server, good):
            # A raw frame of exactly the limit is served ...
            raw = await raw_connect(server.address)
            async with raw:
                await raw.send(frame(1, b"x" * (limit - 12 - 5)))
                reply = b""
                while len(reply) < limit:
                    reply += await raw.receive()
                assert reply == frame(1, b"echo:" + b"x" * (limit - 12 - 5))
            # ... one byte more is not, and only its header is ever read.
            raw = await raw_connect(server.address)
            async with raw:
                await raw.send(frame(2, b"x" * (limit - 12 + 1))[:12])
                assert await closed_by_server(raw)
            await good.check()
            assert server.stats.connections_closed_for_bad_input == 1
    assert len(logged(caplog, "FrameTooLarge")) == 1


# -- slow clients ------------------------------------------------------------------------


async def test_a_frame_sent_one_byte_at_a_time_is_served() -> None:
    request = frame(42, b"slow but honest")
    with anyio.fail_after(LIMIT):
        async with abused_server() as (server, good):
            raw = await raw_connect(server.address)
            async with raw:
                for i, byte in enumerate(request):
                    await raw.send(bytes([byte]))
                    await anyio.sleep(0.01)
                    if i % 8 == 0:
                        await good.check()  # others are served meanwhile
                expected = frame(42, b"echo:slow but honest")
                reply = b""
                while len(reply) < len(expected):
                    reply += await raw.receive()
                assert reply == expected
            assert server.stats.connections_closed_for_bad_input == 0


# -- connection limits -----------------------------------------------------------------


async def test_an_idle_flood_cannot_lock_new_clients_out(caplog: pytest.LogCaptureFixture) -> None:
    """Silent sockets filling every slot used to lock every new client out (20 of 20
    new connects failed).  At max_connections a newcomer now takes the slot of the
    longest-idle connection: every new client is served, and the server never holds
    more than max_connections."""
    limit, flood, newcomers = 50, 200, 20
    with anyio.fail_after(LIMIT):
        async with abused_server(max_connections=limit) as (server, good):
            raws = [await raw_connect(server.address) for _ in range(flood)]
            try:
                await wait_until(lambda: server.stats.connections_accepted >= flood)
                assert server.connection_count <= limit
                for n in range(newcomers):
                    async with ClientTransport(RealNetwork()) as newcomer:
                        reply = await newcomer.get_reply(server.address, b"new %d" % n)
                    assert reply == b"echo:new %d" % n
                    assert server.connection_count <= limit
                await good.check()
                # The oldest silent sockets made room, each closed by the server.
                evicted = server.stats.connections_evicted
                assert evicted >= flood + 1 - limit  # the good client holds one slot
                assert server.stats.connections_rejected == 0
                assert await closed_by_server(raws[0], within=1.0)
            finally:
                for raw in raws:
                    await anyio.aclose_forcefully(raw)
    assert logged(caplog, "connection limit of 50") == []  # evictions log at INFO


async def test_at_max_connections_with_every_connection_busy_a_newcomer_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection is idle only with nothing owed either way: one whose request the
    application still holds is never evicted, so when all are busy the newcomer is
    the one refused."""
    limit = 4
    held: list[ReceivedEnvelope[Any]] = []

    async def hold(request: ReceivedEnvelope[Any]) -> None:
        held.append(request)  # answered only at the end

    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(RealNetwork(), "127.0.0.1:0", max_connections=limit) as server,
            anyio.create_task_group() as group,
        ):
            group.start_soon(server.serve, hold)
            busy = [await raw_connect(server.address) for _ in range(limit)]
            for n, raw in enumerate(busy):
                await raw.send(frame(n + 1, b"hold"))
            await wait_until(lambda: len(held) == limit)
            newcomer = await raw_connect(server.address)
            assert await closed_by_server(newcomer)
            assert server.stats.connections_rejected == 1
            assert server.stats.connections_evicted == 0
            # Once one busy connection is answered it is idle, and makes room.
            await held[0].reply(b"done")
            assert await read_until_eof_or(busy[0], len(frame(1, b"done"))) == frame(1, b"done")
            late = await raw_connect(server.address)
            assert await closed_by_server(busy[0])
            assert server.stats.connections_evicted == 1
            for raw in [*busy, newcomer, late]:
                await raw.aclose()
            group.cancel_scope.cancel()
    assert logged(caplog, "connection limit of 4", "every connection is busy")


async def read_until_eof_or(stream: anyio.abc.ByteStream, size: int) -> bytes:
    """Read until ``size`` bytes arrived or the stream ended."""
    received = b""
    with contextlib.suppress(anyio.EndOfStream):
        while len(received) < size:
            received += await stream.receive()
    return received


async def test_an_idle_connection_is_closed_after_idle_timeout() -> None:
    """Only connections with nothing to do are closed: one whose request is being
    handled, one in the middle of a frame (frame_timeout's business) and one that
    keeps talking all stay open."""
    idle_timeout = 0.2
    release = anyio.Event()

    async def slow(request: ReceivedEnvelope[Any]) -> bytes:
        if request.payload == b"slow":
            await release.wait()
        return b"echo:" + request.payload

    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(
                RealNetwork(), "127.0.0.1:0", idle_timeout=idle_timeout, frame_timeout=10.0
            ) as server,
            ClientTransport(RealNetwork()) as client,
            anyio.create_task_group() as group,
        ):
            group.start_soon(server.serve, slow)
            silent = await raw_connect(server.address)
            await wait_until(lambda: server.stats.connections_accepted == 1)
            accepted = anyio.current_time()
            waiting = await raw_connect(server.address)
            await waiting.send(frame(1, b"slow"))
            half = await raw_connect(server.address)
            await half.send(frame(2, b"never finished")[:9])

            async def chatter() -> None:
                for n in range(20):
                    assert await client.get_reply(server.address, b"%d" % n) == b"echo:%d" % n
                    await anyio.sleep(idle_timeout / 4)

            assert await closed_by_server(silent, within=2.0)
            assert 0.9 * idle_timeout <= anyio.current_time() - accepted < 1.0
            await chatter()  # 1 s of talk, never idle for long: never closed
            assert server.stats.connections_closed_idle == 1
            assert client.stats().connection_failures == 0
            # The slow request is answered a second later; then its connection idles.
            release.set()
            assert await read_until_eof_or(waiting, len(frame(1, b"echo:slow"))) == frame(
                1, b"echo:slow"
            )
            assert await closed_by_server(waiting, within=2.0)
            # ... and so does the chatter's, now silent; its next call reconnects.
            await wait_until(lambda: server.stats.connections_closed_idle == 3)
            assert await client.get_reply(server.address, b"again") == b"echo:again"
            assert server.stats.connections_accepted == 5
            assert server.stats.connections_closed_for_slow_frames == 0
            assert not await closed_by_server(half, within=0.3)  # mid-frame: not idle
            for raw in (silent, waiting, half):
                await raw.aclose()
            group.cancel_scope.cancel()


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_idle_timeout_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        ServerTransport(RealNetwork(), "127.0.0.1:0", idle_timeout=bad)


async def test_abuse_does_not_leak_connections() -> None:
    # After every kind of abuse has come and gone, the server holds only the good
    # client's connection: nothing was left half-open.
    with anyio.fail_after(LIMIT):
        async with abused_server(drain_timeout=5.0) as (server, good):
            payloads = [
                b"\xff" * 64,
                b"\x00" * 5,
                struct.pack("<QI", 1, U32_MAX),
                frame(9, b"ok"),
            ]
            for payload in payloads:
                async with await raw_connect(server.address) as raw:
                    await raw.send(payload)
                    await raw.send_eof()
                    await closed_by_server(raw)
            # Promptly: well within the 5 s drain timeout a half-closed connection gets.
            with anyio.move_on_after(1.0):
                await wait_until(lambda: server.connection_count <= 1)
            assert server.connection_count == 1
            await good.check()


async def test_client_transport_survives_a_server_speaking_garbage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The mirror image: a "server" answering with garbage makes the client close
    # that connection (logged) and fail the request, never hang or crash.  An
    # at-most-once call fails at once; an at-least-once one resends on fresh
    # connections until its deadline, then says what kept failing.
    with anyio.fail_after(LIMIT):
        async with await RealNetwork().listen("127.0.0.1:0") as listener:

            async def bad_server() -> None:
                while True:
                    stream = await listener.accept()
                    async with stream:
                        await stream.receive()
                        await stream.send(b"\xff" * 64)
                        with (
                            anyio.move_on_after(2),
                            contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError),
                        ):
                            await stream.receive()  # until the client hangs up

            async with anyio.create_task_group() as group:
                group.start_soon(bad_server)
                async with ClientTransport(RealNetwork()) as client:
                    for _ in range(2):  # also on the connection made after the first
                        started = time.monotonic()
                        # MaybeDelivered, not plain ConnectionFailed: the bad server
                        # read the request before answering garbage, so it was written.
                        with pytest.raises(MaybeDelivered, match="maximum frame size"):
                            await client.try_get_reply(listener.address, b"hi", timeout=3.0)
                        assert time.monotonic() - started < 2.0
                    started = time.monotonic()
                    with pytest.raises(TransportTimeout) as info:
                        await client.get_reply(listener.address, b"hi", timeout=0.5)
                    assert time.monotonic() - started < 2.0
                    message = str(info.value)
                    assert "last failure: " in message and "maximum frame size" in message
                    assert client.stats().retries >= 1, message
                group.cancel_scope.cancel()
    assert logged(caplog, "maximum frame size")


async def test_half_closed_client_that_vanishes_is_not_waited_for() -> None:
    # A client sends two requests, half-closes, then resets the connection.  Once a
    # reply fails to go out, nothing more can be delivered: the server must drop
    # the connection at once, not hold its slot for the whole drain timeout.
    with anyio.fail_after(LIMIT):
        async with ServerTransport.bind(RealNetwork(), "127.0.0.1:0", drain_timeout=5.0) as server:
            raw = await raw_connect(server.address)
            await raw.send(frame(1, b"one") + frame(2, b"two"))
            await raw.send_eof()
            first, second = await server.receive(), await server.receive()
            sock = raw.extra(SocketAttribute.raw_socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await raw.aclose()  # RST, not FIN
            await anyio.sleep(0.1)
            started = time.monotonic()
            for request in (first, second):
                with contextlib.suppress(ConnectionFailed):
                    server.send_reply(request, b"too late")
                await anyio.sleep(0.05)
            await wait_until(lambda: server.connection_count == 0)
            assert time.monotonic() - started < 1.0


# -- slowloris: frame_timeout ------------------------------------------------------------


async def test_a_frame_left_unfinished_is_closed_after_frame_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with anyio.fail_after(LIMIT):
        async with abused_server(frame_timeout=0.3) as (server, good):
            raw = await raw_connect(server.address)
            async with raw:
                started = time.monotonic()
                await raw.send(frame(1, b"never finished")[:15])
                assert await closed_by_server(raw, within=3.0)
                assert 0.3 <= time.monotonic() - started < 1.5
            await good.check()
            assert server.stats.connections_closed_for_slow_frames == 1
            assert server.stats.connections_closed_for_bad_input == 0
    assert len(logged(caplog, "frame_timeout")) == 1


async def test_dribbling_does_not_extend_frame_timeout() -> None:
    # One byte every 50 ms keeps the connection busy but never finishes a
    # 200-byte frame within 0.3 s: the time spent waiting adds up across reads.
    with anyio.fail_after(LIMIT):
        async with abused_server(frame_timeout=0.3) as (server, _good):
            raw = await raw_connect(server.address)
            async with raw:
                started = time.monotonic()
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    for byte in frame(1, b"x" * 188):
                        await raw.send(bytes([byte]))
                        await anyio.sleep(0.05)
                assert await closed_by_server(raw)
                assert time.monotonic() - started < 1.5
            assert server.stats.connections_closed_for_slow_frames == 1


async def test_frame_timeout_spares_idle_and_busy_connections() -> None:
    with anyio.fail_after(LIMIT):
        async with abused_server(frame_timeout=0.2) as (server, _good):
            raw = await raw_connect(server.address)
            async with raw:
                # Idle between frames for longer than frame_timeout: not a slow frame.
                await anyio.sleep(0.3)
                # Then a stream of frames for longer than frame_timeout in total, each
                # split across writes so a partial frame is buffered at almost every
                # read: every completed frame restarts the clock.
                # Ids from 1: correlation id 0 is ONE_WAY_ID, a message owed no reply.
                data = b"".join(frame(i, f"busy {i}".encode()) for i in range(1, 26))
                for start in range(0, len(data), 7):
                    await raw.send(data[start : start + 7])
                    await anyio.sleep(0.01)
                expected = b"".join(frame(i, f"echo:busy {i}".encode()) for i in range(1, 26))
                reply = b""
                while len(reply) < len(expected):
                    reply += await raw.receive()
                assert reply == expected
            assert server.stats.connections_closed_for_slow_frames == 0


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_frame_timeout_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="frame_timeout"):
        ServerTransport(RealNetwork(), "127.0.0.1:0", frame_timeout=bad)


async def test_a_closed_connection_frees_its_queued_replies_at_once() -> None:
    """A client that never reads its 256 KiB replies, then goes away: what the server
    had queued for it is freed when the connection closes, not when (or if) another
    connection is accepted.  Before, ~16 MiB stayed in memory here."""
    big = b"r" * (256 * 1024)
    held: list[object] = []

    async def big_reply(request: Any) -> bytes:
        held.append(request)  # the application keeps a reference to the request
        return big

    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(
                RealNetwork(),
                "127.0.0.1:0",
                max_queued_replies=64,
                max_queued_reply_bytes=32 * 1024 * 1024,
            ) as server,
            anyio.create_task_group() as group,
        ):
            group.start_soon(server.serve, big_reply)
            tracemalloc.start()
            try:
                raw = await raw_connect(server.address)
                # Pipelined requests, never read: replies pile up in the server's queue.
                # Ids from 1: correlation id 0 is ONE_WAY_ID, a message owed no reply.
                await raw.send(b"".join(frame(n, b"give") for n in range(1, 65)))
                while len(held) < 64:  # noqa: ASYNC110 - polling a counter in a test
                    await anyio.sleep(0.01)
                await anyio.sleep(0.1)
                queued = tracemalloc.get_traced_memory()[0]
                await raw.aclose()
                while server.connection_count:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                gc.collect()
                after = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
            assert queued - after > 8 * 1024 * 1024, (queued, after)
            group.cancel_scope.cancel()


@pytest.mark.parametrize("clients", [1, 4])
async def test_clients_that_never_read_are_bounded_in_bytes(clients: int) -> None:
    """Replies are bounded in bytes, per connection and for the whole server: clients
    that pipeline requests for 256 KiB replies and never read them cost the server at
    most the configured bytes (within 10 %), and get SendQueueFull beyond; before,
    only a count of frames bounded it (4,096 x 256 KiB = 1 GiB per connection)."""
    big = b"r" * (256 * 1024)
    per_connection, total = 2 * 1024 * 1024, 3 * 1024 * 1024
    refused: set[str] = set()  # which limits refusals named (not every message: memory)

    async def big_reply(request: Any) -> None:
        try:
            server.send_reply(request, big)
        except SendQueueFull as exc:
            refused.update(re.findall(r"max_\w+_bytes=", str(exc)))

    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(
                RealNetwork(),
                "127.0.0.1:0",
                max_queued_reply_bytes=per_connection,
                max_total_reply_bytes=total,
            ) as server,
            anyio.create_task_group() as group,
        ):
            group.start_soon(server.serve, big_reply)
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                raws = [await raw_connect(server.address) for _ in range(clients)]
                for raw in raws:
                    with contextlib.suppress(OSError, anyio.BrokenResourceError):
                        # Ids from 1: correlation id 0 is ONE_WAY_ID (owed no reply).
                        await raw.send(b"".join(frame(n, b"give") for n in range(1, 201)))
                while server.stats.requests_received < 200 * clients:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                await anyio.sleep(0.2)
                held = tracemalloc.get_traced_memory()[0] - baseline
            finally:
                tracemalloc.stop()
            bound = min(per_connection * clients, total)
            # What sits in kernel socket buffers is not ours; what we queue, or are
            # writing, is bounded.  (On asyncio the event loop keeps its own copy of
            # the unsent part of a write in progress: up to one per connection.)
            assert held < 1.1 * bound + clients * len(big), (held, bound)
            # Each refusal names the limit it hit (which one comes first depends on
            # how much the backend's own socket buffers took).
            assert refused
            assert refused <= {"max_queued_reply_bytes=", "max_total_reply_bytes="}
            for raw in raws:
                await raw.aclose()
            group.cancel_scope.cancel()


async def test_a_header_bomb_closes_its_connection_and_costs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Frames of 150,000 tiny CheckedEnvelope headers each (1 MiB) used to decode into
    ~20 MB apiece; now each is refused on its header count, its connection is closed,
    and the server's memory does not grow by more than the frames it buffered."""
    headers = {f"{i:x}": "" for i in range(150_000)}
    body = msgspec.msgpack.encode([0, 1, b"", headers])
    length_and_sum = struct.pack("<II", len(body), zlib.crc32(body))
    bomb = length_and_sum + struct.pack("<I", zlib.crc32(length_and_sum)) + body
    assert len(bomb) < 2**20  # within max_frame_size: only the headers are wrong
    with anyio.fail_after(LIMIT):
        async with abused_server(envelope=CheckedEnvelope) as (server, good):
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                raws = [await raw_connect(server.address) for _ in range(8)]
                for raw in raws:
                    with contextlib.suppress(OSError, anyio.BrokenResourceError):
                        await raw.send(bomb)
                for raw in raws:
                    assert await closed_by_server(raw)
                peak = tracemalloc.get_traced_memory()[1] - baseline
            finally:
                tracemalloc.stop()
            for raw in raws:
                await raw.aclose()
            assert server.stats.connections_closed_for_bad_input == len(raws)
            # Before: 8 x ~20 MB.  Now: at most the frames being buffered.
            assert peak < len(raws) * 2 * len(bomb), peak
            await good.check()
    assert len(logged(caplog, "length <= 64", "MAX_HEADERS=64")) == len(raws)


# -- fairness ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["serve", "async for"])
async def test_a_greedy_pipeliner_does_not_hold_up_other_connections(style: str) -> None:
    """A client pipelining 20,000 requests in one write, and another sending one: the
    second is handled after at most a few dozen of the first's, whether the handler
    runs in the connection's task (``serve``) or the application replies without
    awaiting (``async for`` + ``send_reply``).  Before, it waited behind a whole read's
    worth of them (thousands) or the whole queue."""
    handled: list[bytes] = []

    async def handler(request: ReceivedEnvelope[Any]) -> bytes:
        handled.append(request.payload)
        return request.payload

    async def application(server: ServerTransport[Any]) -> None:
        async for request in server:
            handled.append(request.payload)
            with contextlib.suppress(ConnectionFailed):
                server.send_reply(request, request.payload)

    burst = b"".join(frame(n + 1, b"g") for n in range(20_000))
    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(RealNetwork(), "127.0.0.1:0") as server,
            ClientTransport(RealNetwork()) as polite,
            anyio.create_task_group() as group,
        ):
            if style == "serve":
                group.start_soon(server.serve, handler)
            else:
                group.start_soon(application, server)
            assert await polite.get_reply(server.address, b"hello") == b"hello"  # connected
            greedy = await raw_connect(server.address)
            group.start_soon(read_until_eof, greedy)  # it reads its replies, slowly or not
            await greedy.send(burst)
            await wait_until(lambda: len(handled) > 100)
            sent_at = len(handled)
            assert await polite.get_reply(server.address, b"polite") == b"polite"
            waited_behind = handled.index(b"polite") - sent_at
            assert waited_behind <= 64, waited_behind
            group.cancel_scope.cancel()
        await greedy.aclose()

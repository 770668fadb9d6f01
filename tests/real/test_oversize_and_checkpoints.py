"""An oversize message fails at its caller and hurts nobody else; every public async
call is a checkpoint, also when it raises.  On real loopback TCP, trio and asyncio.

Before: an oversize request or reply was written anyway, the receiver closed the
connection on ``FrameTooLarge`` and every other request on it failed with
``ConnectionFailed``; and a ``get_reply`` that raised before yielding made a naive
retry loop spin without letting any other task run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from moonpool.net import RealNetwork
from moonpool.transport import (
    CheckedEnvelope,
    ClientTransport,
    FrameTooLarge,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    ServerTransport,
    TransportClosed,
)

pytestmark = [pytest.mark.anyio, pytest.mark.real_network]

LIMIT = 10.0
MAX_FRAME = 4096
ENVELOPES = [RequestResponseEnvelope, CheckedEnvelope]


def header_size(envelope: Any) -> int:
    size: int = envelope.serializer().header_size
    return size


def largest_payload(envelope: Any) -> int:
    """The largest payload whose frame fits in MAX_FRAME whatever its correlation id
    (found by encoding; CheckedEnvelope's msgpack body grows with the id)."""
    serializer = envelope.serializer()
    size = MAX_FRAME
    largest_id = (1 << 64) - 1
    while len(serializer.serialize(envelope.create_request(largest_id, b"x" * size))) > MAX_FRAME:
        size -= 1
    return size


@asynccontextmanager
async def limited_server(
    envelope: Any, handler: Callable[[ServerTransport[Any], ReceivedEnvelope[Any]], Any]
) -> AsyncIterator[ServerTransport[Any]]:
    """A server with MAX_FRAME as its limit, serving ``handler(server, request)``."""
    network = RealNetwork()
    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(
                network, "127.0.0.1:0", envelope=envelope, max_frame_size=MAX_FRAME
            ) as server,
            anyio.create_task_group() as group,
        ):
            group.start_soon(server.serve, lambda request: handler(server, request))
            yield server
            group.cancel_scope.cancel()


async def echo(server: ServerTransport[Any], request: ReceivedEnvelope[Any]) -> bytes:
    return request.payload


@pytest.mark.parametrize("envelope", ENVELOPES, ids=lambda e: e.__name__)
async def test_an_oversize_request_fails_at_its_caller_and_nobody_else(envelope: Any) -> None:
    async with limited_server(envelope, echo) as server:
        async with ClientTransport(
            RealNetwork(), envelope=envelope, max_frame_size=MAX_FRAME
        ) as client:
            assert await client.get_reply(server.address, b"warm up") == b"warm up"
            fits = b"f" * largest_payload(envelope)
            assert await client.get_reply(server.address, fits) == fits  # at the limit
            with pytest.raises(FrameTooLarge) as info:
                await client.get_reply(server.address, fits + b"!" * 16)
            message = str(info.value)
            assert f"max_frame_size={MAX_FRAME}" in message
            assert f"{header_size(envelope)}-byte header included" in message
            # The same connection still serves everyone else.
            assert await client.get_reply(server.address, b"after") == b"after"
            assert client.stats(envelope).connection_failures == 0
        assert server.stats.connections_closed_for_bad_input == 0


@pytest.mark.parametrize("envelope", ENVELOPES, ids=lambda e: e.__name__)
async def test_an_oversize_reply_fails_at_send_reply_and_the_connection_lives(
    envelope: Any,
) -> None:
    errors: list[str] = []

    async def big_or_small(
        server: ServerTransport[Any], request: ReceivedEnvelope[Any]
    ) -> bytes | None:
        if request.payload == b"big":
            try:
                server.send_reply(request, b"b" * MAX_FRAME)
            except FrameTooLarge as exc:
                errors.append(str(exc))
                return b"too big, sorry"
        return request.payload

    async with limited_server(envelope, big_or_small) as server:
        async with ClientTransport(RealNetwork(), envelope=envelope) as client:
            async with anyio.create_task_group() as calls:
                replies: dict[bytes, bytes] = {}

                async def call(payload: bytes) -> None:
                    replies[payload] = await client.get_reply(server.address, payload)

                for payload in (b"one", b"big", b"two"):
                    calls.start_soon(call, payload)
            assert replies == {b"one": b"one", b"big": b"too big, sorry", b"two": b"two"}
            assert client.stats(envelope).connection_failures == 0
        assert len(errors) == 1 and f"max_frame_size={MAX_FRAME}" in errors[0]


async def test_get_reply_that_raises_at_once_still_lets_other_tasks_run() -> None:
    network = RealNetwork()
    ran = 0

    async def other() -> None:
        nonlocal ran
        while True:
            ran += 1
            await anyio.lowlevel.checkpoint()

    client = ClientTransport(network)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(other)
            await anyio.lowlevel.checkpoint()
            before = ran
            for _ in range(50):  # a naive retry loop around a call that fails at once
                with pytest.raises(TransportClosed):
                    await client.get_reply("127.0.0.1:9", b"never open")
            assert ran - before >= 25, "each failing call must yield to the other task"
            group.cancel_scope.cancel()


async def test_a_server_stopping_mid_reply_has_its_connection_closed_by_the_client() -> None:
    """The client's half-frame timeout (PeerConfig.frame_timeout), mirroring the
    server's: a reply cut off mid-frame no longer holds the connection open."""
    from moonpool.transport import MaybeDelivered, PeerConfig

    serializer = RequestResponseEnvelope.serializer()
    stalled = anyio.Event()

    async def half_replier(stream: Any) -> None:
        async with stream:
            data = await stream.receive()
            request = serializer.deserialize(data)
            reply = serializer.serialize(request.create_reply(b"x" * 1000))
            await stream.send(reply[:500])  # half a frame, then silence
            stalled.set()
            await anyio.sleep(30)

    network = RealNetwork()
    with anyio.fail_after(LIMIT):
        async with await network.listen("127.0.0.1:0") as listener:
            async with anyio.create_task_group() as group:

                async def accept() -> None:
                    group.start_soon(half_replier, await listener.accept())

                group.start_soon(accept)
                config = PeerConfig(frame_timeout=0.5)
                async with ClientTransport(network, peer_config=config) as client:
                    started = anyio.current_time()
                    # At most once, so the closed connection ends the call (get_reply
                    # would resend until its timeout): MaybeDelivered, since the
                    # request was written -- the server even began its reply.
                    with pytest.raises(MaybeDelivered, match="middle of a frame"):
                        await client.try_get_reply(listener.address, b"hello", timeout=5.0)
                    assert 0.4 < anyio.current_time() - started < 3.0
                    assert stalled.is_set()
                    peer = next(iter(client._drivers.values())).peers[listener.address]
                    assert peer.stats.slow_frames == 1
                group.cancel_scope.cancel()


async def test_a_burst_beyond_the_peer_queue_is_served_not_refused() -> None:
    """Backpressure on real sockets: 1,000 concurrent calls through a 64-frame peer
    queue to a healthy server all get their replies (before: the excess failed at
    once with SendQueueFull, whose message blamed the remote)."""
    from moonpool.transport import PeerConfig

    async with limited_server(RequestResponseEnvelope, echo) as server:
        config = PeerConfig(max_queued_frames=64)
        async with ClientTransport(RealNetwork(), peer_config=config) as client:
            replies: list[bytes] = []

            async def ask(n: int) -> None:
                replies.append(await client.get_reply(server.address, b"%d" % n))

            async with anyio.create_task_group() as calls:
                for n in range(1000):
                    calls.start_soon(ask, n)
            assert sorted(replies) == sorted(b"%d" % n for n in range(1000))

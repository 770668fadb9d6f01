"""The delivery contracts on loopback TCP, on trio and asyncio.

What the simulated tests in ``tests/transport/test_delivery_contracts.py`` prove
with scripted faults, here with real sockets: a call that timed out is never
written afterwards, one-way messages arrive and expect nothing, idle connections
are pinged by the client and answered by the server.
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.abc
import pytest

from moonpool.net import RealNetwork
from moonpool.transport import (
    PING_ID,
    ClientTransport,
    FrameDecoder,
    PeerConfig,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    ServerTransport,
    TransportError,
    TransportTimeout,
)

pytestmark = pytest.mark.anyio

LIMIT = 20.0
RR = RequestResponseEnvelope.serializer()


async def test_a_request_queued_behind_a_stalled_write_is_never_written_after_its_timeout() -> None:
    """The server stops reading; a large request fills the kernel's buffers and a
    small one queues behind it in the peer.  Both calls time out.  When the server
    reads again it finds what had been handed over of the large one, then the end
    of the stream: the client closed the connection rather than go on writing a
    frame whose call had ended, and the small one never went out at all."""
    network = RealNetwork()
    big = b"B" * (32 * 1024 * 1024)  # far beyond any loopback socket buffers
    with anyio.fail_after(LIMIT):
        async with await network.listen("127.0.0.1:0") as listener:
            async with (
                ClientTransport(network, max_frame_size=64 * 1024 * 1024) as client,
                anyio.create_task_group() as group,
            ):
                accepted: list[anyio.abc.ByteStream] = []
                got_one = anyio.Event()

                async def accept() -> None:
                    accepted.append(await listener.accept())
                    got_one.set()

                group.start_soon(accept)

                async def big_call() -> None:
                    with pytest.raises(TransportTimeout):
                        await client.try_get_reply(listener.address, big, timeout=1.0)

                group.start_soon(big_call)
                await got_one.wait()
                await anyio.sleep(0.2)  # the big write is under way and stalled
                with pytest.raises(TransportTimeout):
                    await client.get_reply(listener.address, b"small", timeout=0.5)
                await anyio.sleep(0.8)  # both calls are over
                assert client.pending == 0
                # Now read everything that ever comes.
                decoder: FrameDecoder[RequestResponseEnvelope] = FrameDecoder(
                    RR, max_frame_size=64 * 1024 * 1024
                )
                payloads: list[bytes] = []
                stream = accepted[0]
                with (
                    anyio.move_on_after(3.0),
                    contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError),
                ):
                    while True:
                        for envelope in decoder.feed(await stream.receive()):
                            if envelope.correlation_id != PING_ID:
                                payloads.append(envelope.payload[:5])
                # The small one never went out.  The big one: cut off (trio: its
                # write was still in progress), or whole (asyncio had taken all of
                # it into the transport's buffer before the call ended, and closing
                # a transport flushes it) -- written before its call ended, either way.
                assert payloads in ([], [b"BBBBB"])
                await stream.aclose()


async def test_send_delivers_one_way_messages_that_expect_no_reply() -> None:
    network = RealNetwork()
    seen: list[ReceivedEnvelope[object]] = []
    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(network, "127.0.0.1:0") as server,
            anyio.create_task_group() as group,
        ):

            async def serve() -> None:
                async for request in server:
                    seen.append(request)
                    if request.expects_reply:
                        with contextlib.suppress(TransportError):
                            server.send_reply(request, b"re:" + request.payload)

            group.start_soon(serve)
            async with ClientTransport(network) as client:
                for n in range(100):
                    client.send(server.address, b"note %d" % n)
                # A request after them on the same connection comes after them.
                assert await client.get_reply(server.address, b"q") == b"re:q"
                assert [r.payload for r in seen[:100]] == [b"note %d" % n for n in range(100)]
                assert not any(r.expects_reply for r in seen[:100])
                assert not client.dead_letters
            group.cancel_scope.cancel()


async def test_idle_connections_are_pinged_and_answered_by_the_server_itself() -> None:
    network = RealNetwork()
    config = PeerConfig(ping_interval=0.1, ping_timeout=0.5)
    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(network, "127.0.0.1:0") as server,
            anyio.create_task_group() as group,
        ):
            received: list[bytes] = []

            async def serve() -> None:
                async for request in server:
                    received.append(request.payload)
                    server.send_reply(request, b"ok")

            group.start_soon(serve)
            async with ClientTransport(network, peer_config=config) as client:
                assert await client.get_reply(server.address, b"hello") == b"ok"
                await anyio.sleep(1.5)
                assert server.stats.pings_answered >= 3
                assert not client.failure_monitor.is_failed(server.address)
                assert received == [b"hello"]  # pings never reach the application
            group.cancel_scope.cancel()


async def test_a_killed_server_is_seen_failed_and_peer_failed_is_raised() -> None:
    network = RealNetwork()
    with anyio.fail_after(LIMIT):
        async with ClientTransport(network) as client:
            async with (
                ServerTransport.bind(network, "127.0.0.1:0") as server,
                anyio.create_task_group() as group,
            ):
                address = server.address

                async def serve() -> None:
                    async for request in server:
                        server.send_reply(request, b"ok")

                group.start_soon(serve)
                assert await client.get_reply(address, b"x") == b"ok"
                group.cancel_scope.cancel()
            # The server is gone and stays gone.
            with pytest.raises(TransportError) as info:
                await client.get_reply_unless_failed_for(address, b"x", failed_for=0.5, timeout=10)
            assert type(info.value).__name__ == "PeerFailed"
            assert client.failure_monitor.is_failed(address)

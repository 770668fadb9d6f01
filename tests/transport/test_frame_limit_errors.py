"""A message at or above a frame limit: what the client is told, on the simulated network.

The client checks each request against its *own* ``max_frame_size`` (header
included) and raises :class:`FrameTooLarge` before anything is queued.  A server
with a lower limit cannot be checked in advance: it closes the connection on the
frame's header.  Before, all the client then reported was the reset
("connection ... was reset", on real TCP "broken: BrokenResourceError"); now the
reason names the frame's size and the limit to look at.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from moonpool.net import ChaosConfig, SimNetwork
from moonpool.transport import (
    DEFAULT_MAX_FRAME_SIZE,
    ClientTransport,
    FrameDecoder,
    FrameTooLarge,
    MaybeDelivered,
    RequestResponseEnvelope,
    ServerTransport,
    TransportError,
    TransportTimeout,
)

SERVER = "server:4500"
HEADER = RequestResponseEnvelope.serializer().header_size


def calm() -> SimNetwork:
    return SimNetwork(seed=3, chaos=ChaosConfig.none(), host="client")


@contextlib.asynccontextmanager
async def echo_server(network: SimNetwork, max_frame_size: int) -> AsyncIterator[None]:
    async with (
        ServerTransport.bind(
            network.for_host("server"), SERVER, max_frame_size=max_frame_size
        ) as server,
        trio.open_nursery() as nursery,
    ):

        async def serve() -> None:
            async for request in server:
                with contextlib.suppress(TransportError):
                    server.send_reply(request, b"ok")

        nursery.start_soon(serve)
        yield
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_payload_of_exactly_the_limit_fails_before_sending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = calm()
    async with echo_server(network, DEFAULT_MAX_FRAME_SIZE), ClientTransport(network) as client:
        with pytest.raises(FrameTooLarge) as info:
            await client.get_reply(SERVER, b"x" * DEFAULT_MAX_FRAME_SIZE)
        message = str(info.value)
        assert f"its frame is {DEFAULT_MAX_FRAME_SIZE + HEADER} bytes" in message
        assert f"({HEADER}-byte header included)" in message
        assert f"above max_frame_size={DEFAULT_MAX_FRAME_SIZE} bytes" in message
        assert f"send at most {DEFAULT_MAX_FRAME_SIZE - HEADER} bytes of payload" in message
        # Nothing was queued, so no connection was even opened.
        assert client.stats().connection_failures == 0
        fits = b"x" * (DEFAULT_MAX_FRAME_SIZE - HEADER)
        assert await client.get_reply(SERVER, fits) == b"ok"


@pytest.mark.trio
async def test_a_client_limit_above_the_servers_names_the_frame_and_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = calm()
    payload = b"x" * DEFAULT_MAX_FRAME_SIZE  # fits the client's 4 MiB, not the server's
    async with (
        echo_server(network, DEFAULT_MAX_FRAME_SIZE),
        ClientTransport(network, max_frame_size=4 * DEFAULT_MAX_FRAME_SIZE) as client,
    ):
        with pytest.raises(MaybeDelivered) as lost:
            await client.try_get_reply(SERVER, payload)
        message = str(lost.value)
        # The server closes the connection on the oversize frame: the client sees it
        # either as a reset (its writes of the frame break) or as the remote's close
        # (its reader gets the FIN first) -- a race real TCP has too (trio's
        # scheduler, unseeded outside a simulation, picks one).  Either way the
        # message must name the frame and the limit:
        assert "was reset" in message or "closed by the remote" in message
        assert f"right after an unanswered {DEFAULT_MAX_FRAME_SIZE + HEADER}-byte frame" in message
        assert f"above the default max_frame_size of {DEFAULT_MAX_FRAME_SIZE} bytes" in message
        assert "give the client and the server the same max_frame_size" in message
        with pytest.raises(TransportTimeout, match=r"last failure: .*the same max_frame_size"):
            await client.get_reply(SERVER, payload, timeout=1)
        # The connection that replaced it is not blamed on the frame.
        assert await client.get_reply(SERVER, b"small") == b"ok"
        assert not client.failure_monitor.is_failed(SERVER)


@pytest.mark.trio
async def test_below_the_default_limit_the_hint_names_the_frame_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = calm()
    async with echo_server(network, 100_000), ClientTransport(network) as client:
        with pytest.raises(MaybeDelivered) as lost:
            await client.try_get_reply(SERVER, b"x" * 100_000)
        frame = 100_000 + HEADER
        assert (
            f"right after an unanswered {frame}-byte frame, header included: a server whose "
            f"max_frame_size is below {frame} closes the connection on it"
        ) in str(lost.value)


@pytest.mark.trio
async def test_a_small_request_on_a_reset_connection_gets_no_frame_hint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The hint is for large frames only: a small one is not why a connection breaks.
    network = calm()
    async with echo_server(network, 16), ClientTransport(network) as client:
        with pytest.raises(MaybeDelivered) as lost:
            await client.try_get_reply(SERVER, b"x" * 100)
        assert "max_frame_size" not in str(lost.value)


@pytest.mark.trio
async def test_a_large_frame_the_server_answered_is_not_blamed_for_a_later_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = calm()
    server_view = network.for_host("server")
    limit = 4 * DEFAULT_MAX_FRAME_SIZE
    async with (
        await server_view.listen(SERVER) as listener,
        trio.open_nursery() as nursery,
        ClientTransport(network, max_frame_size=limit) as client,
    ):

        async def answer_once() -> None:
            stream = await listener.accept()
            decoder = FrameDecoder(RequestResponseEnvelope.serializer(), limit)
            while not (requests := decoder.feed(await stream.receive())):
                pass
            reply = requests[0].create_reply(b"ok")
            await stream.send(RequestResponseEnvelope.serializer().serialize(reply))
            await trio.sleep_forever()

        nursery.start_soon(answer_once)
        payload = b"x" * (2 * DEFAULT_MAX_FRAME_SIZE)
        assert await client.get_reply(SERVER, payload) == b"ok"
        server_view.end_life(crash=True)  # resets the connection
        with trio.fail_after(5):
            await client.failure_monitor.on_state_change(SERVER)
        assert client.failure_monitor.is_failed(SERVER)
        reason = client.failure_monitor.reason(SERVER)
        assert "reset" in reason and "max_frame_size" not in reason
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_reply_above_the_clients_limit_names_the_clients_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = calm()
    async with (
        ServerTransport.bind(
            network.for_host("server"), SERVER, max_frame_size=4 * DEFAULT_MAX_FRAME_SIZE
        ) as server,
        trio.open_nursery() as nursery,
        ClientTransport(network) as client,
    ):

        async def big_replies() -> None:
            async for request in server:
                server.send_reply(request, b"x" * DEFAULT_MAX_FRAME_SIZE)

        nursery.start_soon(big_replies)
        with pytest.raises(MaybeDelivered) as lost:
            await client.try_get_reply(SERVER, b"small")
        assert (
            f"declares {DEFAULT_MAX_FRAME_SIZE + HEADER} bytes, above the maximum frame size of "
            f"{DEFAULT_MAX_FRAME_SIZE} bytes (this side's max_frame_size, header included)"
        ) in str(lost.value)
        nursery.cancel_scope.cancel()

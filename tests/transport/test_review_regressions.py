"""Regression tests for bugs found in review; each failed before its fix."""

from __future__ import annotations

import contextlib

import anyio
import pytest
import trio

from moonpool.net import ChaosConfig, SimNetwork
from moonpool.transport import (
    ClientTransport,
    RequestResponseEnvelope,
    ServerTransport,
    TransportClosed,
    TransportError,
    TransportTimeout,
)
from moonpool.transport._framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder

SERVER = "server:4500"
RR = RequestResponseEnvelope.serializer()


def calm(seed: int = 1) -> SimNetwork:
    return SimNetwork(seed=seed, chaos=ChaosConfig.none(), host="client")


def request_frame(correlation_id: int, payload: bytes) -> bytes:
    return RR.serialize(RequestResponseEnvelope.create_request(correlation_id, payload))


def decode_all(data: bytes) -> list[tuple[int, bytes]]:
    decoder = FrameDecoder(RR, DEFAULT_MAX_FRAME_SIZE)
    return [(e.correlation_id, e.extract_payload()) for e in decoder.feed(data)]


async def read_to_end(stream: anyio.abc.ByteStream) -> bytes:
    received = b""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            received += await stream.receive()
    return received


@pytest.mark.trio
async def test_replying_twice_does_not_skip_another_requests_reply_on_half_close(
    autojump_clock: object,
) -> None:
    """A duplicate reply used to count as answering a second request.

    ``outstanding`` went to zero while request 2 was unanswered, so the half-close
    drain closed the connection and request 2's reply never left.
    """
    network = calm()
    async with ServerTransport.bind(network.for_host("server"), SERVER) as server:
        async with trio.open_nursery() as nursery:

            async def app() -> None:
                first, second = await server.receive(), await server.receive()
                server.send_reply(first, b"one")
                with contextlib.suppress(TransportError):
                    server.send_reply(first, b"one again")
                await trio.sleep(1)
                with contextlib.suppress(TransportError):  # the bug: "connection closed"
                    server.send_reply(second, b"two")

            nursery.start_soon(app)
            raw = await network.connect(SERVER)
            await raw.send(request_frame(1, b"a") + request_frame(2, b"b"))
            await raw.send_eof()  # half-close: "answer what I sent, then close"
            with trio.fail_after(10):
                received = await read_to_end(raw)
            replies = decode_all(received)
            assert (2, b"two") in replies, replies
            await server.aclose()


@pytest.mark.trio
async def test_iterating_a_server_that_was_never_entered_raises() -> None:
    server = ServerTransport.bind(SimNetwork(seed=1), "server:1")
    with pytest.raises(TransportClosed, match="not open"):
        await server.receive()
    with pytest.raises(TransportClosed, match="not open"):
        async for _ in server:
            pass


@pytest.mark.trio
async def test_seeded_client_rng_makes_correlation_ids_replayable(autojump_clock: object) -> None:
    import random

    ids = []
    for _ in range(2):
        network = SimNetwork(seed=4, chaos=ChaosConfig.none(), host="client")
        async with ServerTransport.bind(network.for_host("server"), "server:1") as server:
            async with ClientTransport(network, rng=random.Random(99)) as client:
                with pytest.raises(TransportTimeout):
                    await client.get_reply("server:1", b"x", timeout=0.1)
            request = server.poll_receive()
            assert request is not None
            ids.append(request.envelope.correlation_id)
    assert ids[0] == ids[1]

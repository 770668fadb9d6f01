"""A CheckedEnvelope server hands only requests (and one-way messages) to the
application, and owes a reply only for requests.

Before: REPLY and ERROR envelopes reached ``async for request in server`` as
requests, and a ONE_WAY message was counted as owed a reply, so a half-closed
connection that had sent one waited out the whole drain timeout.
"""

from __future__ import annotations

import anyio
import pytest
import trio

from moonpool.net import SimNetwork
from moonpool.transport import (
    CheckedEnvelope,
    EnvelopeKind,
    KindedEnvelope,
    RequestResponseEnvelope,
    ServerTransport,
)

SERIALIZER = CheckedEnvelope.serializer()
SERVER = "server:4500"


def frame(kind: EnvelopeKind, correlation_id: int, payload: bytes) -> bytes:
    return SERIALIZER.serialize(
        CheckedEnvelope(kind=kind, correlation_id=correlation_id, payload=payload)
    )


@pytest.mark.trio
async def test_only_requests_and_one_way_messages_reach_the_application(
    autojump_clock: object,
) -> None:
    network = SimNetwork(seed=3)  # no chaos: this is about what the server does
    seen: list[tuple[bytes, bool]] = []
    async with ServerTransport.bind(network, SERVER, envelope=CheckedEnvelope) as server:
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                async for request in server:
                    seen.append((request.payload, request.expects_reply))
                    if request.expects_reply:
                        server.send_reply(request, b"re:" + request.payload)
                    else:
                        with pytest.raises(ValueError, match="one-way message"):
                            server.send_reply(request, b"nobody asked")

            nursery.start_soon(serve)
            stream = await network.for_host("client").connect(SERVER)
            await stream.send(
                frame(EnvelopeKind.REPLY, 7, b"a stray reply")
                + frame(EnvelopeKind.ERROR, 8, b"a stray error")
                + frame(EnvelopeKind.ONE_WAY, 0, b"fire and forget")
                + frame(EnvelopeKind.REQUEST, 9, b"a real request")
            )
            await stream.send_eof()  # half-close: the server owes exactly one reply
            started = trio.current_time()
            replies = b""
            with trio.fail_after(1):  # well under the 5 s drain timeout
                try:
                    while True:
                        replies += await stream.receive()
                except anyio.EndOfStream:
                    pass
            assert trio.current_time() - started < 1
            reply = SERIALIZER.deserialize(replies)
            assert (reply.kind, reply.correlation_id, reply.payload) == (
                EnvelopeKind.REPLY,
                9,
                b"re:a real request",
            )
            nursery.cancel_scope.cancel()
    assert seen == [(b"fire and forget", False), (b"a real request", True)]
    assert server.protocol_stats.unexpected_envelopes == 2


def test_envelope_kinds_capability() -> None:
    assert issubclass(CheckedEnvelope, KindedEnvelope)
    assert not issubclass(RequestResponseEnvelope, KindedEnvelope)  # every frame is a request
    one_way = CheckedEnvelope.create_one_way(b"x")
    assert one_way.is_request() and not one_way.expects_reply()
    request = CheckedEnvelope.create_request(1, b"x")
    assert request.is_request() and request.expects_reply()
    assert not request.create_reply(b"y").is_request()
    assert not request.create_error("no").is_request()

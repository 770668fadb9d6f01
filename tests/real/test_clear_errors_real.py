"""Errors new users hit, on real loopback TCP (trio and asyncio).

Before: a client whose ``max_frame_size`` was above the server's saw only
"connection to 127.0.0.1:N broken: BrokenResourceError" (and ``get_reply``
timed out on it); an address with a space went to the resolver as a host name;
``"http://127.0.0.1:80"`` was called a bare IPv6 host.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from moonpool.net import InvalidAddress, RealNetwork
from moonpool.transport import (
    DEFAULT_MAX_FRAME_SIZE,
    ClientTransport,
    FrameTooLarge,
    MaybeDelivered,
    RequestResponseEnvelope,
    ServerTransport,
    TransportError,
    TransportTimeout,
)

pytestmark = [pytest.mark.anyio, pytest.mark.real_network]

LIMIT = 10.0
HEADER = RequestResponseEnvelope.serializer().header_size


@contextlib.asynccontextmanager
async def ok_server(max_frame_size: int) -> AsyncIterator[str]:
    """A server on a free loopback port answering every request with b"ok"."""
    with anyio.fail_after(LIMIT):
        async with (
            ServerTransport.bind(
                RealNetwork(), "127.0.0.1:0", max_frame_size=max_frame_size
            ) as server,
            anyio.create_task_group() as group,
        ):

            async def serve() -> None:
                async for request in server:
                    with contextlib.suppress(TransportError):
                        server.send_reply(request, b"ok")

            group.start_soon(serve)
            yield server.address
            group.cancel_scope.cancel()


async def test_a_payload_of_exactly_the_limit_fails_before_sending() -> None:
    async with ok_server(DEFAULT_MAX_FRAME_SIZE) as address:
        async with ClientTransport(RealNetwork()) as client:
            with pytest.raises(FrameTooLarge) as info:
                await client.get_reply(address, b"x" * DEFAULT_MAX_FRAME_SIZE)
            message = str(info.value)
            assert f"({HEADER}-byte header included), above max_frame_size=" in message
            assert f"send at most {DEFAULT_MAX_FRAME_SIZE - HEADER} bytes of payload" in message
            assert client.stats().connection_failures == 0


async def test_a_client_limit_above_the_servers_names_the_frame_and_the_limit() -> None:
    frame = DEFAULT_MAX_FRAME_SIZE + HEADER
    async with ok_server(DEFAULT_MAX_FRAME_SIZE) as address:
        async with ClientTransport(
            RealNetwork(), max_frame_size=4 * DEFAULT_MAX_FRAME_SIZE
        ) as client:
            with pytest.raises(MaybeDelivered) as lost:
                await client.try_get_reply(address, b"x" * DEFAULT_MAX_FRAME_SIZE)
            message = str(lost.value)
            assert "BrokenResourceError" not in message  # the cause's text instead
            assert f"right after an unanswered {frame}-byte frame, header included" in message
            assert f"above the default max_frame_size of {DEFAULT_MAX_FRAME_SIZE}" in message
            with pytest.raises(TransportTimeout, match=r"last failure: .*same max_frame_size"):
                await client.get_reply(address, b"x" * DEFAULT_MAX_FRAME_SIZE, timeout=1)
            assert await client.get_reply(address, b"small") == b"ok"


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("http://127.0.0.1:80", "not URLs: drop 'http://'"),
        (" 127.0.0.1:80", "contains whitespace"),
        ("local host:80", "contains whitespace"),
        ("localhost :80", "contains whitespace"),
    ],
)
async def test_a_malformed_address_fails_before_any_lookup(address: str, message: str) -> None:
    network = RealNetwork()
    with pytest.raises(InvalidAddress, match=message):
        await network.connect(address)
    with pytest.raises(InvalidAddress, match=message):
        await network.listen(address)
    async with ClientTransport(network) as client:
        with pytest.raises(InvalidAddress, match=message):
            await client.get_reply(address, b"x")

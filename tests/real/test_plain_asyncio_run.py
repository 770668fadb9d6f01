"""The transport under a plain ``asyncio.run``, not anyio's runner.

Every other real-network test runs under anyio's pytest plugin, whose runner
tells anyio which library is running even outside a task.  A user's
``asyncio.run`` does not: there, code in the event loop's read callbacks (where
moonpool's asyncio streams hand bytes to the transport) cannot call anyio at all.
A reply split across two reads did, and ended the whole client transport with
``NoEventLoopError``.
"""

from __future__ import annotations

import asyncio

import pytest

from moonpool.net import RealNetwork
from moonpool.transport import ClientTransport, ReceivedEnvelope, ServerTransport

pytestmark = pytest.mark.real_network

LIMIT = 20.0

#: Sizes whose frames take several reads on loopback (and one that does not).
SIZES = (16, 70_000, 300_000, 1_000_000)


async def _echo(request: ReceivedEnvelope[object]) -> bytes:
    return request.payload


async def _answer_in_a_loop(server: ServerTransport) -> None:
    async for request in server:
        await request.reply(request.payload)


@pytest.mark.parametrize("style", ["serve", "async for"])
def test_large_and_pipelined_requests_under_plain_asyncio_run(style: str) -> None:
    async def main() -> list[int]:
        network = RealNetwork()
        async with asyncio.timeout(LIMIT):
            async with ServerTransport.bind(network, "127.0.0.1:0") as server:
                answering = asyncio.create_task(
                    server.serve(_echo) if style == "serve" else _answer_in_a_loop(server)
                )
                async with ClientTransport(network, timeout=LIMIT / 2) as client:
                    sizes = [len(await client.get_reply(server.address, b"x" * n)) for n in SIZES]
                    # Many in flight at once: requests and replies share reads.
                    replies = await asyncio.gather(
                        *(client.get_reply(server.address, b"%d" % i * 2000) for i in range(50))
                    )
                    sizes += [len(reply) for reply in replies]
                answering.cancel()
                await asyncio.gather(answering, return_exceptions=True)
        return sizes

    sizes = asyncio.run(main())
    assert sizes == [*SIZES, *(len(b"%d" % i * 2000) for i in range(50))]

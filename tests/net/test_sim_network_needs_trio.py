"""``SimNetwork`` awaited under asyncio says it needs trio.

Before: its first trio primitive failed with asyncio's "Task got bad yield:
<class 'trio._core._traps.CancelShieldedCheckpoint'>", which names neither
the network nor the fix.
"""

from __future__ import annotations

import asyncio

import pytest
import trio
import trio.testing

from moonpool.net import SimNetwork
from moonpool.transport import ServerTransport

MESSAGE = (
    "was called under asyncio: SimNetwork runs on trio (inside a simulation or trio.run); "
    "under asyncio use RealNetwork"
)


def test_connect_under_asyncio_says_it_needs_trio() -> None:
    with pytest.raises(RuntimeError) as info:
        asyncio.run(SimNetwork().connect("server:4500"))
    assert str(info.value) == f"SimNetwork.connect('server:4500') {MESSAGE}"


def test_listen_under_asyncio_says_it_needs_trio() -> None:
    with pytest.raises(RuntimeError, match=r"SimNetwork\.listen\('server:4500'\) was called"):
        asyncio.run(SimNetwork().listen("server:4500"))


def test_a_server_bound_under_asyncio_says_it_needs_trio() -> None:
    async def bind() -> None:
        async with ServerTransport.bind(SimNetwork(), "server:4500"):
            pass

    with pytest.raises(RuntimeError, match="under asyncio use RealNetwork"):
        asyncio.run(bind())


def test_the_same_calls_work_under_trio() -> None:
    async def main() -> None:
        network = SimNetwork(host="client")
        async with await network.for_host("server").listen("server:4500") as listener:
            async with await network.connect(listener.address), await listener.accept():
                pass

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

"""Leaving ``async with ServerTransport.bind(...)`` at once, on loopback TCP (trio, asyncio).

The accept loop, started as the block is entered, is cancelled before its first
step but still starts running while ``__aexit__`` tears the server down.  It used
to read the state ``__aexit__`` clears and fail an assertion: leaving the block
raised an ``AssertionError`` inside exception groups, and a ``BindFailed`` raised
in the block came out wrapped alongside it.  The simulated-network counterpart is
tests/transport/test_server_early_exit.py.
"""

from __future__ import annotations

import anyio
import pytest

from moonpool.net import RealNetwork
from moonpool.transport import BindFailed, ServerTransport

pytestmark = [pytest.mark.anyio, pytest.mark.real_network]

#: Bound for a whole test body; each test is far faster than this.
LIMIT = 10.0


class Boom(Exception):
    """The user's own error, raised straight out of the block."""


async def test_immediate_exit_is_clean() -> None:
    with anyio.fail_after(LIMIT):
        async with ServerTransport.bind(RealNetwork(), "127.0.0.1:0") as server:
            address = server.address
        assert server.connection_count == 0
        # The listener was closed: its port can be bound again.
        async with ServerTransport.bind(RealNetwork(), address) as again:
            assert again.address == address


async def test_exit_by_exception_raises_it_unwrapped() -> None:
    boom = Boom("from the block")
    with anyio.fail_after(LIMIT), pytest.raises(Boom) as info:
        async with ServerTransport.bind(RealNetwork(), "127.0.0.1:0"):
            raise boom
    assert info.value is boom


async def test_bind_failed_in_the_block_is_not_hidden() -> None:
    """A second server on the first one's port fails to bind, inside the first's block.

    The ``BindFailed`` ends the first block before its accept loop has run; it must
    come out as itself, not in an exception group next to an ``AssertionError``.
    """
    network = RealNetwork()
    taken: list[str] = []

    async def bind_twice() -> None:
        async with ServerTransport.bind(network, "127.0.0.1:0") as first:
            taken.append(first.address)
            async with ServerTransport.bind(network, first.address):
                pytest.fail("the second bind should have failed")

    with anyio.fail_after(LIMIT), pytest.raises(BindFailed) as info:
        await bind_twice()
    assert taken
    assert taken[0] in str(info.value)

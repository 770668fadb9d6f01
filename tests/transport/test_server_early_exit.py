"""Leaving ``async with ServerTransport.bind(...)`` before its accept loop has run.

The accept loop is started with ``start_soon`` as the block is entered; when the
block ends at once, that task is cancelled before its first step but still starts
running, after ``__aexit__`` has begun tearing the server down.  It used to read
the state ``__aexit__`` clears and fail an assertion, so leaving the block raised
an ``AssertionError`` inside exception groups.  Here on the simulated network;
tests/real/test_server_early_exit_real.py does the same on loopback TCP.
"""

from __future__ import annotations

import pytest

from moonpool.net import SimNetwork
from moonpool.transport import ServerTransport

SERVER = "server:4500"


class Boom(Exception):
    """The user's own error, raised straight out of the block."""


@pytest.mark.trio
async def test_immediate_exit_is_clean(autojump_clock: object, sim_network: SimNetwork) -> None:
    network = sim_network.for_host("server")
    async with ServerTransport.bind(network, SERVER) as server:
        pass
    assert server.connection_count == 0
    # The listener was closed: the address can be bound again.
    async with ServerTransport.bind(network, SERVER):
        pass


@pytest.mark.trio
async def test_exit_by_exception_raises_it_unwrapped(
    autojump_clock: object, sim_network: SimNetwork
) -> None:
    boom = Boom("from the block")
    with pytest.raises(Boom) as info:
        async with ServerTransport.bind(sim_network.for_host("server"), SERVER):
            raise boom
    assert info.value is boom


@pytest.mark.trio
async def test_an_error_leaving_the_block_keeps_its_cause(
    autojump_clock: object, sim_network: SimNetwork
) -> None:
    root = OSError("the cause")
    with pytest.raises(Boom) as info:
        async with ServerTransport.bind(sim_network.for_host("server"), SERVER):
            raise Boom("from the block") from root
    assert info.value.__cause__ is root

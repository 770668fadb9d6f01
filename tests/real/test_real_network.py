"""``RealNetwork`` over loopback TCP, on trio and asyncio.

Only 127.0.0.1, ::1 and localhost are ever bound or connected to; addresses that
must be refused are refused before any socket exists.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream, SocketAttribute

from moonpool.net import (
    AddressInUse,
    InvalidAddress,
    Listener,
    NetworkProvider,
    RealNetwork,
    parse_address,
)
from tests.net.stream_conformance import CHECKS, PairFactory, check_byte_stream_pair

pytestmark = [pytest.mark.anyio, pytest.mark.real_network]


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()
requires_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this machine has no IPv6 loopback (::1)")

LOOPBACKS = [
    pytest.param("127.0.0.1:0", id="ipv4"),
    pytest.param("[::1]:0", id="ipv6", marks=requires_ipv6),
    pytest.param("localhost:0", id="localhost"),
]


def pair_factory(network: RealNetwork, listen_at: str) -> PairFactory:
    """A connected (client, server) pair per call, through a throwaway listener."""

    async def make_pair() -> tuple[ByteStream, ByteStream]:
        async with await network.listen(listen_at) as listener:
            client = await network.connect(listener.address)
            try:
                server = await listener.accept()
            except BaseException:
                await anyio.aclose_forcefully(client)
                raise
        return client, server

    return make_pair


async def free_port_address() -> str:
    """An address nobody listens on: bind a port, then give it back."""
    async with await RealNetwork().listen("127.0.0.1:0") as listener:
        return listener.address


def nodelay(stream: ByteStream) -> int:
    raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
    return raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


# -- stream conformance -----------------------------------------------------


@pytest.mark.parametrize("listen_at", LOOPBACKS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_stream_conformance(listen_at: str, check: Callable[..., Any]) -> None:
    await check(pair_factory(RealNetwork(), listen_at))


async def test_check_byte_stream_pair_runs_every_check() -> None:
    await check_byte_stream_pair(pair_factory(RealNetwork(), "127.0.0.1:0"))


# -- connect ----------------------------------------------------------------


def test_real_network_is_a_network_provider() -> None:
    assert isinstance(RealNetwork(), NetworkProvider)


@pytest.mark.parametrize("listen_at", LOOPBACKS)
async def test_tcp_nodelay_on_both_ends(listen_at: str) -> None:
    client, server = await pair_factory(RealNetwork(), listen_at)()
    async with client, server:
        assert nodelay(client)
        assert nodelay(server)


async def test_connect_refused_names_the_address() -> None:
    address = await free_port_address()
    with pytest.raises(ConnectionRefusedError) as info:
        await RealNetwork().connect(address)
    assert address in str(info.value)
    assert info.value.errno == errno.ECONNREFUSED
    assert not isinstance(info.value, BaseExceptionGroup)


async def test_connect_refused_on_every_address_of_a_host_name() -> None:
    # localhost may resolve to several addresses (anyio tries each): still one
    # ConnectionRefusedError, never an ExceptionGroup.
    port = parse_address(await free_port_address()).port
    address = f"localhost:{port}"
    with pytest.raises(ConnectionRefusedError, match=address):
        await RealNetwork().connect(address)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="relies on Linux dropping SYNs when a listener's accept queue is full",
)
async def test_connect_timeout_when_the_peer_never_answers() -> None:
    # A listener with a full accept queue that never accepts makes Linux drop
    # further SYNs, so a connect hangs exactly like one to a silent host --
    # without leaving loopback.
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        address = f"127.0.0.1:{port}"
        with anyio.fail_after(10):  # the test's own bound, far above connect_timeout
            with pytest.raises(TimeoutError) as info:
                await RealNetwork(connect_timeout=0.3).connect(address)
        assert address in str(info.value)
        assert "0.3s" in str(info.value)
    finally:
        for filler in fillers:
            filler.close()
        silent.close()


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_connect_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        RealNetwork(connect_timeout=timeout)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.0.1:", ":80", "127.0.0.1:http", "::1:80", "127.0.0.1:70000"]
)
async def test_connect_bad_address_raises_invalid_address(address: str) -> None:
    with pytest.raises(InvalidAddress):
        await RealNetwork().connect(address)


async def test_connect_to_port_zero_is_invalid() -> None:
    with pytest.raises(InvalidAddress, match="port 0"):
        await RealNetwork().connect("127.0.0.1:0")


# -- listen -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen_at", "host_part"),
    [
        pytest.param("127.0.0.1:0", "127.0.0.1", id="ipv4"),
        pytest.param("[::1]:0", "[::1]", id="ipv6", marks=requires_ipv6),
        pytest.param("localhost:0", "localhost", id="localhost"),
    ],
)
async def test_listener_reports_the_real_port(listen_at: str, host_part: str) -> None:
    network = RealNetwork()
    async with await network.listen(listen_at) as listener:
        assert isinstance(listener, Listener)
        port = parse_address(listener.address).port
        assert port != 0
        assert listener.address == f"{host_part}:{port}"
        async with await network.connect(listener.address), await listener.accept():
            pass


async def test_listen_on_a_taken_address_raises_address_in_use() -> None:
    network = RealNetwork()
    async with await network.listen("127.0.0.1:0") as first:
        with pytest.raises(AddressInUse) as info:
            await network.listen(first.address)
    assert first.address in str(info.value)
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.EADDRINUSE


async def test_a_closed_listener_frees_its_port() -> None:
    network = RealNetwork()
    async with await network.listen("127.0.0.1:0") as first:
        address = first.address
    async with await network.listen(address) as second:
        assert second.address == address


@pytest.mark.parametrize(
    "address", ["0.0.0.0:0", "[::]:0", "192.0.2.1:0", "[2001:db8::1]:0", "10.0.0.1:4500"]
)
async def test_listen_refuses_non_loopback_by_default(address: str) -> None:
    with pytest.raises(ValueError, match="allow_non_loopback") as info:
        await RealNetwork().listen(address)
    assert address in str(info.value)
    assert not isinstance(info.value, InvalidAddress)


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "[::1]", "[::1]:x", "a:b:1"])
async def test_listen_bad_address_raises_invalid_address(address: str) -> None:
    with pytest.raises(InvalidAddress):
        await RealNetwork().listen(address)


async def test_allow_non_loopback_still_serves_loopback() -> None:
    # Tests never bind a non-loopback address; this only shows the flag does
    # not break the ordinary case.
    network = RealNetwork(allow_non_loopback=True)
    async with (
        await network.listen("127.0.0.1:0") as listener,
        await network.connect(listener.address),
        await listener.accept(),
    ):
        pass


@requires_ipv6
async def test_a_host_name_with_two_addresses_listens_on_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Make "localhost" resolve to both loopbacks, as it does on many machines,
    # so that the one-socket-per-family accept path runs.
    async def both_loopbacks(host: str, port: int, **kwargs: Any) -> list[Any]:
        assert host == "localhost"
        stream, tcp = socket.SOCK_STREAM, socket.IPPROTO_TCP
        return [
            (socket.AF_INET6, stream, tcp, "", ("::1", port, 0, 0)),
            (socket.AF_INET, stream, tcp, "", ("127.0.0.1", port)),
            (socket.AF_INET, stream, tcp, "", ("127.0.0.1", port)),  # resolvers repeat
        ]

    monkeypatch.setattr(anyio, "getaddrinfo", both_loopbacks)
    network = RealNetwork()
    async with await network.listen("localhost:0") as listener:
        port = parse_address(listener.address).port
        for address in (f"[::1]:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            async with (
                await network.connect(address) as client,
                await listener.accept() as server,
            ):
                await client.send(b"hello")
                assert await server.receive() == b"hello"
                assert nodelay(server)


# -- accept -----------------------------------------------------------------


async def test_accept_after_close_raises_closed_resource_error() -> None:
    listener = await RealNetwork().listen("127.0.0.1:0")
    await listener.aclose()
    await listener.aclose()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        await listener.accept()


async def test_closing_the_listener_wakes_a_pending_accept() -> None:
    listener = await RealNetwork().listen("127.0.0.1:0")
    outcome: list[BaseException] = []

    async def accept() -> None:
        try:
            await listener.accept()
        except anyio.ClosedResourceError as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(accept)
            await anyio.wait_all_tasks_blocked()
            await listener.aclose()
    assert len(outcome) == 1


async def test_second_concurrent_accept_is_busy() -> None:
    network = RealNetwork()
    async with await network.listen("127.0.0.1:0") as listener:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.accept)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.BusyResourceError):
                    await listener.accept()
                tg.cancel_scope.cancel()


async def test_cancelled_accept_loses_no_connection() -> None:
    network = RealNetwork()
    async with await network.listen("127.0.0.1:0") as listener:
        with anyio.fail_after(10):
            with anyio.move_on_after(0.05):
                await listener.accept()
            async with (
                await network.connect(listener.address) as client,
                await listener.accept() as server,
            ):
                await server.send(b"still here")
                assert await client.receive() == b"still here"


async def test_accepted_streams_outlive_the_listener() -> None:
    network = RealNetwork()
    async with await network.listen("127.0.0.1:0") as listener:
        client = await network.connect(listener.address)
        server = await listener.accept()
    async with client, server:
        await client.send(b"ping")
        assert await server.receive() == b"ping"

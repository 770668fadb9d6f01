"""``nonblocking_sender`` and ``SimStream.send_nowait``: writing without waiting.

The real-network half runs on both anyio backends, over loopback TCP only.  On
trio it guards the anyio internals the fast path relies on (the backend's stream
module and its raw socket); on asyncio it checks ``RealNetwork``'s own stream,
whose ``send_nowait`` is the fast path there.  Either way it fails if the fast
path goes away (``nonblocking_sender`` returning ``None``) or becomes unsafe
(bytes out of order, more or less arriving than the sender said it wrote,
exceptions from a closed or reset stream).

The simulated half checks ``SimStream.send_nowait`` against the same contract:
a prefix or nothing, never more than the receive buffer has room for, nothing
at all once the stream is closed, half-closed or busy sending -- and a message
written piecewise through it, under partial I/O, arrives intact.
"""

from __future__ import annotations

import math
import random
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import pytest
import trio
import trio.testing
from anyio.abc import SocketAttribute
from anyio.streams.stapled import StapledByteStream

from moonpool.net import ChaosConfig, RealNetwork, SimNetwork, SimStream
from moonpool.net._nowait import NonBlockingSender, nonblocking_sender
from tests.real.test_real_network import pair_factory

# Generous: every real-network test finishes in milliseconds on loopback.
TIMEOUT = 10.0


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Each real-network test once per anyio backend (as in ``tests/real``)."""
    backend: str = request.param
    return backend


async def real_pair() -> tuple[anyio.abc.ByteStream, anyio.abc.ByteStream]:
    """(client side from ``connect``, server side from ``accept``) over 127.0.0.1."""
    return await pair_factory(RealNetwork(), "127.0.0.1:0")()


def sender_of(stream: anyio.abc.ByteStream) -> NonBlockingSender:
    sender = nonblocking_sender(stream)
    assert sender is not None, f"no non-blocking sender for {stream!r}"
    return sender


async def receive_exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        buf += await stream.receive(size - len(buf))
    return bytes(buf)


# -- real TCP, both backends ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.real_network
async def test_real_streams_have_a_sender_on_both_sides(anyio_backend: str) -> None:
    client, server = await real_pair()
    async with client, server:
        for stream in (client, server):
            if anyio_backend == "trio":
                # The socket path exists only for the streams anyio's trio backend
                # makes; if anyio moves or renames them, the transport silently
                # loses it.
                assert type(stream).__module__ == "anyio._backends._trio"
                assert getattr(stream, "send_nowait", None) is None
            else:
                # On asyncio, RealNetwork's own stream brings its send_nowait.
                assert nonblocking_sender(stream) == getattr(stream, "send_nowait", None)
        for writer, reader in ((client, server), (server, client)):
            sender = sender_of(writer)
            assert sender(b"hello") == 5
            assert await receive_exactly(reader, 5) == b"hello"


@pytest.mark.anyio
@pytest.mark.real_network
async def test_anyio_tcp_streams_have_a_sender_on_trio_only(anyio_backend: str) -> None:
    # anyio's asyncio stream keeps a write buffer of its own, which a direct
    # write would overtake; its trio stream is the bare socket.
    async with await RealNetwork().listen("127.0.0.1:0") as listener:
        port = int(listener.address.rpartition(":")[2])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            assert type(stream).__module__ == f"anyio._backends._{anyio_backend}"
            sender = nonblocking_sender(stream)
            async with await listener.accept() as server:
                if anyio_backend == "asyncio":
                    assert sender is None
                else:
                    assert sender is not None
                    assert sender(b"raw") == 3
                    assert await receive_exactly(server, 3) == b"raw"


async def _interleave(
    writer: anyio.abc.ByteStream, reader: anyio.abc.ByteStream, seed: int
) -> tuple[int, int]:
    """Alternate the sender and ``send``; (bytes the sender wrote, its short writes)."""
    sender = sender_of(writer)
    rng = random.Random(seed)
    messages = [rng.randbytes(200_000 if i % 61 == 60 else rng.randint(1, 300)) for i in range(400)]
    expected = b"".join(messages)
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(expected):
            received.extend(await reader.receive())

    by_sender = short = 0
    async with anyio.create_task_group() as group:
        group.start_soon(read_all)
        for i, message in enumerate(messages):
            if i % 2:
                await writer.send(message)
                continue
            written = sender(message)
            assert 0 <= written <= len(message)
            by_sender += written
            if written < len(message):
                short += 1
                await writer.send(message[written:])
    assert len(received) == len(expected)
    assert bytes(received) == expected, "bytes reordered, lost or duplicated"
    return by_sender, short


@pytest.mark.anyio
@pytest.mark.real_network
async def test_sender_and_send_interleave_in_order(anyio_backend: str) -> None:
    client, server = await real_pair()
    async with client, server:
        with anyio.fail_after(TIMEOUT):
            for seed, (writer, reader) in enumerate(((client, server), (server, client))):
                by_sender, _short = await _interleave(writer, reader, seed)
                # Most of the small messages went out through the sender itself.
                assert by_sender > 10_000


@pytest.mark.anyio
@pytest.mark.real_network
async def test_sender_returns_exactly_what_arrives_and_zero_when_full(anyio_backend: str) -> None:
    client, server = await real_pair()
    async with client, server:
        sender = sender_of(client)
        chunk = random.Random(1).randbytes(1 << 20)
        written: list[int] = []
        # Nobody reads: the kernel buffer (trio) or the transport's flow-control
        # mark (asyncio) fills up, and from then on the sender takes nothing.
        for _ in range(64):
            count = sender(chunk)
            assert 0 <= count <= len(chunk)
            written.append(count)
            if count == 0:
                break
        assert written[-1] == 0, f"64 MiB taken without a reader: {written}"
        assert sum(written) > 0
        expected = b"".join(chunk[:count] for count in written)
        with anyio.fail_after(TIMEOUT):
            assert await receive_exactly(server, len(expected)) == expected
            # And nothing beyond what the sender said it wrote.
            assert sender(b"end") == 3
            assert await receive_exactly(server, 3) == b"end"


@pytest.mark.anyio
@pytest.mark.real_network
@pytest.mark.parametrize("side", ["client", "server"])
async def test_sender_after_aclose_returns_zero(anyio_backend: str, side: str) -> None:
    client, server = await real_pair()
    async with client, server:
        stream = client if side == "client" else server
        sender = sender_of(stream)
        await stream.aclose()
        for _ in range(3):
            assert sender(b"too late") == 0
        assert sender(b"") == 0


def _reset_on_close(stream: anyio.abc.ByteStream) -> None:
    """Make ``aclose`` send a TCP reset instead of a FIN (SO_LINGER of 0)."""
    raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.anyio
@pytest.mark.real_network
@pytest.mark.parametrize("how", ["reset", "close"])
async def test_sender_after_the_remote_went_away_never_raises(anyio_backend: str, how: str) -> None:
    client, server = await real_pair()
    async with client, server:
        sender = sender_of(client)
        assert sender(b"before") == 6
        if how == "reset":
            _reset_on_close(server)
        await server.aclose()
        results: list[int] = []
        with anyio.fail_after(TIMEOUT):
            # Keep writing until the error has surfaced (a FIN alone lets the first
            # writes through; the peer answers them with a reset).
            while not results or results[-1] != 0 or len(results) < 5:
                for data in (b"x", b"y" * 1000, b"z" * 100_000):
                    result = sender(data)
                    assert type(result) is int
                    assert 0 <= result <= len(data)
                    results.append(result)
                await anyio.sleep(0.002)
        # Once dead, it stays dead: no write is accepted any more.
        assert [sender(b"after") for _ in range(3)] == [0, 0, 0], results


@pytest.mark.anyio
@pytest.mark.real_network
async def test_a_wrapped_socket_stream_has_no_sender(anyio_backend: str) -> None:
    # A wrapper hides the socket's own send(); writing around it could reorder
    # bytes behind the wrapper's back, so it must get the slow path.
    client, server = await real_pair()
    async with client, server:
        stapled = StapledByteStream(client, client)
        assert stapled.extra(SocketAttribute.raw_socket, None) is not None
        assert nonblocking_sender(stapled) is None


class MemoryByteStream(anyio.abc.ByteStream):
    """A byte stream over an anyio memory object stream: not a socket."""

    def __init__(self) -> None:
        self.send_side, self.receive_side = anyio.create_memory_object_stream[bytes](math.inf)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.receive_side.receive()

    async def send(self, item: bytes) -> None:
        await self.send_side.send(item)

    async def send_eof(self) -> None:
        await self.send_side.aclose()

    async def aclose(self) -> None:
        await self.send_side.aclose()
        await self.receive_side.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


class NotCallable(MemoryByteStream):
    send_nowait = "not a method"


def test_streams_without_a_socket_have_no_sender() -> None:
    stream = MemoryByteStream()
    assert nonblocking_sender(stream) is None
    assert nonblocking_sender(StapledByteStream(stream, stream)) is None
    # Only a callable ``send_nowait`` counts.
    assert nonblocking_sender(NotCallable()) is None


class OwnSender(MemoryByteStream):
    def send_nowait(self, data: bytes) -> int:
        return len(data) // 2


def test_a_stream_with_its_own_send_nowait_gets_it() -> None:
    stream = OwnSender()
    sender = sender_of(stream)
    assert sender == stream.send_nowait
    assert sender(b"abcd") == 2


# -- SimStream.send_nowait -------------------------------------------------------------


async def sim_pair(net: SimNetwork) -> tuple[SimStream, SimStream]:
    """(client side, server side), retrying the connects that chaos refuses."""
    listener = await net.listen("server:4500")
    client_net = net.for_host("client")
    while True:
        try:
            client = await client_net.connect(listener.address)
        except (ConnectionRefusedError, TimeoutError):
            continue
        return client, await listener.accept()


@pytest.mark.trio
async def test_a_sim_stream_is_its_own_sender(autojump_clock: trio.testing.MockClock) -> None:
    client, server = await sim_pair(SimNetwork(seed=1))
    assert nonblocking_sender(client) == client.send_nowait
    assert nonblocking_sender(server) == server.send_nowait


# Partial I/O far more often than the default, with the rest of the default chaos
# but for resets (which legitimately lose bytes) -- latency, partitions, clogging.
PIECEWISE_CHAOS = msgspec.structs.replace(ChaosConfig.default(), reset=0.0, partial_io=0.5)


def _write_piecewise(seed: int) -> dict[str, int]:
    """One run: messages written through send_nowait; what happened, counted."""
    net = SimNetwork(seed=seed, chaos=PIECEWISE_CHAOS, buffer_size=4096)
    stats = {"calls": 0, "short": 0, "zero": 0}
    rng = random.Random(seed)
    messages = [rng.randbytes(rng.choice([1, 2, 7, 100, 1500, 10_000])) for _ in range(60)]

    async def scenario() -> None:
        client, server = await sim_pair(net)
        received = bytearray()

        async def read_all() -> None:
            while True:
                try:
                    received.extend(await server.receive(rng.randint(1, 3000)))
                except anyio.EndOfStream:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            for message in messages:
                view = message
                while view:
                    written = client.send_nowait(view)
                    stats["calls"] += 1
                    assert 0 <= written <= len(view)
                    if written == 0:
                        stats["zero"] += 1
                        await client.send(view)
                        break
                    if written < len(view):
                        stats["short"] += 1
                    view = view[written:]
                if rng.random() < 0.3:
                    await trio.sleep(rng.random() * 0.01)
            await client.send_eof()
        assert bytes(received) == b"".join(messages)

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    stats["partial_io"] = net.fault_counts.get("partial_io", 0)
    return stats


def test_sim_send_nowait_writes_exactly_the_bytes_under_partial_io() -> None:
    totals: dict[str, int] = {}
    for seed in range(6):
        for key, value in _write_piecewise(seed).items():
            totals[key] = totals.get(key, 0) + value
    # The interesting cases really happened: simulated short writes, full
    # buffers, and the fallback to send().
    assert totals["short"] > 20, totals
    assert totals["zero"] > 5, totals
    assert totals["partial_io"] > 20, totals


@pytest.mark.trio
async def test_sim_send_nowait_takes_at_most_the_free_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=2, buffer_size=100)
    client, server = await sim_pair(net)
    assert client.send_nowait(b"a" * 60) == 60
    assert client.send_nowait(b"b" * 60) == 40
    assert client.send_nowait(b"c") == 0
    assert await receive_exactly(server, 50) == b"a" * 50
    assert client.send_nowait(b"d" * 80) == 50
    assert client.send_nowait(b"e") == 0
    assert await receive_exactly(server, 100) == b"a" * 10 + b"b" * 40 + b"d" * 50


@pytest.mark.trio
async def test_sim_send_nowait_fills_exactly_the_buffer_under_partial_io(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Every write is cut short, but writing on until it returns 0 fills the
    # receive buffer to the byte -- never past it.
    net = SimNetwork(seed=3, chaos=ChaosConfig(partial_io=1.0), buffer_size=1000)
    client, server = await sim_pair(net)
    data = random.Random(3).randbytes(300)
    written: list[int] = []
    while not written or written[-1]:
        written.append(client.send_nowait(data))
        assert len(written) < 1000
    assert sum(written) == 1000
    assert 0 < written[0] < len(data), "partial I/O cuts even a write the buffer has room for"
    expected = b"".join(data[:count] for count in written)
    assert await receive_exactly(server, 1000) == expected


@pytest.mark.trio
async def test_sim_send_nowait_returns_zero_after_send_eof(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await sim_pair(SimNetwork(seed=4))
    assert client.send_nowait(b"data") == 4
    await client.send_eof()
    assert client.send_nowait(b"more") == 0
    assert await receive_exactly(server, 4) == b"data"
    with pytest.raises(anyio.EndOfStream):
        await server.receive()


@pytest.mark.trio
async def test_sim_send_nowait_returns_zero_when_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await sim_pair(SimNetwork(seed=5))
    await client.aclose()
    assert client.send_nowait(b"data") == 0
    # The peer's end is broken by the close: it takes nothing either.
    assert server.send_nowait(b"data") == 0
    with pytest.raises(anyio.EndOfStream):
        await server.receive()


@pytest.mark.trio
async def test_sim_send_nowait_returns_zero_on_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=6, chaos=ChaosConfig(reset=1.0))
    client, server = await sim_pair(net)
    assert client.send_nowait(b"data") == 0
    assert net.fault_counts == {"reset": 1}
    # send() reports why.
    with pytest.raises(anyio.BrokenResourceError):
        await client.send(b"data")
    with pytest.raises(anyio.BrokenResourceError):
        await server.receive()


@pytest.mark.trio
async def test_sim_send_nowait_returns_zero_while_a_send_is_in_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer_size = 10
    client, server = await sim_pair(SimNetwork(seed=7, buffer_size=buffer_size))
    payload = bytes(range(100))
    received = bytearray()
    results: list[int] = []
    # (Simulated time: if bytes got mixed up, a stuck send() fails at once.)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, payload)
            await trio.testing.wait_all_tasks_blocked()  # parked on a full buffer
            # Each read makes room and wakes send(); until it has run again (trio
            # picks who goes first at random) the buffer has room, but send() still
            # owns the stream: a write then would cut into its bytes.  While fewer
            # than len(payload) - buffer_size bytes are read, send() cannot be done.
            while len(received) < len(payload) - buffer_size:
                received += await server.receive(1)
                results.append(client.send_nowait(b"X"))
            received += await receive_exactly(server, len(payload) - len(received))
    assert received == payload
    assert results == [0] * len(results)
    assert client.send_nowait(b"X") == 1
    assert await receive_exactly(server, 1) == b"X"


@pytest.mark.trio
async def test_sim_send_nowait_of_nothing_delivers_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: an empty write queued an empty chunk, and the peer's receive()
    # returned b"" -- which no ByteStream may do (b"" is not end-of-stream).
    client, server = await sim_pair(SimNetwork(seed=8))
    assert client.send_nowait(b"") == 0
    with trio.move_on_after(1) as scope:
        got = await server.receive()
        pytest.fail(f"receive() returned {got!r} with nothing sent")
    assert scope.cancelled_caught

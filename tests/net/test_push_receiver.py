"""``push_receiver`` and ``AsyncioSocketStream.receive_into``: bytes handed over from
the event loop's read callback, over real loopback TCP on asyncio.

The transport's client peers read this way on asyncio, so the contract matters:
every byte reaches ``on_data`` exactly once and in order (buffered bytes first),
the end of the stream raises what ``receive()`` would, and an error from
``on_data`` or a cancellation stops delivery without losing the bytes after it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio
import trio.testing

from moonpool.net import ChaosConfig, SimNetwork
from moonpool.net._nowait import PushReceiver, push_receiver
from tests.net.test_nowait import real_pair

TIMEOUT = 10.0

pytestmark = pytest.mark.real_network


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the only backend whose RealNetwork streams push


def receiver_of(stream: anyio.abc.ByteStream) -> PushReceiver:
    receive_into = push_receiver(stream)
    assert receive_into is not None, f"no push receiver for {stream!r}"
    return receive_into


async def wait_for(condition: Callable[[], object]) -> None:
    with anyio.fail_after(TIMEOUT):
        while not condition():  # noqa: ASYNC110 -- state changed by loop callbacks
            await anyio.sleep(0.001)


@pytest.mark.anyio
async def test_every_byte_once_in_order_then_end_of_stream() -> None:
    client, server = await real_pair()
    async with client, server:
        receive_into = receiver_of(server)
        rng = random.Random(7)
        messages = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(300)]
        # Some bytes are buffered before delivery starts: they come first.
        await client.send(messages[0])
        await wait_for(lambda: server._protocol.buffered > 0)  # type: ignore[attr-defined]
        received = bytearray()

        async def write_rest() -> None:
            for message in messages[1:]:
                await client.send(message)
                if rng.random() < 0.1:
                    await anyio.lowlevel.checkpoint()
            await client.send_eof()

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(write_rest)
                with pytest.raises(anyio.EndOfStream):
                    await receive_into(received.extend)
        assert bytes(received) == b"".join(messages)
        # The stream is still usable the ordinary way afterwards.
        with pytest.raises(anyio.EndOfStream):
            await server.receive()


@pytest.mark.anyio
async def test_error_from_on_data_is_raised_and_later_bytes_are_kept() -> None:
    client, server = await real_pair()
    async with client, server:
        receive_into = receiver_of(server)
        seen: list[bytes] = []

        def on_data(data: bytes) -> None:
            seen.append(data)
            raise ValueError("bad input")

        async def write() -> None:
            await client.send(b"first")
            await wait_for(lambda: seen)
            await client.send(b"second")

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(write)
                with pytest.raises(ValueError, match="bad input"):
                    await receive_into(on_data)
            assert seen == [b"first"]
            assert await server.receive() == b"second"


@pytest.mark.anyio
async def test_cancelled_delivery_loses_nothing() -> None:
    client, server = await real_pair()
    async with client, server:
        receive_into = receiver_of(server)
        chunks: list[bytes] = []
        with anyio.move_on_after(0.05) as scope:
            async with anyio.create_task_group() as group:

                async def write() -> None:
                    await client.send(b"during")

                group.start_soon(write)
                await receive_into(chunks.append)
        assert scope.cancelled_caught
        assert b"".join(chunks) == b"during"
        await client.send(b"after")
        with anyio.fail_after(TIMEOUT):
            assert await server.receive() == b"after"


@pytest.mark.anyio
async def test_bytes_arriving_as_delivery_is_cancelled_are_neither_lost_nor_swallowed() -> None:
    """The read callback can run after the waiting task was cancelled but before it
    resumed.  Those bytes belong to whoever reads next: they must not reach the old
    ``on_data``, whose error would then be raised by nobody (or by the next call)."""
    client, server = await real_pair()
    async with client, server:
        receive_into = receiver_of(server)
        seen: list[bytes] = []

        def on_data(data: bytes) -> None:
            seen.append(data)
            raise ValueError(f"bad input {data!r}")

        raised: list[BaseException] = []
        scope = anyio.CancelScope()

        async def reader() -> None:
            with scope:
                try:
                    await receive_into(on_data)
                except ValueError as exc:
                    raised.append(exc)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(reader)
                await anyio.sleep(0.05)  # the reader waits inside receive_into
                await client.send(b"BAD")  # in the server's kernel buffer at once
                await anyio.lowlevel.checkpoint()  # the read callback is now due...
                scope.cancel()  # ...and runs after this cancellation, before the reader
            if raised:  # delivered before the cancellation: raised where it belongs
                assert seen == [b"BAD"]
            else:  # after it: kept for the next reader, not handed to on_data
                assert scope.cancelled_caught
                assert seen == []
                fresh: list[bytes] = []
                with anyio.move_on_after(0.2):
                    await receive_into(fresh.append)
                assert fresh == [b"BAD"]


@pytest.mark.anyio
async def test_on_data_failing_after_cancelling_its_reader_raises_its_failure() -> None:
    """Not swallowed with the cancellation it caused (found in the simulated twin)."""
    client, server = await real_pair()
    async with client, server:
        receive_into = receiver_of(server)
        raised: list[ValueError] = []
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:

                async def reader() -> None:
                    with anyio.CancelScope() as scope:

                        def on_data(data: bytes) -> None:
                            scope.cancel()
                            raise ValueError("bad frame")

                        try:
                            await receive_into(on_data)
                        except ValueError as exc:
                            raised.append(exc)

                group.start_soon(reader)
                await anyio.sleep(0.05)  # the reader waits inside receive_into
                await client.send(b"hello")  # handed over by the read callback
        assert [str(exc) for exc in raised] == ["bad frame"]


class _BufferStyleStream(anyio.abc.ByteStream):
    """A stream whose ``receive_into`` means what ``socket.recv_into`` means."""

    def receive_into(self, buffer: bytearray) -> int:
        return 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def test_another_streams_receive_into_is_not_taken_for_push_mode() -> None:
    assert push_receiver(_BufferStyleStream()) is None


@pytest.mark.anyio
async def test_concurrent_receive_is_busy_and_aclose_ends_delivery() -> None:
    client, server = await real_pair()
    async with client:
        receive_into = receiver_of(server)
        outcome: list[BaseException] = []

        async def deliver() -> None:
            try:
                await receive_into(lambda data: None)
            except anyio.ClosedResourceError as exc:
                outcome.append(exc)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(deliver)
                await anyio.sleep(0.01)
                with pytest.raises(anyio.BusyResourceError):
                    await server.receive()
                with pytest.raises(anyio.BusyResourceError):
                    await receive_into(lambda data: None)
                await server.aclose()
        assert len(outcome) == 1


def test_trio_streams_and_simulated_ones_outside_a_simulation_do_not_push() -> None:
    """There the transport reads with ordinary receive() calls.  (In a simulation
    simulated streams push: tests/net/test_sim_push_receiver.py.)"""

    async def main() -> None:
        client, server = await real_pair()
        async with client, server:
            assert push_receiver(client) is None
            assert push_receiver(server) is None
        sim = SimNetwork(seed=1, chaos=ChaosConfig.none())
        async with await sim.listen("server:4500") as sim_listener:
            sim_client = await sim.for_host("client").connect(sim_listener.address)
            sim_server = await sim_listener.accept()
            assert push_receiver(sim_client) is None
            assert push_receiver(sim_server) is None

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.anyio
async def test_connections_sharing_the_loops_read_buffer_keep_their_own_bytes() -> None:
    """Every connection of a loop reads into one shared buffer (a read allocates only
    what came): 20 connections receiving at once, half by push and half by
    ``receive()``, each get exactly their own bytes, with a pattern per connection
    that a byte from another connection (or a reused, stale buffer) would break."""
    pairs = [await real_pair() for _ in range(20)]
    size = 600_000  # several full reads each
    expected = [bytes((i * 7 + n) % 251 for n in range(size)) for i in range(len(pairs))]
    got = [bytearray() for _ in pairs]
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as group:
            for index, (client, server) in enumerate(pairs):

                async def write(client: anyio.abc.ByteStream = client, index: int = index) -> None:
                    for start in range(0, size, 70_000):
                        await client.send(expected[index][start : start + 70_000])
                    await client.send_eof()

                async def read(server: anyio.abc.ByteStream = server, index: int = index) -> None:
                    if index % 2:
                        with pytest.raises(anyio.EndOfStream):
                            await receiver_of(server)(got[index].extend)
                        return
                    while len(got[index]) < size:
                        got[index].extend(await server.receive())
                    with pytest.raises(anyio.EndOfStream):
                        await server.receive()

                group.start_soon(write)
                group.start_soon(read)
    for client, server in pairs:
        await client.aclose()
        await server.aclose()
    assert [bytes(data) for data in got] == expected

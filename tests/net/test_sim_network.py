"""SimNetwork / SimStream / SimListener under pytest-trio with an autojump MockClock.

Single-seed component tests: each builds a ``SimNetwork`` directly (or takes the
plugin's ``sim_network`` fixture) and checks one behaviour programs rely on --
the precise error for each failure, half-close, backpressure, latency in
simulated time, and what each fault family does to a stream.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
import trio.testing
from anyio.abc import SocketAttribute

from moonpool.net import (
    AddressInUse,
    ChaosConfig,
    InvalidAddress,
    LatencyConfig,
    Listener,
    NetworkProvider,
    SimListener,
    SimNetwork,
    SimStream,
)
from tests.net.stream_conformance import CHECKS, PairFactory, check_byte_stream_pair

FIXED_LATENCY = 0.25
# Resets legitimately break a stream and bit flips legitimately corrupt it, so a
# conformance suite that expects intact, open streams cannot run with them on.
# Everything else stays on -- latency, connect delays and refusals (the factory
# retries), partial reads and writes, partitions and clogging -- because a stream
# must keep its contract through all of those.
CONFORMANCE_CHAOS = ChaosConfig.default().without(["reset", "bit_flip"])


def fixed_latency(seconds: float = FIXED_LATENCY) -> ChaosConfig:
    return ChaosConfig(latency=LatencyConfig(distribution="fixed", low=seconds, high=seconds))


async def connect_and_accept(
    net: SimNetwork, listener: SimListener, client_host: str = "client"
) -> tuple[SimStream, SimStream]:
    """(client side, server side), retrying the connects that chaos refuses."""
    client_net = net.for_host(client_host)
    while True:
        try:
            client = await client_net.connect(listener.address)
        except ConnectionRefusedError:
            continue
        return client, await listener.accept()


async def connected_pair(
    net: SimNetwork, address: str = "server:4500"
) -> tuple[SimStream, SimStream, SimListener]:
    """(client side, server side, listener) on a fresh listener at ``address``."""
    listener = await net.listen(address)
    client, server = await connect_and_accept(net, listener)
    return client, server, listener


async def receive_exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        buf += await stream.receive(size - len(buf))
    return bytes(buf)


# -- the provider contract and the pytest fixture -----------------------------------


def test_sim_network_fixture_is_seeded_with_default_chaos(
    sim_network: SimNetwork, moonpool_seed: int
) -> None:
    assert isinstance(sim_network, NetworkProvider)
    assert sim_network.chaos == ChaosConfig.default()
    assert sim_network.host == "test"
    assert sim_network.fault_counts == {}
    assert isinstance(moonpool_seed, int)


@pytest.mark.trio
async def test_streams_and_listeners_implement_the_interfaces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=1)
    client, server, listener = await connected_pair(net)
    assert isinstance(listener, Listener)
    assert isinstance(client, anyio.abc.ByteStream)
    assert isinstance(server, anyio.abc.ByteStream)
    # Addresses look like a real socket's, from each side's point of view.
    assert server.extra(SocketAttribute.local_address) == ("server", 4500)
    assert client.extra(SocketAttribute.remote_address) == ("server", 4500)
    client_address = client.extra(SocketAttribute.local_address)
    assert isinstance(client_address, tuple)
    assert client_address[0] == "client"
    assert server.extra(SocketAttribute.remote_address) == client_address


@pytest.mark.trio
async def test_round_trips_on_the_fixture_network_take_simulated_time(
    sim_network: SimNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    # The fixture's chaos includes resets: a client must reconnect through them.
    listener = await sim_network.listen("server:4500")
    client, server = await connect_and_accept(sim_network, listener)
    done = breaks = 0
    while done < 50:
        started = trio.current_time()
        request = b"request %d" % done
        try:
            await client.send(request)
            assert await receive_exactly(server, len(request)) == request
            await server.send(request.upper())
            assert await receive_exactly(client, len(request)) == request.upper()
        except anyio.BrokenResourceError:
            breaks += 1
            client, server = await connect_and_accept(sim_network, listener)
            continue
        assert trio.current_time() > started, "default chaos has latency: a round trip costs time"
        done += 1
    assert breaks == sim_network.fault_counts.get("reset", 0)
    assert sim_network.fault_counts["latency"] >= 100  # at least one per send


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_connect_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        SimNetwork(connect_timeout=timeout)


# -- a perfect network ----------------------------------------------------------------


@pytest.mark.trio
async def test_none_streams_are_lossless_and_ordered(
    autojump_clock: trio.testing.MockClock, moonpool_seed: int
) -> None:
    net = SimNetwork(seed=moonpool_seed, chaos=ChaosConfig.none(), buffer_size=4096)
    client, server, _ = await connected_pair(net)
    rng = random.Random(moonpool_seed)
    sends = {
        "up": [rng.randbytes(rng.randint(0, 3000)) for _ in range(200)],
        "down": [rng.randbytes(rng.randint(0, 3000)) for _ in range(200)],
    }
    received: dict[str, bytes] = {}

    async def send_all(stream: SimStream, key: str) -> None:
        for message in sends[key]:
            await stream.send(message)
        await stream.send_eof()

    async def receive_all(stream: SimStream, key: str, seed: int) -> None:
        reads = random.Random(seed)
        buf = bytearray()
        while True:
            try:
                buf += await stream.receive(reads.randint(1, 5000))
            except anyio.EndOfStream:
                break
        received[key] = bytes(buf)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all, client, "up")
        nursery.start_soon(send_all, server, "down")
        nursery.start_soon(receive_all, server, "up", 1)
        nursery.start_soon(receive_all, client, "down", 2)
    assert received["up"] == b"".join(sends["up"])
    assert received["down"] == b"".join(sends["down"])
    assert net.fault_counts == {}
    assert trio.current_time() == 0.0, "no latency configured: no simulated time passes"


# -- precise errors ---------------------------------------------------------------


@pytest.mark.trio
async def test_connect_where_nobody_listens_is_refused_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=3)
    with pytest.raises(ConnectionRefusedError, match="nobody:4500"):
        await net.connect("nobody:4500")
    assert trio.current_time() == 0.0
    # A listener on another port of the same host does not accept for this one.
    async with await net.listen("server:1"):
        with pytest.raises(ConnectionRefusedError, match="server:2"):
            await net.connect("server:2")


def _connect_to_nobody(seed: int, attempts: int) -> list[tuple[type[BaseException], float]]:
    """(exception type, simulated seconds taken) for each connect to a silent address."""
    results: list[tuple[type[BaseException], float]] = []

    async def attempt_many() -> None:
        net = SimNetwork(seed=seed, chaos=ChaosConfig.default(), host="client")
        for _ in range(attempts):
            started = trio.current_time()
            with pytest.raises((ConnectionRefusedError, TimeoutError)) as info:
                await net.connect("server:4500")
            results.append((info.type, trio.current_time() - started))

    trio.run(attempt_many, clock=trio.testing.MockClock(autojump_threshold=0))
    return results


def test_connect_refusal_is_prompt_under_chaos() -> None:
    """Under default chaos a refusal costs a round trip (plus a rare connect delay).

    It never waits for the connect timeout unless a partition is in the way, so
    callers retrying against a server that is down are not slowed to a crawl.
    """
    results = [result for seed in range(20) for result in _connect_to_nobody(seed, 25)]
    assert max(took for _, took in results) <= 10.0 + 1e-9, "no attempt outlasts the timeout"
    # connect_delay_range tops out at 1 s; latency at 5.5 ms each way.
    prompt = [kind for kind, took in results if kind is ConnectionRefusedError and took <= 1.02]
    assert len(prompt) >= 0.95 * len(results), f"only {len(prompt)}/{len(results)} were prompt"


@pytest.mark.trio
async def test_listening_twice_is_address_in_use(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(seed=4)
    listener = await net.listen("server:4500")
    with pytest.raises(AddressInUse, match="server:4500"):
        await net.listen("server:4500")
    with pytest.raises(AddressInUse):  # from any host's view: it is one network
        await net.for_host("other").listen("server:4500")
    assert issubclass(AddressInUse, OSError)
    await listener.aclose()
    async with await net.listen("server:4500") as again:
        assert again.address == "server:4500"


@pytest.mark.trio
async def test_port_zero_picks_distinct_free_ports(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(seed=5)
    first = await net.listen("server:0")
    second = await net.listen("server:0")
    assert first.address != second.address
    for listener in (first, second):
        host, port = listener.address.rsplit(":", 1)
        assert host == "server" and int(port) > 0
        client = await net.connect(listener.address)
        server = await listener.accept()
        await client.send(b"hi")
        assert await receive_exactly(server, 2) == b"hi"


@pytest.mark.trio
@pytest.mark.parametrize("address", ["server", "server:port", ":4500", "server:70000", "::1:1"])
async def test_malformed_addresses_are_rejected(
    address: str, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork(seed=6)
    with pytest.raises(InvalidAddress):
        await net.connect(address)
    with pytest.raises(ValueError, match="address"):
        await net.listen(address)


@pytest.mark.trio
async def test_closed_stream_raises_closed_resource_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, _server, _ = await connected_pair(SimNetwork(seed=7))
    await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        await client.send(b"x")
    with pytest.raises(anyio.ClosedResourceError):
        await client.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await client.send_eof()
    # Closing with data still unread on our side: our stream is closed, not broken.
    other_client, other_server, _ = await connected_pair(SimNetwork(seed=7), "server:2")
    await other_client.send(b"unread")
    await trio.sleep(1)
    await other_server.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await other_server.receive()


@pytest.mark.trio
async def test_closing_wakes_a_blocked_sender_with_closed_resource_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, _server, _ = await connected_pair(SimNetwork(seed=8, buffer_size=100))
    outcome: list[BaseException] = []

    async def sender() -> None:
        try:
            await client.send(b"x" * 1000)  # blocks: nobody reads, buffer is 100 bytes
        except anyio.ClosedResourceError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        await client.aclose()
    assert len(outcome) == 1


@pytest.mark.trio
async def test_closed_listener(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(seed=9)
    listener = await net.listen("server:4500")
    outcome: list[BaseException] = []

    async def acceptor() -> None:
        try:
            await listener.accept()
        except anyio.ClosedResourceError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acceptor)
        await trio.testing.wait_all_tasks_blocked()
        await listener.aclose()
    assert len(outcome) == 1, "closing a listener wakes a blocked accept"
    with pytest.raises(anyio.ClosedResourceError):
        await listener.accept()
    with pytest.raises(ConnectionRefusedError):
        await net.connect("server:4500")


@pytest.mark.trio
async def test_connection_never_accepted_is_reset_when_the_listener_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=10)
    listener = await net.listen("server:4500")
    client = await net.connect("server:4500")
    await listener.aclose()
    with pytest.raises(anyio.BrokenResourceError):
        await client.receive()
    with pytest.raises(anyio.BrokenResourceError):
        await client.send(b"anyone?")


@pytest.mark.trio
async def test_reset_breaks_both_ends_with_broken_resource_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=11, chaos=ChaosConfig(reset=1.0))
    client, server, _ = await connected_pair(net)
    outcome: list[BaseException] = []

    async def reader() -> None:
        try:
            await server.receive()
        except anyio.BrokenResourceError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(anyio.BrokenResourceError):
            await client.send(b"doomed")
    assert len(outcome) == 1, "the peer blocked in receive learns of the reset at once"
    assert net.fault_counts["reset"] == 1
    # Broken stays broken, on both ends and in both directions.
    for stream in (client, server):
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
    with pytest.raises(anyio.BrokenResourceError):
        await server.send(b"reply")
    # Closing a broken stream is fine, and afterwards it reports closed.
    await client.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await client.receive()


@pytest.mark.trio
async def test_peer_close_delivers_data_then_eof_and_breaks_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server, _ = await connected_pair(SimNetwork(seed=12, chaos=fixed_latency()))
    await server.send(b"last words")
    await server.aclose()
    assert await receive_exactly(client, 10) == b"last words"
    for _ in range(2):
        with pytest.raises(anyio.EndOfStream):
            await client.receive()
    with pytest.raises(anyio.BrokenResourceError):
        await client.send(b"too late")


@pytest.mark.trio
async def test_send_eof_is_a_half_close(autojump_clock: trio.testing.MockClock) -> None:
    client, server, _ = await connected_pair(SimNetwork(seed=13, chaos=fixed_latency()))
    await client.send(b"request")
    await client.send_eof()
    await client.send_eof()  # twice is harmless
    with pytest.raises(anyio.ClosedResourceError):
        await client.send(b"more")  # our direction is finished
    assert await receive_exactly(server, 7) == b"request"
    with pytest.raises(anyio.EndOfStream):
        await server.receive()
    # The other direction is unaffected.
    await server.send(b"response")
    assert await receive_exactly(client, 8) == b"response"


@pytest.mark.trio
async def test_concurrent_receives_and_sends_are_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, _server, _ = await connected_pair(SimNetwork(seed=14, buffer_size=10))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.receive)  # nothing comes
        nursery.start_soon(client.send, b"x" * 100)  # blocks on the 10-byte buffer
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(anyio.BusyResourceError):
            await client.receive()
        with pytest.raises(anyio.BusyResourceError):
            await client.send(b"y")
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_receive_cancelled_just_as_data_arrives_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The race behind every read timeout: the deadline fires as the bytes land.

    The reader is woken by the data and its deadline expires in the same turn of
    the run loop; either it returns the bytes, or it is cancelled and the bytes
    stay in the stream -- never taken and then dropped by the cancellation.
    """
    client, server, _ = await connected_pair(SimNetwork(seed=26))
    for i in range(5):
        message = b"message %d" % i
        got: list[bytes] = []
        scope = trio.CancelScope()

        async def reader(scope: trio.CancelScope = scope, got: list[bytes] = got) -> None:
            with scope:
                got.append(await server.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            scope.deadline = trio.current_time()  # expires at the next scheduling point,
            await client.send(message)  # which is the one where the data wakes the reader
        if not got:
            with trio.move_on_after(60):  # bytes lost to the cancellation never come
                got.append(await receive_exactly(server, len(message)))
        assert got == [message], f"round {i}: the cancelled receive swallowed the bytes"


# -- backpressure -------------------------------------------------------------------


@pytest.mark.trio
async def test_sender_blocks_when_the_receiver_does_not_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=15, buffer_size=1000)
    client, server, _ = await connected_pair(net)
    data = random.Random(15).randbytes(10_000)
    done = trio.Event()

    async def sender() -> None:
        await client.send(data)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.sleep(3600)  # an hour of simulated time: the sender stays stuck
        assert not done.is_set(), "send must block while the receiver's buffer is full"
        buffered = await server.receive(65536)
        assert buffered == data[: len(buffered)]
        assert len(buffered) <= 1000, "at most one buffer's worth is ever queued"
        rest = await receive_exactly(server, len(data) - len(buffered))
        await done.wait()
    assert buffered + rest == data


@pytest.mark.trio
async def test_buffers_are_per_connection(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(seed=16, buffer_size=100)
    stuck_client, _stuck_server, listener = await connected_pair(net)
    free_client = await net.for_host("other").connect(listener.address)
    free_server = await listener.accept()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck_client.send, b"s" * 1000)  # fills its own buffer only
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1):
            await free_client.send(b"f" * 100)
            assert await receive_exactly(free_server, 100) == b"f" * 100
        # Nor is the reverse direction of the stuck connection blocked.
        await _stuck_server.send(b"reply")
        assert await receive_exactly(stuck_client, 5) == b"reply"
        nursery.cancel_scope.cancel()


# -- latency and simulated time ---------------------------------------------------


@pytest.mark.trio
async def test_latency_advances_the_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(seed=17, chaos=fixed_latency())
    listener = await net.listen("server:4500")
    start = trio.current_time()
    client = await net.for_host("client").connect("server:4500")
    assert trio.current_time() - start == pytest.approx(2 * FIXED_LATENCY), "a handshake RTT"
    server = await listener.accept()

    sent_at = trio.current_time()
    await client.send(b"one")
    await client.send(b"two")
    assert trio.current_time() == sent_at, "send queues and returns; it does not wait"
    # Not there yet: a deadline shorter than the latency expires with nothing read...
    with trio.move_on_after(FIXED_LATENCY / 2) as scope:
        await server.receive()
    assert scope.cancelled_caught
    # ...and nothing was lost: both messages arrive one latency after they were sent,
    # pipelined rather than one latency each.
    assert await receive_exactly(server, 6) == b"onetwo"
    assert trio.current_time() - sent_at == pytest.approx(FIXED_LATENCY)
    assert net.fault_counts["latency"] >= 4


@pytest.mark.trio
async def test_fixed_latency_is_exact_by_default(autojump_clock: trio.testing.MockClock) -> None:
    # ``fixed`` is documented as "always uses low"; per-pair jitter must not apply.
    net = SimNetwork(seed=18, chaos=fixed_latency(0.1))
    client, server, _ = await connected_pair(net)
    for i in range(20):
        sent_at = trio.current_time()
        await client.send(b"%d" % i)
        await server.receive()
        assert trio.current_time() - sent_at == pytest.approx(0.1)


class _StepsOf(trio.abc.Instrument):
    """Counts the task steps of one task (by name)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.name):
            self.steps += 1


@pytest.mark.trio
async def test_a_waiting_reader_is_woken_once_when_its_bytes_arrive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Event-driven delivery: bytes sent with latency move the parked reader's deadline
    instead of waking it at once to park again, and a receive that waited does not
    yield a second time -- one task step per delivered read, at its arrival time."""
    net = SimNetwork(seed=19, chaos=fixed_latency(0.1))
    client, server, _ = await connected_pair(net)
    got: list[tuple[float, bytes]] = []

    async def reader() -> None:
        for _ in range(3):
            data = await server.receive()
            got.append((trio.current_time(), data))

    steps = _StepsOf("reader")
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, name="reader")
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            for message in (b"one", b"two", b"six"):
                await client.send(message)
                await trio.sleep(0.5)
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert [data for _, data in got] == [b"one", b"two", b"six"]
    assert [round(at - start, 6) for at, _ in got] == [0.1, 0.6, 1.1]
    # The first step starts the task and parks it; then one step per message.
    assert steps.steps == 1 + 3, steps.steps


# -- faults, family by family --------------------------------------------------------


@pytest.mark.trio
async def test_partition_times_out_connects_and_delays_traffic_until_healed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=19, host="client", connect_timeout=10.0)
    listener = await net.listen("server:4500")
    client = await net.connect("server:4500")
    server = await listener.accept()

    net.partition("client", "server", 30.0)
    start = trio.current_time()
    with pytest.raises(TimeoutError, match="partition"):
        await net.connect("server:4500")
    assert trio.current_time() - start == pytest.approx(10.0)

    # Bytes sent into a partition are held (TCP retransmits), not lost, and arrive
    # in order once it heals -- and so does the end of stream behind them.
    await client.send(b"held ")
    await client.send(b"back")
    await client.send_eof()
    assert await receive_exactly(server, 9) == b"held back"
    assert trio.current_time() == pytest.approx(start + 30.0)
    with pytest.raises(anyio.EndOfStream):
        await server.receive()

    # A partition shorter than the connect timeout only delays the connect.
    net.partition("client", "server", 3.0)
    start = trio.current_time()
    await net.connect("server:4500")
    assert trio.current_time() - start == pytest.approx(3.0)
    assert net.fault_counts["partition"] == 2


@pytest.mark.trio
async def test_partition_holds_end_of_stream(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(seed=20, host="client")
    client, server, _ = await connected_pair(net)
    net.partition("client", "server", 5.0)
    await client.send_eof()  # no data in flight: the FIN alone must wait too
    with pytest.raises(anyio.EndOfStream):
        await server.receive()
    assert trio.current_time() == pytest.approx(5.0)


@pytest.mark.trio
async def test_isolate_cuts_one_host_from_everyone_else(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=21, host="a", connect_timeout=2.0)
    await net.listen("b:1")
    await net.listen("c:1")
    net.isolate("a", 60.0)
    for target in ("b:1", "c:1"):
        with pytest.raises(TimeoutError):
            await net.connect(target)
    # Hosts other than the isolated one still reach each other.
    start = trio.current_time()
    await net.for_host("b").connect("c:1")
    assert trio.current_time() == start


@pytest.mark.trio
async def test_clog_stalls_one_direction(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(seed=22, chaos=ChaosConfig(clog=1.0, clog_duration=(2.0, 2.0)))
    client, server, _ = await connected_pair(net)
    start = trio.current_time()
    await client.send(b"stuck")
    await client.send(b" too")  # behind a clog, later writes wait their turn
    assert await receive_exactly(server, 9) == b"stuck too"
    assert trio.current_time() - start == pytest.approx(2.0)
    assert net.fault_counts["clog"] == 2


@pytest.mark.trio
async def test_partial_io_splits_writes_and_shortens_reads_without_changing_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=23, chaos=ChaosConfig(partial_io=1.0))
    client, server, _ = await connected_pair(net)
    data = random.Random(23).randbytes(1000)
    await client.send(data)
    chunks: list[bytes] = []
    while sum(map(len, chunks)) < len(data):
        chunks.append(await server.receive(65536))
    assert b"".join(chunks) == data
    assert len(chunks) > 1, "with partial I/O always on, 1000 bytes never come in one read"
    assert net.fault_counts["partial_io"] >= len(chunks) - 1


@pytest.mark.trio
async def test_bit_flips_corrupt_exactly_one_bit_per_chunk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=24, chaos=ChaosConfig(bit_flip=1.0))
    client, server, _ = await connected_pair(net)
    rng = random.Random(24)
    for _ in range(50):
        message = rng.randbytes(rng.randint(1, 200))
        await client.send(message)
        got = await receive_exactly(server, len(message))
        flipped = int.from_bytes(got, "big") ^ int.from_bytes(message, "big")
        assert flipped.bit_count() == 1
    assert net.fault_counts["bit_flip"] == 50


@pytest.mark.trio
async def test_fault_counts_is_a_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(seed=25, chaos=ChaosConfig(reset=1.0))
    client, _server, _ = await connected_pair(net)
    counts = net.fault_counts
    counts["reset"] = 99
    with pytest.raises(anyio.BrokenResourceError):
        await client.send(b"x")
    assert net.fault_counts == {"reset": 1}
    assert net.for_host("elsewhere").fault_counts == {"reset": 1}, "one network, one count"


# -- stream conformance -----------------------------------------------------------


def pair_factory(net: SimNetwork) -> PairFactory:
    async def make_pair() -> tuple[anyio.abc.ByteStream, anyio.abc.ByteStream]:
        async with await net.listen("server:0") as listener:
            return await connect_and_accept(net, listener)

    return make_pair


@pytest.mark.trio
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize(
    "chaos", [ChaosConfig.none(), CONFORMANCE_CHAOS], ids=["no-chaos", "chaos"]
)
async def test_stream_conformance(
    check: Callable[..., Any],
    chaos: ChaosConfig,
    moonpool_seed: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    await check(pair_factory(SimNetwork(seed=moonpool_seed, chaos=chaos)))


def test_stream_conformance_holds_over_many_seeds_under_chaos() -> None:
    """The whole suite, under chaos, for several seeds (each its own ``trio.run``)."""
    counts: dict[str, int] = {}
    for seed in range(8):
        net = SimNetwork(seed=seed, chaos=CONFORMANCE_CHAOS)
        trio.run(
            check_byte_stream_pair,
            pair_factory(net),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        for family, count in net.fault_counts.items():
            counts[family] = counts.get(family, 0) + count
    # The suite really ran through faults, not around them.
    for family in ("latency", "connect_failure", "connect_delay", "partial_io", "clog"):
        assert counts.get(family, 0) > 0, (family, counts)
    assert "reset" not in counts and "bit_flip" not in counts


# -- determinism ------------------------------------------------------------------


def _chunking_trace(seed: int) -> tuple[list[tuple[float, int]], dict[str, int]]:
    """What the receiver saw (when, how many bytes) and what faults were injected."""
    trace: list[tuple[float, int]] = []
    net = SimNetwork(seed=seed, chaos=CONFORMANCE_CHAOS)

    async def scenario() -> None:
        client, server, _ = await connected_pair(net)
        rng = random.Random(seed)
        for _ in range(100):
            await client.send(rng.randbytes(rng.randint(1, 5000)))
            await trio.sleep(rng.random())
        await client.send_eof()
        while True:
            try:
                chunk = await server.receive(rng.randint(1, 8000))
            except anyio.EndOfStream:
                return
            trace.append((trio.current_time(), len(chunk)))

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    return trace, net.fault_counts


def test_same_seed_same_deliveries_and_fault_counts() -> None:
    first = _chunking_trace(2024)
    assert _chunking_trace(2024) == first
    assert _chunking_trace(2025) != first
    assert first[1].get("partial_io", 0) > 0

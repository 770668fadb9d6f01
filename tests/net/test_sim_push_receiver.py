"""``SimStream.receive_into`` in a simulation: bytes handed over by the run's wake-ups.

The transport's client peers read this way in every simulation, so the simulated
stream must keep the contract the asyncio stream keeps over real sockets
(tests/net/test_push_receiver.py): every byte reaches ``on_data`` exactly once
and in order, the end of the stream raises what ``receive()`` would, and an error
from ``on_data`` or a cancellation stops delivery without losing the bytes after
it.  Each test runs many seeds with the default network chaos and buggify on, so
short reads, split writes, clogs, partitions and resets all cross a delivery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
import trio

from moonpool.net import SimStream
from moonpool.net._nowait import PushReceiver, push_receiver
from moonpool.sim import ChaosConfig, FixedCount, SimulationBuilder, WorkloadContext, sometimes

SEEDS = 30
BASE_SEED = 20_261_203
TIMEOUT = 600.0  # simulated seconds: far more than any partition or clog lasts
Workload = Callable[[WorkloadContext], Awaitable[None]]


def _run_under_chaos(workload: Workload) -> None:
    (
        SimulationBuilder()
        .set_database(None)
        .set_base_seed(BASE_SEED)
        .set_iteration_control(FixedCount(SEEDS))
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .register_workload("peer", workload)
        .run()
        .assert_success()
    )


def _tolerating_resets(workload: Workload) -> Workload:
    """The workload, a seed whose connection was reset counting as done."""

    async def tolerant(ctx: WorkloadContext) -> None:
        try:
            await workload(ctx)
        except* anyio.BrokenResourceError:
            pass  # what a reset leaves is checked by the first test

    return tolerant


@asynccontextmanager
async def _connected(ctx: WorkloadContext) -> AsyncIterator[tuple[SimStream, SimStream]]:
    """A connection from the workload's host to itself, through injected refusals."""
    async with await ctx.network.listen(ctx.address) as listener:
        while True:
            try:
                client = await ctx.network.connect(ctx.address)
                break
            except (ConnectionRefusedError, TimeoutError):
                await trio.sleep(0.1)
        server = await listener.accept()
        assert isinstance(client, SimStream) and isinstance(server, SimStream)
        async with client, server:
            yield client, server


def _receiver(stream: SimStream) -> PushReceiver:
    receive_into = push_receiver(stream)
    assert receive_into is not None and stream.pushes, f"{stream!r} does not push"
    return receive_into


async def _read_to_end(stream: SimStream) -> bytes:
    """What ``receive()`` reads until the end of the stream."""
    data = bytearray()
    while True:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)


def _outside_any_task() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return True
    return False


async def _send_all(stream: SimStream, messages: list[bytes], ctx: WorkloadContext) -> None:
    for message in messages:
        await stream.send(message)
        if ctx.random.random() < 0.3:
            await trio.sleep(ctx.random.uniform(0, 0.05))


def test_every_byte_once_in_order_then_end_of_stream() -> None:
    async def workload(ctx: WorkloadContext) -> None:
        rng = ctx.random
        messages = [rng.randbytes(rng.randrange(1, 100_000)) for _ in range(40)]
        received = bytearray()
        where: list[bool] = []

        def on_data(data: bytes) -> None:
            assert data, "an empty hand-over"
            where.append(_outside_any_task())
            received.extend(data)

        async with _connected(ctx) as (client, server):
            receive_into = _receiver(server)
            # Some bytes are in flight or due before delivery starts: they come first.
            await client.send(messages[0])

            async def write_rest() -> None:
                await _send_all(client, messages[1:], ctx)
                await client.send_eof()

            reset = False
            try:
                with trio.fail_after(TIMEOUT):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(write_rest)
                        with pytest.raises(anyio.EndOfStream):
                            await receive_into(on_data)
            except* anyio.BrokenResourceError:
                reset = True
            if reset:  # what arrived before the reset is a prefix of what was sent
                assert b"".join(messages).startswith(received)
                return
            assert bytes(received) == b"".join(messages)
            assert all(where), "on_data ran inside a task: the push is not between turns"
            sometimes(len(where) > 1, "the bytes came in several hand-overs")
            # Afterwards the stream is still read the ordinary way.
            with pytest.raises(anyio.EndOfStream):
                await server.receive()

    _run_under_chaos(workload)


def test_error_from_on_data_is_raised_and_later_bytes_are_kept() -> None:
    async def workload(ctx: WorkloadContext) -> None:
        seen: list[bytes] = []

        def on_data(data: bytes) -> None:
            seen.append(data)
            raise ValueError("bad input")

        async with _connected(ctx) as (client, server):
            receive_into = _receiver(server)
            with trio.fail_after(TIMEOUT):
                await client.send(b"first")
                with pytest.raises(ValueError, match="bad input"):
                    await receive_into(on_data)
                await client.send(b"second")
                await client.send_eof()
                rest = await _read_to_end(server)
            # One hand-over, a prefix of b"first" (a short read may cut it); nothing
            # after the failing hand-over was given to on_data or dropped.
            assert len(seen) == 1
            assert seen[0] + rest == b"firstsecond"

    _run_under_chaos(_tolerating_resets(workload))


def test_cancelled_delivery_loses_nothing() -> None:
    async def workload(ctx: WorkloadContext) -> None:
        rng = ctx.random
        messages = [rng.randbytes(rng.randrange(1, 20_000)) for _ in range(20)]
        chunks: list[bytes] = []
        async with _connected(ctx) as (client, server):
            receive_into = _receiver(server)
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_all, client, messages, ctx)
                    # Cancelled at a random moment: before, during or after the bytes.
                    with trio.move_on_after(rng.uniform(0, 0.3)) as scope:
                        await receive_into(chunks.append)
                    assert scope.cancelled_caught
                await client.send_eof()
                rest = await _read_to_end(server)
            sometimes(bool(chunks), "some bytes were handed over before the cancellation")
            sometimes(bool(rest), "some bytes were left for receive()")
            assert b"".join(chunks) + rest == b"".join(messages)

    _run_under_chaos(_tolerating_resets(workload))


def test_on_data_cancelling_its_reader_gets_nothing_more() -> None:
    """What the transport's reader does when a reply completes its last call."""

    async def workload(ctx: WorkloadContext) -> None:
        rng = ctx.random
        # Many small writes, due together: one push could hand over several.
        messages = [rng.randbytes(rng.randrange(1, 50)) for _ in range(50)]
        chunks: list[bytes] = []
        async with _connected(ctx) as (client, server):
            receive_into = _receiver(server)
            with trio.fail_after(TIMEOUT):
                with trio.CancelScope() as scope:

                    def on_data(data: bytes) -> None:
                        chunks.append(data)
                        scope.cancel()

                    for message in messages:
                        await client.send(message)
                    await receive_into(on_data)
                assert scope.cancelled_caught
                await client.send_eof()
                rest = await _read_to_end(server)
            assert len(chunks) == 1
            assert chunks[0] + rest == b"".join(messages)

    _run_under_chaos(_tolerating_resets(workload))


def test_concurrent_reads_are_busy_and_close_ends_delivery() -> None:
    async def workload(ctx: WorkloadContext) -> None:
        async with _connected(ctx) as (_client, server):
            receive_into = _receiver(server)
            outcome: list[BaseException] = []

            async def deliver() -> None:
                try:
                    await receive_into(lambda data: None)
                except anyio.ClosedResourceError as exc:
                    outcome.append(exc)

            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(deliver)
                    await trio.sleep(0.01)
                    with pytest.raises(anyio.BusyResourceError):
                        await server.receive()
                    with pytest.raises(anyio.BusyResourceError):
                        await receive_into(lambda data: None)
                    await server.aclose()
            assert len(outcome) == 1

    _run_under_chaos(_tolerating_resets(workload))


# -- found by review: timing, errors that must not vanish, livelocks -----------------------


def test_each_chunk_is_handed_over_when_it_arrives() -> None:
    """A push that wakes no task (half a frame, say) asks for the next arrival; trio's
    autojump used to skip past it to the next *trio* timer, here 5 s away, so the
    bytes came seconds late (a transport reply waited for the 1 s ping timer)."""

    async def workload(ctx: WorkloadContext) -> None:
        pushes: list[tuple[float, int]] = []

        def on_data(data: bytes) -> None:
            pushes.append((trio.current_time(), len(data)))  # wakes nobody

        async with _connected(ctx) as (client, server):
            for _ in range(5):
                await client.send(b"x" * 10)  # arrivals spread by the per-pair latency
            last_arrival = max(arrival for arrival, _ in server._in.chunks)
            with trio.move_on_after(5.0):  # the only trio timer
                await _receiver(server)(on_data)
            assert sum(size for _, size in pushes) == 50
            assert max(at for at, _ in pushes) <= last_arrival, (pushes, last_arrival)
            sometimes(len(pushes) > 1, "the chunks came in several pushes")

    _run_under_chaos(_tolerating_resets(workload))


def test_on_data_failing_after_cancelling_its_reader_raises_its_failure() -> None:
    async def workload(ctx: WorkloadContext) -> None:
        raised: list[ValueError] = []
        async with _connected(ctx) as (client, server):
            await client.send(b"hello")
            with trio.fail_after(TIMEOUT), trio.CancelScope() as scope:

                def on_data(data: bytes) -> None:
                    scope.cancel()
                    raise ValueError("bad frame")

                try:
                    await _receiver(server)(on_data)
                except ValueError as exc:
                    raised.append(exc)
            # Not swallowed with the Cancelled it caused by the scope that caught that.
            assert [str(exc) for exc in raised] == ["bad frame"]

    _run_under_chaos(_tolerating_resets(workload))


class _Stop(BaseException):
    pass


def test_a_base_exception_from_on_data_is_raised_by_the_reader() -> None:
    """Not into the run loop: trio would disable the supervisor, and the run hang."""

    async def workload(ctx: WorkloadContext) -> None:
        async with _connected(ctx) as (client, server):
            await client.send(b"hello")

            def on_data(data: bytes) -> None:
                raise _Stop

            with trio.fail_after(TIMEOUT), pytest.raises(_Stop):
                await _receiver(server)(on_data)

    _run_under_chaos(_tolerating_resets(workload))


def test_two_readers_answering_each_other_forever_fail_the_wall_time_budget() -> None:
    """With no latency, two push readers echoing from on_data never let a turn end;
    the seed fails on its wall-clock budget instead of hanging.  (No network faults:
    the livelock needs bytes that arrive the instant they are sent.)"""

    async def workload(ctx: WorkloadContext) -> None:
        async with _connected(ctx) as (client, server):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_receiver(server), server.send_nowait)
                nursery.start_soon(_receiver(client), client.send_nowait)
                await client.send(b"ping")
                await trio.sleep(1)

    report = (
        SimulationBuilder()
        .set_database(None)
        .set_iteration_control(FixedCount(1))
        .enable_buggify()
        .set_chaos(ChaosConfig.none())
        .set_wall_time_budget(1.0)
        .register_workload("peer", workload)
        .run()
    )
    [failure] = report.failures
    assert failure.kind == "wall_time_budget", failure
    assert "SimStream.receive_into" in failure.error

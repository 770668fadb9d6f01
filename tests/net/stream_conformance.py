"""Behaviour every ``anyio.abc.ByteStream`` pair in moonpool must share.

The transport is written once against ``ByteStream`` and runs over real TCP and
over the simulated network; it can only be right on both if the two streams
agree on the details a protocol leans on: ordering, ``max_bytes``, half-close,
what "closed" and "broken" mean, and that cancelling a receive loses nothing.
These checks pin those details down, measured against anyio's own TCP streams
on both backends.

Use it from a test with a factory that returns a fresh connected pair::

    async def make_pair() -> tuple[ByteStream, ByteStream]:
        ...  # (client side, server side)

    await check_byte_stream_pair(make_pair)

Rules the checks follow so that they also run inside a simulation (trio with an
autojump ``MockClock``): anyio calls only, no wall-clock assumptions -- every
wait is bounded by ``anyio.fail_after`` style deadlines on the event loop's own
clock -- and all payloads are deterministic.

Semantics pinned here (all observed on anyio ``SocketStream``, trio and asyncio):

* ``receive(max_bytes)`` returns 1..max_bytes bytes, never ``b""`` while open,
  and ``receive(0)`` raises ``ValueError``.
* ``send(b"")`` is a no-op: the peer sees nothing, the stream stays usable.
* After ``send_eof()`` the peer reads the data, then ``EndOfStream`` on every
  further ``receive``, and can still send back.
* After the *local* ``aclose()``, ``send`` and ``receive`` raise
  ``ClosedResourceError``, a ``receive`` already blocked is woken with
  ``ClosedResourceError``, and ``aclose()`` may be called again.
* After the *peer* closes cleanly, data it sent first is still delivered, then
  ``receive`` raises ``EndOfStream`` (``BrokenResourceError`` is tolerated: it is
  what TCP reports when the close came as a reset); ``send`` raises
  ``BrokenResourceError`` -- not at once on TCP, where the first write after the
  peer's close is still accepted locally and provokes the reset that fails the
  next one -- and never ``ClosedResourceError``, which means *we* closed.
* Two tasks receiving at once on one stream: the second gets
  ``BusyResourceError`` and the first is unaffected.
* A cancelled ``receive`` consumes nothing.

Not checked, because anyio's own TCP streams disagree across backends:
``send`` after our own ``send_eof()`` (trio: ``BrokenResourceError``; asyncio:
a bare ``RuntimeError``), ``send(b"")`` on a closed stream (trio accepts it
silently), and ``receive`` after our own ``aclose()`` while received data is
still buffered (asyncio returns the buffered data).  Streams here should raise
``ClosedResourceError`` in the last two cases; the checks avoid depending on it.
"""

from __future__ import annotations

import array
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import ByteStream

__all__ = [
    "CHECKS",
    "DEFAULT_TIMEOUT",
    "PairFactory",
    "check_aclose_idempotent",
    "check_byte_stream_pair",
    "check_cancelled_receive_loses_nothing",
    "check_close_wakes_blocked_receive",
    "check_concurrent_receive_is_busy",
    "check_large_payload_both_ways",
    "check_local_close",
    "check_many_small_sends",
    "check_peer_close",
    "check_receive_respects_max_bytes",
    "check_round_trips",
    "check_send_empty_is_harmless",
    "check_send_eof_half_close",
]

PairFactory = Callable[[], Awaitable[tuple[ByteStream, ByteStream]]]
"""Returns a fresh connected ``(client side, server side)`` pair."""

DEFAULT_TIMEOUT = 30.0
"""Seconds (of the event loop's clock) each check may take before it counts as a hang."""

_MAX_SENDS_TO_BREAK = 1000


# -- helpers ----------------------------------------------------------------


def _payload(size: int, salt: int) -> bytes:
    """``size`` bytes of a 32-bit counter starting at ``salt``.

    A counter rather than a short repeating pattern, so that lost, duplicated or
    reordered chunks of any length change the bytes.
    """
    words = array.array("I", range(salt, salt + size // 4 + 1))
    return words.tobytes()[:size]


def _check_chunk(chunk: object, max_bytes: int, where: str) -> bytes:
    if not isinstance(chunk, bytes):
        pytest.fail(f"{where}: receive() returned {type(chunk).__name__}, expected bytes")
    if not chunk:
        pytest.fail(f"{where}: receive() returned b'' on an open stream (use EndOfStream)")
    if len(chunk) > max_bytes:
        pytest.fail(f"{where}: receive({max_bytes}) returned {len(chunk)} bytes")
    return chunk


async def _receive_exactly(
    stream: ByteStream, size: int, where: str, *, max_bytes: int = 65536
) -> bytes:
    """Read exactly ``size`` bytes, never asking for more, so later data stays put."""
    buf = bytearray()
    while len(buf) < size:
        bound = min(max_bytes, size - len(buf))
        buf += _check_chunk(await stream.receive(bound), bound, where)
    return bytes(buf)


def _expect_equal(got: bytes, want: bytes, where: str) -> None:
    if got == want:
        return
    if len(got) != len(want):
        pytest.fail(f"{where}: received {len(got)} bytes, sent {len(want)}")
    first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    pytest.fail(f"{where}: {len(want)} bytes arrived but differ from byte {first} on")


async def _wait_until_blocked() -> None:
    """Let every other task run until it blocks (e.g. inside ``receive``)."""
    await anyio.wait_all_tasks_blocked()


@asynccontextmanager
async def _fresh_pair(
    make_pair: PairFactory, timeout: float, name: str
) -> AsyncIterator[tuple[ByteStream, ByteStream]]:
    """A new pair, closed afterwards; the whole check must end within ``timeout``.

    A hang is reported as a failure naming the check rather than as a bare
    ``TimeoutError``, because a hang is the usual way a stream bug shows.
    """
    with anyio.move_on_after(timeout) as scope:
        client, server = await make_pair()
        try:
            yield client, server
        finally:
            with anyio.move_on_after(timeout, shield=True):
                await client.aclose()
                await server.aclose()
    if scope.cancelled_caught:
        pytest.fail(f"{name}: did not finish within {timeout:g}s; a send or receive hung")


# -- the checks -------------------------------------------------------------


async def check_round_trips(make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Request/response exchanges arrive intact in both directions, in order."""
    name = "check_round_trips"
    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        for i in range(20):
            request = b"ping %d" % i
            reply = b"pong %d" % i * (i + 1)
            await client.send(request)
            got = await _receive_exactly(server, len(request), f"{name} server")
            _expect_equal(got, request, f"{name} request {i}")
            await server.send(reply)
            got = await _receive_exactly(client, len(reply), f"{name} client")
            _expect_equal(got, reply, f"{name} reply {i}")


async def check_large_payload_both_ways(
    make_pair: PairFactory, *, size: int = 1 << 20, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """One big ``send`` each way at once: needs many receives and real flow control.

    Both sides send before either reads to the end, so a stream whose ``send``
    waits for the peer to read everything (or whose buffers are not per
    direction) deadlocks here instead of in production.
    """
    name = "check_large_payload_both_ways"
    up, down = _payload(size, 0), _payload(size, 1 << 30)
    received: dict[str, bytes] = {}

    async def receive_into(key: str, stream: ByteStream) -> None:
        # Alternate small and large reads: the stream must split and keep data.
        buf = bytearray()
        sizes = (65536, 1, 4096, 7, 100_000)
        n = 0
        while len(buf) < size:
            bound = min(sizes[n % len(sizes)], size - len(buf))
            buf += _check_chunk(await stream.receive(bound), bound, f"{name} {key}")
            n += 1
        received[key] = bytes(buf)

    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.send, up)
            tg.start_soon(server.send, down)
            tg.start_soon(receive_into, "server", server)
            tg.start_soon(receive_into, "client", client)
        _expect_equal(received["server"], up, f"{name} client->server")
        _expect_equal(received["client"], down, f"{name} server->client")


async def check_many_small_sends(
    make_pair: PairFactory, *, count: int = 2000, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Many tiny sends in both directions arrive as one exact byte sequence.

    The receiver may see them coalesced or split anywhere; only the
    concatenation is defined.
    """
    name = "check_many_small_sends"
    stream_bytes = _payload(count * 8, 7)
    pieces = []
    offset = 0
    for i in range(count):
        length = 1 + i % 16
        pieces.append(stream_bytes[offset : offset + length])
        offset += length
    total = b"".join(pieces)

    async def send_all(stream: ByteStream) -> None:
        for piece in pieces:
            await stream.send(piece)

    received: dict[str, bytes] = {}

    async def receive_all(key: str, stream: ByteStream) -> None:
        received[key] = await _receive_exactly(stream, len(total), f"{name} {key}")

    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send_all, client)
            tg.start_soon(send_all, server)
            tg.start_soon(receive_all, "server", server)
            tg.start_soon(receive_all, "client", client)
        _expect_equal(received["server"], total, f"{name} client->server")
        _expect_equal(received["client"], total, f"{name} server->client")


async def check_receive_respects_max_bytes(
    make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """``receive(n)`` returns at most ``n`` bytes and keeps the rest for later."""
    name = "check_receive_respects_max_bytes"
    data = _payload(1000, 3)
    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        with pytest.raises(ValueError, match="max_bytes"):
            await server.receive(0)
        await client.send(data)
        buf = bytearray()
        bounds = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)
        n = 0
        while len(buf) < len(data):
            bound = bounds[n % len(bounds)]
            buf += _check_chunk(await server.receive(bound), bound, name)
            n += 1
        _expect_equal(bytes(buf), data, name)


async def check_send_empty_is_harmless(
    make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """``send(b"")`` delivers nothing (no ``b""`` chunk, no EOF) and breaks nothing."""
    name = "check_send_empty_is_harmless"
    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        await client.send(b"")
        await client.send(b"after")
        _expect_equal(await _receive_exactly(server, 5, name), b"after", f"{name} client->server")
        await server.send(b"")
        await server.send(b"back")
        _expect_equal(await _receive_exactly(client, 4, name), b"back", f"{name} server->client")


async def check_send_eof_half_close(
    make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """``send_eof`` ends one direction only: EOF after the data, replies still flow."""
    name = "check_send_eof_half_close"
    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        await client.send(b"request")
        await client.send_eof()
        _expect_equal(await _receive_exactly(server, 7, name), b"request", name)
        for _ in range(2):  # EndOfStream is sticky, not a one-off
            with pytest.raises(anyio.EndOfStream):
                await server.receive()
        await server.send(b"response")
        _expect_equal(await _receive_exactly(client, 8, name), b"response", name)
        await server.send_eof()
        with pytest.raises(anyio.EndOfStream):
            await client.receive()


async def check_local_close(make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """After our own ``aclose()``, ``send`` and ``receive`` raise ``ClosedResourceError``."""
    name = "check_local_close"
    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        await client.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await client.send(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await client.receive()
        await server.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await server.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await server.send(b"x")


async def check_close_wakes_blocked_receive(
    make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Closing a stream wakes a task blocked in its ``receive`` with ``ClosedResourceError``.

    This is how a transport shuts a reader task down without cancelling it.
    """
    name = "check_close_wakes_blocked_receive"
    outcome: list[BaseException | bytes] = []

    async def reader(stream: ByteStream) -> None:
        try:
            outcome.append(await stream.receive())
        except Exception as exc:  # recorded and judged below
            outcome.append(exc)

    async with (
        _fresh_pair(make_pair, timeout, name) as (client, _server),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(reader, client)
        await _wait_until_blocked()
        await client.aclose()
    if len(outcome) != 1 or not isinstance(outcome[0], anyio.ClosedResourceError):
        pytest.fail(f"{name}: blocked receive ended with {outcome!r}, not ClosedResourceError")


async def check_aclose_idempotent(
    make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """``aclose()`` twice on either side, in either order, is fine."""
    name = "check_aclose_idempotent"
    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        await server.aclose()
        await client.aclose()
        await client.aclose()
        await server.aclose()


async def check_peer_close(make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """When the peer closes: its last data arrives, then EOF, then sends break.

    TCP does not fail the first write after the peer's close (it is buffered
    locally, and the peer's reset only fails a later one), so sending is
    retried a bounded number of times, yielding between tries.
    """
    name = "check_peer_close"
    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        await server.send(b"bye")
        await server.aclose()
        _expect_equal(await _receive_exactly(client, 3, name), b"bye", name)
        try:
            extra = await client.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        else:
            pytest.fail(f"{name}: receive after peer close returned {extra!r}, not EndOfStream")
        for _attempt in range(_MAX_SENDS_TO_BREAK):
            try:
                await client.send(b"are you there?")
            except anyio.BrokenResourceError:
                break
            except anyio.ClosedResourceError:
                pytest.fail(
                    f"{name}: send after the *peer* closed raised ClosedResourceError; "
                    "that means the local side closed -- expected BrokenResourceError"
                )
            await anyio.sleep(0.01)
        else:
            pytest.fail(
                f"{name}: {_MAX_SENDS_TO_BREAK} sends after the peer closed all succeeded; "
                "expected BrokenResourceError"
            )
        # Once broken, stays broken.
        with pytest.raises(anyio.BrokenResourceError):
            await client.send(b"still there?")


async def check_concurrent_receive_is_busy(
    make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """A second concurrent ``receive`` raises ``BusyResourceError``; the first still works.

    Two readers would split one byte stream between them at random, so the
    stream refuses rather than let a protocol bug corrupt frames silently.
    """
    name = "check_concurrent_receive_is_busy"
    got: list[bytes] = []

    async def reader(stream: ByteStream) -> None:
        got.append(await stream.receive())

    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, client)
            await _wait_until_blocked()
            with pytest.raises(anyio.BusyResourceError):
                await client.receive()
            await server.send(b"z")
        _expect_equal(b"".join(got), b"z", f"{name} first reader")
        await server.send(b"again")
        _expect_equal(await _receive_exactly(client, 5, name), b"again", f"{name} afterwards")


async def check_cancelled_receive_loses_nothing(
    make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Cancelling a pending ``receive`` leaves the stream usable with no data lost.

    Timeouts around reads are everywhere in the transport; if a cancelled read
    could swallow bytes, every timeout would corrupt the framing after it.
    """
    name = "check_cancelled_receive_loses_nothing"
    async with _fresh_pair(make_pair, timeout, name) as (client, server):
        for round_ in range(3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.receive)
                await _wait_until_blocked()
                tg.cancel_scope.cancel()
            with anyio.move_on_after(0.05):  # a deadline expiring mid-read
                await client.receive()
            message = b"after cancel %d" % round_
            await server.send(message)
            got = await _receive_exactly(client, len(message), name)
            _expect_equal(got, message, f"{name} round {round_}")


Check = Callable[..., Awaitable[None]]

CHECKS: tuple[Check, ...] = (
    check_round_trips,
    check_large_payload_both_ways,
    check_many_small_sends,
    check_receive_respects_max_bytes,
    check_send_empty_is_harmless,
    check_send_eof_half_close,
    check_local_close,
    check_close_wakes_blocked_receive,
    check_aclose_idempotent,
    check_peer_close,
    check_concurrent_receive_is_busy,
    check_cancelled_receive_loses_nothing,
)
"""Every check, in order; parametrize over it to see each one pass or fail by name."""


async def check_byte_stream_pair(
    make_pair: PairFactory, *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Run every check in :data:`CHECKS`, each on a fresh pair from ``make_pair``."""
    for check in CHECKS:
        await check(make_pair, timeout=timeout)

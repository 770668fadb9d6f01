"""FrameQueue: the writer task, the write-now fast path, and how the two share a wire.

The connection here is in memory: a :class:`Wire` is an anyio memory object
stream carrying byte chunks.  The writer task writes to it through
:class:`WireStream`, whose ``send`` delivers each buffer in several pieces with
a scheduling point between them -- so a fast-path write made while a ``send`` is
in progress would land in the middle and show up as reordered bytes.  The fast
path writes to the same wire through :class:`ScriptedSender`, a stand-in for a
non-blocking socket send that takes a scripted number of bytes per call.
"""

from __future__ import annotations

import functools
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from moonpool.net._nowait import nonblocking_sender
from moonpool.transport._frame_queue import COALESCE_BYTES, ByteBudget, FrameQueue, write_frames


class Wire:
    """Both ends of an in-memory connection; ``received`` is what the far end read."""

    def __init__(self) -> None:
        self.send_side, self.receive_side = anyio.create_memory_object_stream[bytes](math.inf)
        self.received = bytearray()

    def put(self, data: bytes) -> None:
        if data:
            self.send_side.send_nowait(data)

    async def read_all(self) -> None:
        """The far end: read until the near end is closed."""
        async with self.receive_side:
            async for chunk in self.receive_side:
                self.received += chunk

    def drain(self) -> bytes:
        """What has arrived so far, without a reader task (synchronous tests)."""
        while True:
            try:
                self.received += self.receive_side.receive_nowait()
            except anyio.WouldBlock:
                return bytes(self.received)


class WireStream(anyio.abc.ByteStream):
    """The writer's end of a :class:`Wire`: ``send`` writes in ``pieces`` parts,
    yielding to the scheduler before each, and checks the queue says it is writing."""

    def __init__(self, wire: Wire, queue: FrameQueue | None = None, pieces: int = 3) -> None:
        self.wire = wire
        self.queue = queue
        self.pieces = pieces
        self.sends: list[bytes] = []
        self.gate: anyio.Event | None = None  # when set, send() stops halfway until it fires

    async def send(self, item: bytes) -> None:
        if self.queue is not None:
            assert self.queue.writing, "write_frames must flag the queue while it sends"
        self.sends.append(bytes(item))
        step = max(1, -(-len(item) // self.pieces))
        for start in range(0, len(item), step):
            await anyio.lowlevel.checkpoint()
            if self.gate is not None and start > 0:
                await self.gate.wait()
            self.wire.put(item[start : start + step])

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise AssertionError("the writer never reads")

    async def send_eof(self) -> None:
        await self.wire.send_side.aclose()

    async def aclose(self) -> None:
        await self.wire.send_side.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


class ScriptedSender:
    """A fake non-blocking send: takes ``script[i]`` bytes on call ``i`` (``None``:
    all of them; past the end of the script: all of them) and puts them on the wire."""

    def __init__(
        self, wire: Wire, script: Iterable[int | None] = (), queue: FrameQueue | None = None
    ) -> None:
        self.wire = wire
        self.script: deque[int | None] = deque(script)
        self.queue = queue
        self.calls: list[bytes] = []
        self.returned: list[int] = []

    def __call__(self, data: bytes) -> int:
        if self.queue is not None:
            assert not self.queue.writing, "fast path used while the writer is mid-send"
        self.calls.append(bytes(data))
        wanted = self.script.popleft() if self.script else None
        count = len(data) if wanted is None else min(wanted, len(data))
        self.wire.put(data[:count])
        self.returned.append(count)
        return count


@dataclass
class SentLog:
    """``on_sent`` callback: every (frames, size) it was given."""

    calls: list[tuple[int, int]] = field(default_factory=list)

    def __call__(self, frames: int, size: int) -> None:
        self.calls.append((frames, size))

    @property
    def frames(self) -> int:
        return sum(frames for frames, _ in self.calls)

    @property
    def size(self) -> int:
        return sum(size for _, size in self.calls)


def fast_queue(
    script: Iterable[int | None] = (), limit: int = 100
) -> tuple[FrameQueue, ScriptedSender, SentLog, Wire]:
    log = SentLog()
    queue = FrameQueue(limit, on_sent=log)
    wire = Wire()
    sender = ScriptedSender(wire, script, queue)
    queue.sender = sender
    return queue, sender, log, wire


# -- the fast path alone (no writer task, no event loop) ------------------------------


def test_write_now_writes_from_the_caller_without_a_writer() -> None:
    queue, sender, log, wire = fast_queue()
    queue.put(b"one", write_now=True)
    assert sender.calls == [b"one"]
    assert wire.drain() == b"one"
    assert len(queue) == 0
    assert log.calls == [(1, 3)]
    # Frames queued without write_now wait ...
    queue.put(b"two")
    assert sender.calls == [b"one"]
    assert len(queue) == 1
    # ... and the next write_now takes them along, in order, in one write.
    queue.put(b"three", write_now=True)
    assert sender.calls == [b"one", b"twothree"]
    assert wire.drain() == b"onetwothree"
    assert len(queue) == 0
    assert log.calls == [(1, 3), (2, 8)]


def test_write_now_without_a_sender_only_queues() -> None:
    queue, sender, log, wire = fast_queue()
    queue.sender = None
    queue.put(b"frame", write_now=True)
    assert sender.calls == []
    assert wire.drain() == b""
    assert len(queue) == 1
    assert log.calls == []
    assert queue.take() == (b"frame", 1)


def test_write_now_is_skipped_while_the_writer_is_writing() -> None:
    queue, sender, log, wire = fast_queue()
    queue.writing = True
    queue.put(b"a", write_now=True)
    assert sender.calls == []
    assert len(queue) == 1
    queue.writing = False
    queue.put(b"b", write_now=True)
    assert sender.calls == [b"ab"]
    assert wire.drain() == b"ab"
    assert log.calls == [(2, 2)]


def test_write_now_splits_large_batches_like_the_writer() -> None:
    queue, sender, log, _wire = fast_queue()
    frames = [bytes([i]) * 100_000 for i in range(5)]
    for frame in frames[:-1]:
        queue.put(frame)
    queue.put(frames[-1], write_now=True)
    assert b"".join(sender.calls) == b"".join(frames)
    assert len(sender.calls) > 1
    assert all(len(call) <= COALESCE_BYTES for call in sender.calls)
    assert log.frames == 5
    assert log.size == 500_000
    assert len(queue) == 0


def test_a_short_write_leaves_a_fragment_that_goes_before_any_frame() -> None:
    queue, sender, log, wire = fast_queue(script=[2])
    queue.put(b"hello", write_now=True)
    assert wire.drain() == b"he"
    assert len(queue) == 1  # the fragment
    assert log.calls == [(1, 2)]
    # While a fragment is pending, the fast path stays off: the writer owns the wire.
    queue.put(b"world", write_now=True)
    assert sender.calls == [b"hello"]
    assert len(queue) == 2
    assert queue.take() == (b"llo", 0)
    assert queue.take() == (b"world", 1)
    assert len(queue) == 0


def test_a_short_write_in_a_later_batch_keeps_the_rest_queued() -> None:
    queue, sender, _log, wire = fast_queue(script=[None, 10])
    frames = [bytes([i]) * 100_000 for i in range(4)]
    for frame in frames[:-1]:
        queue.put(frame)
    queue.put(frames[-1], write_now=True)
    assert len(sender.calls) == 2
    written = wire.drain()
    rest = b"".join(frames)[len(written) :]
    # The unwritten tail of the second batch first, then the frames not yet tried.
    taken = b""
    while len(queue):
        taken += queue.take()[0]
    assert taken == rest


def test_clear_drops_the_fragment_and_reopens_the_fast_path() -> None:
    queue, sender, _log, wire = fast_queue(script=[1])
    queue.put(b"abc", write_now=True)
    queue.put(b"def")
    assert queue.clear() == 2  # the fragment and the frame
    assert len(queue) == 0
    queue.put(b"ghi", write_now=True)
    assert sender.calls == [b"abc", b"ghi"]
    assert wire.drain() == b"aghi"
    assert len(queue) == 0


def test_unsent_tags_name_only_frames_no_write_has_started_on() -> None:
    # The first batch is cut short inside its first frame: that frame's rest (the
    # fragment) has begun to go out, so it is not "unsent"; the batch's second
    # frame, of which no byte left, is back in the queue and is, like the frames
    # queued after it, in order; untagged frames (server replies) are never listed.
    queue, sender, _log, wire = fast_queue(script=[5])
    queue.put(b"a" * 10, tag=1)
    queue.put(b"b" * 10, write_now=True, tag=2)
    assert sender.calls == [b"a" * 10 + b"b" * 10]
    queue.put(b"c" * 10, tag=3)
    queue.put(b"untagged")
    queue.put(b"d" * 10, tag=4)
    assert queue.unsent_tags() == [2, 3, 4]
    queue.take()  # the fragment
    queue.take()  # a batch handed to a send: maybe arrived, so no longer unsent
    assert queue.unsent_tags() == []
    queue.put(b"e", tag=5)
    assert queue.unsent_tags() == [5]
    queue.clear()
    assert queue.unsent_tags() == []
    assert wire.drain() == b"a" * 5


# -- with the writer task ----------------------------------------------------------------


async def run_writer(stream: WireStream, queue: FrameQueue, group: anyio.abc.TaskGroup) -> None:
    """Start ``write_frames`` and the wire's reader in ``group``."""

    async def writer() -> None:
        async with stream:  # closing it ends the reader
            await write_frames(stream, queue)

    group.start_soon(writer)
    group.start_soon(stream.wire.read_all)


@pytest.mark.trio
async def test_the_writer_writes_the_fragment_before_later_frames() -> None:
    queue, sender, log, wire = fast_queue(script=[2])
    stream = WireStream(wire, queue)
    async with anyio.create_task_group() as group:
        await run_writer(stream, queue, group)
        await trio.testing.wait_all_tasks_blocked()
        queue.put(b"hello", write_now=True)  # "he" now, "llo" left to the writer
        queue.put(b" ")
        queue.put(b"world", write_now=True)  # fragment pending: queued
        assert sender.calls == [b"hello"]
        queue.close()
    assert wire.received == b"hello world"
    assert stream.sends[0] == b"llo"
    assert b"".join(stream.sends) == b"llo world"
    assert log.size == 11
    assert log.frames == 3


@pytest.mark.trio
async def test_a_short_write_wakes_the_writer_for_the_rest() -> None:
    queue, _sender, log, wire = fast_queue(script=[1])
    stream = WireStream(wire, queue)
    async with anyio.create_task_group() as group:
        await run_writer(stream, queue, group)
        await trio.testing.wait_all_tasks_blocked()
        queue.put(b"abc", write_now=True)
        # Nothing else happens (no put, no close), yet the rest goes out.
        await trio.testing.wait_all_tasks_blocked()
        assert wire.received == b"abc"
        assert stream.sends == [b"bc"]
        assert len(queue) == 0
        queue.close()
    assert log.calls == [(1, 1), (0, 2)]


@pytest.mark.trio
async def test_write_now_does_not_wake_or_need_the_writer() -> None:
    queue, _sender, log, wire = fast_queue()
    stream = WireStream(wire, queue)
    async with anyio.create_task_group() as group:
        await run_writer(stream, queue, group)
        await trio.testing.wait_all_tasks_blocked()
        for frame in (b"a", b"bb", b"ccc"):
            queue.put(frame, write_now=True)
            await trio.testing.wait_all_tasks_blocked()
        queue.close()
    assert wire.received == b"abbccc"
    assert stream.sends == [], "everything went through the fast path"
    assert log.calls == [(1, 1), (1, 2), (1, 3)]


@pytest.mark.trio
async def test_write_now_never_cuts_into_a_send_in_progress() -> None:
    queue, sender, _log, wire = fast_queue()
    stream = WireStream(wire, queue, pieces=2)
    stream.gate = anyio.Event()
    async with anyio.create_task_group() as group:
        await run_writer(stream, queue, group)
        queue.put(b"AAAA")  # to the writer, which stops halfway through its send
        await trio.testing.wait_all_tasks_blocked()
        assert queue.writing
        assert wire.received == b"AA"
        queue.put(b"bb", write_now=True)
        assert sender.calls == []
        stream.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert not queue.writing
        # Once the writer is idle again, the fast path is back.
        queue.put(b"cc", write_now=True)
        assert sender.calls == [b"cc"]
        queue.close()
    assert wire.received == b"AAAAbbcc"
    assert stream.sends == [b"AAAA", b"bb"]


@pytest.mark.trio
async def test_clear_drops_a_fragment_the_writer_has_not_taken() -> None:
    queue, _sender, _log, wire = fast_queue(script=[1])
    stream = WireStream(wire, queue)
    async with anyio.create_task_group() as group:
        await run_writer(stream, queue, group)
        await trio.testing.wait_all_tasks_blocked()
        queue.put(b"abc", write_now=True)  # "a" written, the writer woken for "bc"
        assert queue.clear() == 1
        await trio.testing.wait_all_tasks_blocked()
        assert stream.sends == []
        queue.sender = None
        queue.put(b"x", write_now=True)
        queue.close()
    assert wire.received == b"ax"
    assert stream.sends == [b"x"]


@pytest.mark.trio
async def test_close_with_a_fragment_pending_writes_it_then_stops() -> None:
    queue, _sender, log, wire = fast_queue(script=[3])
    stream = WireStream(wire, queue)
    async with anyio.create_task_group() as group:
        queue.put(b"abcdef", write_now=True)
        queue.close()
        await run_writer(stream, queue, group)
    assert wire.received == b"abcdef"
    assert stream.sends == [b"def"]
    assert log.calls == [(1, 3), (0, 3)]


@pytest.mark.trio
async def test_a_stream_with_send_nowait_drives_the_fast_path() -> None:
    # The connection owner sets queue.sender = nonblocking_sender(stream).
    wire = Wire()
    log = SentLog()
    queue = FrameQueue(10, on_sent=log)

    class NowaitWireStream(WireStream):
        def __init__(self) -> None:
            super().__init__(wire, queue)
            self.send_nowait = ScriptedSender(wire, [4], queue)

    stream = NowaitWireStream()
    queue.sender = nonblocking_sender(stream)
    assert queue.sender is stream.send_nowait
    async with anyio.create_task_group() as group:
        await run_writer(stream, queue, group)
        queue.put(b"request-1", write_now=True)
        queue.close()
    assert wire.received == b"request-1"
    assert stream.sends == [b"est-1"]


def test_a_batch_the_fast_path_took_nothing_of_keeps_its_frame_count() -> None:
    queue, sender, log, wire = fast_queue(script=[0])
    queue.put(b"ab")
    queue.put(b"cd", write_now=True)
    assert sender.calls == [b"abcd"]
    assert wire.drain() == b""
    assert log.calls == []
    # Not one byte of the batch is on the wire: its frames are still to count.
    assert queue.take() == (b"abcd", 2)


@pytest.mark.trio
async def test_on_sent_counts_frames_even_when_the_fast_path_took_nothing() -> None:
    # Regression: the frames of a batch whose fast-path write returned 0 were
    # never counted (PeerStats.frames_sent undercounted).
    queue, _sender, log, wire = fast_queue(script=[0])
    stream = WireStream(wire, queue)
    async with anyio.create_task_group() as group:
        await run_writer(stream, queue, group)
        queue.put(b"frame", write_now=True)
        queue.close()
    assert wire.received == b"frame"
    assert log.calls == [(1, 5)]


# -- the property: whatever the interleaving, the wire carries the frames in order -----


@functools.cache
def _bulk(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@dataclass(frozen=True)
class Step:
    frame: bytes
    write_now: bool
    sender_on: bool  # the connection owner may clear the sender (no live connection)
    yields: int  # scheduling points before the next put: lets the writer interleave


steps_strategy = st.lists(
    st.builds(
        Step,
        # Never empty: a transport frame always has its header (and an empty
        # fast-path write, taking 0 bytes, is not reported to on_sent at all).
        frame=st.binary(min_size=1, max_size=40) | st.sampled_from([70_000, 300_000]).map(_bulk),
        write_now=st.booleans(),
        sender_on=st.booleans() | st.just(True),
        yields=st.integers(0, 3),
    ),
    max_size=30,
)
# None: the sender takes all it is given; a number: at most that many bytes (0 too).
script_strategy = st.lists(st.none() | st.integers(0, 50) | st.just(0), max_size=40)


@settings(
    max_examples=150,
    deadline=None,  # wall time per example varies with the machine, not the code
    suppress_health_check=[HealthCheck.too_slow],
)
@given(steps=steps_strategy, script=script_strategy, pieces=st.integers(1, 4))
def test_the_wire_carries_every_frame_in_put_order(
    steps: list[Step], script: list[int | None], pieces: int
) -> None:
    log = SentLog()
    queue = FrameQueue(1000, on_sent=log)
    wire = Wire()
    sender = ScriptedSender(wire, script, queue)
    stream = WireStream(wire, queue, pieces=pieces)

    async def scenario() -> None:
        with trio.fail_after(5):
            async with anyio.create_task_group() as group:
                await run_writer(stream, queue, group)
                for step in steps:
                    queue.sender = sender if step.sender_on else None
                    calls = len(sender.calls)
                    idle = len(queue) == 0 and not queue.writing
                    queue.put(step.frame, write_now=step.write_now)
                    if not (step.write_now and step.sender_on) or queue.writing:
                        assert len(sender.calls) == calls
                    elif idle:
                        assert len(sender.calls) > calls, "the fast path was open but unused"
                    for _ in range(step.yields):
                        await anyio.lowlevel.checkpoint()
                # Everything goes out without close() having to wake anyone.
                await trio.testing.wait_all_tasks_blocked()
                assert len(queue) == 0
                assert wire.received == b"".join(step.frame for step in steps)
                queue.close()

    trio.run(scenario)
    expected = b"".join(step.frame for step in steps)
    assert wire.received == expected
    assert log.size == len(expected)
    assert log.frames == len(steps)
    event(f"fast-path writes: {'some' if sender.calls else 'none'}")
    short = any(r < len(c) for r, c in zip(sender.returned, sender.calls, strict=True))
    event(f"short fast-path writes: {'some' if short else 'none'}")
    event(f"writer sends: {'some' if stream.sends else 'none'}")


@pytest.mark.trio
async def test_a_write_in_progress_counts_against_the_shared_budget_until_it_returns() -> None:
    """On asyncio a write's bytes sit in the transport's buffer until the kernel takes
    them; counted as free as soon as the writer took them, they let a server hold one
    write per connection beyond its total budget.  The queue's own limit does not
    count them (one write in progress per queue)."""
    budget = ByteBudget(60)
    queue = FrameQueue(10, byte_limit=60, budget=budget)
    wire = Wire()
    stream = WireStream(wire, queue, pieces=2)
    stream.gate = anyio.Event()
    async with anyio.create_task_group() as group:
        await run_writer(stream, queue, group)
        queue.put(b"x" * 50)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.sends == [b"x" * 50]  # taken, halfway through its send
        assert (queue.queued_bytes, budget.used) == (0, 50)
        queue.put(b"y" * 20)
        assert queue.full  # the budget: 50 being written + 20 queued > 60
        budget.limit = 1000
        assert not queue.full  # the queue's own limit: 20 queued < 60
        budget.limit = 60
        # Dropping the queue mid-write leaves the write's own bytes to itself...
        queue.clear()
        assert (queue.queued_bytes, budget.used) == (0, 50)
        stream.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        # ... which gives them back when its send returns: the shared budget is exact.
        assert (queue.queued_bytes, budget.used) == (0, 0)
        assert not queue.full
        queue.close()
    assert wire.received == b"x" * 50

"""FairQueue: requests waiting for the application, taken in turn by connection."""

from __future__ import annotations

import anyio
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from moonpool.transport._request_queue import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    taken = []
    while True:
        try:
            taken.append(queue.get_nowait())
        except anyio.WouldBlock:
            return taken


def test_sources_take_turns() -> None:
    """A source with a hundred items waiting gets one turn per round, like the others."""
    queue: FairQueue[str] = FairQueue(1000, 10**6)
    for n in range(100):
        assert queue.put_nowait("greedy", f"g{n}", 1)
    assert queue.put_nowait("polite", "p0", 1)
    assert queue.put_nowait("other", "o0", 1)
    assert queue.put_nowait("polite", "p1", 1)
    assert drain(queue)[:7] == ["g0", "p0", "o0", "g1", "p1", "g2", "g3"]
    assert len(queue) == 0 and queue.queued_bytes == 0


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 50)), max_size=60))
def test_items_come_out_round_robin_by_source(puts: list[tuple[str, int]]) -> None:
    queue: FairQueue[str] = FairQueue(1000, 10**6)
    for n, (key, size) in enumerate(puts):
        assert queue.put_nowait(key, f"{key}{n}", size)
    assert queue.queued_bytes == sum(size for _, size in puts)
    taken = drain(queue)
    # The model: round after round, each source (in order of first arrival) gives
    # its oldest item.
    lines: dict[str, list[str]] = {}
    for n, (key, _) in enumerate(puts):
        lines.setdefault(key, []).append(f"{key}{n}")
    expected: list[str] = []
    while any(lines.values()):
        for line in lines.values():
            if line:
                expected.append(line.pop(0))
    assert taken == expected
    assert queue.queued_bytes == 0


def test_bounded_in_items_and_bytes_and_one_item_always_fits() -> None:
    queue: FairQueue[str] = FairQueue(3, 100)
    assert queue.put_nowait("a", "huge", 10_000)  # alone: fits whatever its size
    assert not queue.put_nowait("b", "small", 1)
    assert queue.get_nowait() == "huge"
    assert queue.put_nowait("a", "1", 60)
    assert not queue.put_nowait("a", "2", 41)  # 101 bytes
    assert queue.put_nowait("a", "2", 40)
    assert queue.put_nowait("b", "3", 0)
    assert not queue.put_nowait("b", "4", 0)  # 3 items
    assert (len(queue), queue.queued_bytes) == (3, 100)


@pytest.mark.trio
async def test_room_goes_to_waiting_sources_first_come_first_served() -> None:
    queue: FairQueue[str] = FairQueue(1, 100)
    assert queue.put_nowait("greedy", "g0", 1)
    admitted: list[str] = []

    async def put(key: str, item: str) -> None:
        await queue.put(key, item, 1)
        admitted.append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put, "polite", "p0")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(put, "greedy", "g1")
        await trio.testing.wait_all_tasks_blocked()
        # Somebody is waiting: a newcomer does not jump the line even when room frees.
        assert queue.get_nowait() == "g0"
        assert not queue.put_nowait("third", "t0", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert admitted == ["p0"]
        assert queue.get_nowait() == "p0"
        await trio.testing.wait_all_tasks_blocked()
        assert admitted == ["p0", "g1"]
        assert queue.get_nowait() == "g1"


@pytest.mark.trio
async def test_get_waits_for_an_item_and_close_ends_it() -> None:
    queue: FairQueue[str] = FairQueue(4, 100)
    got: list[str] = []

    async def getter() -> None:
        got.append(await queue.get())
        with pytest.raises(anyio.EndOfStream):
            await queue.get()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        queue.put_nowait("a", "x", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["x"]
        queue.close()
    with pytest.raises(anyio.ClosedResourceError):
        queue.put_nowait("a", "y", 1)


@pytest.mark.trio
async def test_close_fails_waiting_puts_and_drops_everything() -> None:
    queue: FairQueue[str] = FairQueue(1, 100)
    queue.put_nowait("a", "x", 50)

    async def blocked_put() -> None:
        with pytest.raises(anyio.ClosedResourceError):
            await queue.put("b", "y", 1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_put)
        await trio.testing.wait_all_tasks_blocked()
        queue.close()
    assert (len(queue), queue.queued_bytes) == (0, 0)
    with pytest.raises(anyio.EndOfStream):
        queue.get_nowait()


@pytest.mark.trio
async def test_drop_forgets_a_source_and_lets_the_next_waiter_in() -> None:
    queue: FairQueue[str] = FairQueue(2, 100)
    queue.put_nowait("gone", "g0", 1)
    queue.put_nowait("kept", "k0", 1)
    outcomes: dict[str, str] = {}

    async def put(key: str, item: str) -> None:
        try:
            await queue.put(key, item, 1)
            outcomes[item] = "admitted"
        except anyio.ClosedResourceError:
            outcomes[item] = "refused"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put, "gone", "g1")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(put, "kept", "k1")
        await trio.testing.wait_all_tasks_blocked()
        assert queue.drop("gone") == 1
    assert outcomes == {"g1": "refused", "k1": "admitted"}
    assert drain(queue) == ["k0", "k1"]


@pytest.mark.trio
async def test_a_cancelled_put_leaves_no_trace_and_unblocks_those_behind() -> None:
    queue: FairQueue[str] = FairQueue(1, 100)
    queue.put_nowait("a", "x", 100)
    admitted: list[str] = []
    big_scope = trio.CancelScope()

    async def put(key: str, item: str, size: int) -> None:
        await queue.put(key, item, size)
        admitted.append(item)

    async def big() -> None:
        with big_scope:
            await put("big", "b", 100)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(big)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(put, "small", "s", 1)
        await trio.testing.wait_all_tasks_blocked()
        big_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert queue.get_nowait() == "x"
    assert admitted == ["s"]
    assert drain(queue) == ["s"]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_items"):
        FairQueue(0, 1)

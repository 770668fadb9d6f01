"""bind_running_loop: the transport's cached clock and event class agree with anyio."""

from __future__ import annotations

import asyncio

import anyio
import pytest
import trio
import trio.testing

from moonpool.transport._loop_bindings import bind_running_loop


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.mark.anyio
async def test_clock_agrees_with_anyio() -> None:
    loop = bind_running_loop()
    before = anyio.current_time()
    now = loop.now()
    after = anyio.current_time()
    assert before <= now <= after
    await anyio.sleep(0.01)
    assert loop.now() >= now + 0.01


@pytest.mark.anyio
async def test_event_wakes_its_waiter() -> None:
    event = bind_running_loop().new_event()
    assert not event.is_set()

    async def wake_later() -> None:
        await anyio.sleep(0.01)
        event.set()

    async with anyio.create_task_group() as group:
        group.start_soon(wake_later)
        with anyio.fail_after(5):
            await event.wait()
    assert event.is_set()
    event.set()  # setting twice is harmless
    with anyio.fail_after(5):
        await event.wait()  # already set: returns at once


@pytest.mark.anyio
async def test_cancelled_wait_leaves_the_event_usable() -> None:
    event = bind_running_loop().new_event()
    with anyio.move_on_after(0.01) as scope:
        await event.wait()
    assert scope.cancelled_caught
    assert not event.is_set()
    event.set()  # a set after the cancelled wait is not lost
    assert event.is_set()
    with anyio.fail_after(5):
        await event.wait()

    other = bind_running_loop().new_event()
    with anyio.move_on_after(0.01):
        await other.wait()

    async def wait_for_other() -> None:
        await other.wait()  # an awaitable, not necessarily a coroutine function

    with anyio.fail_after(5):  # and a fresh wait after a cancelled one still wakes
        async with anyio.create_task_group() as group:
            group.start_soon(wait_for_other)
            await anyio.sleep(0.01)
            other.set()
    assert other.is_set()


@pytest.mark.anyio
async def test_waiting_on_a_set_event_still_notices_cancellation() -> None:
    event = bind_running_loop().new_event()
    event.set()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await event.wait()
        pytest.fail("wait() on a set event in a cancelled scope should raise Cancelled")
    assert scope.cancelled_caught


def test_asyncio_clock_is_the_loops() -> None:
    async def main() -> None:
        assert bind_running_loop().now == asyncio.get_running_loop().time

    asyncio.run(main())


def test_trio_clock_follows_a_mock_clock() -> None:
    """In a simulation the bound clock is the MockClock: virtual time, not wall time."""
    clock = trio.testing.MockClock()
    seen: list[float] = []

    async def main() -> None:
        loop = bind_running_loop()
        seen.append(loop.now())
        clock.jump(1234.5)
        seen.append(loop.now())
        seen.append(trio.current_time())

    trio.run(main, clock=clock)
    assert seen == [0.0, 1234.5, 1234.5]


def test_outside_an_event_loop_is_an_error() -> None:
    with pytest.raises(Exception, match="async"):
        bind_running_loop()

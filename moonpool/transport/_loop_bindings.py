"""Shortcuts to the running event loop's clock and cheapest one-shot event.

``anyio.Event()`` and ``anyio.current_time()`` find the running async library on
every call (sniffio, then a backend lookup), and anyio's event wraps the
backend's own.  A ``get_reply`` makes one event and reads the clock once, so those
layers were a measurable part of a round trip.  The library cannot change while
a transport is open, so the transport binds both when it is entered:

* ``now``: the loop's clock -- trio's (a simulation's ``MockClock`` included) or
  asyncio's ``loop.time``, exactly what ``anyio.current_time()`` returns;
* ``new_event``: an :class:`OneShotEvent` -- a ``trio.Event`` on trio, a bare
  future on asyncio (:class:`FutureEvent`); cancellation works as with anyio's
  event, since anyio cancels a task by cancelling what it awaits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol, final

import anyio
import anyio.lowlevel
import sniffio

__all__ = ["FutureEvent", "LoopBindings", "OneShotEvent", "bind_running_loop"]


class OneShotEvent(Protocol):
    """The part of ``anyio.Event`` the transport uses."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[None]: ...


@final
class FutureEvent:
    """A one-shot event on asyncio for a single waiter: one future, no waiter list.

    ``asyncio.Event`` (which anyio's wraps) keeps a deque of futures and looks up
    the loop on every ``wait``.  Here a cancelled ``wait`` cancels the future; the
    event is then simply not set, and the next ``set`` or ``wait`` starts a fresh
    future.  Only one task may wait at a time (a cancelled waiter would cancel
    the others' wait too): the transport's waiters each have their own event.
    """

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        future = self._future
        if future.cancelled():
            future = self._future = future.get_loop().create_future()
        if not future.done():
            future.set_result(None)

    def is_set(self) -> bool:
        future = self._future
        return future.done() and not future.cancelled()

    def wait(self) -> Awaitable[None]:
        """The future itself, not a coroutine around it: a call in flight keeps one
        object less alive for the cyclic GC to scan."""
        future = self._future
        if future.done():
            if not future.cancelled():
                return anyio.lowlevel.checkpoint()  # set already: still a checkpoint
            future = self._future = future.get_loop().create_future()
        return future


class LoopBindings(NamedTuple):
    """Callables valid for the event loop that was running when they were bound."""

    new_event: Callable[[], OneShotEvent]
    now: Callable[[], float]


def bind_running_loop() -> LoopBindings:
    """Bind to the running event loop; call from inside it."""
    library = sniffio.current_async_library()
    if library == "trio":
        import trio

        return LoopBindings(trio.Event, trio.current_time)
    if library == "asyncio":
        loop = asyncio.get_running_loop()
        return LoopBindings(lambda: FutureEvent(loop), loop.time)
    return LoopBindings(anyio.Event, anyio.current_time)  # another backend: no shortcut

"""A task group for a resource's background tasks that does not cancel its user.

A transport needs tasks (peers, timers, connections) that live as long as the
``async with`` block using it.  Opening a task group directly in ``__aenter__``
would put the user's block *inside* that group's cancel scope, so closing the
transport from another task would cancel the user's code too.  Instead one child
task hosts an inner task group for the background work; cancelling the inner
group stops the background work only, while errors in it still propagate to the
``async with`` block (structured concurrency keeps its guarantees).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVarTuple, final

import anyio
import anyio.abc

__all__ = ["BackgroundTasks"]

PosArgs = TypeVarTuple("PosArgs")


@final
class BackgroundTasks:
    def __init__(self) -> None:
        self._outer: anyio.abc.TaskGroup | None = None
        self._inner: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> BackgroundTasks:
        outer = anyio.create_task_group()
        await outer.__aenter__()
        self._outer = outer
        try:
            self._inner = await outer.start(self._host, name="moonpool background tasks")
        except BaseException as exc:
            await outer.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _host(self, *, task_status: anyio.abc.TaskStatus[anyio.abc.TaskGroup]) -> None:
        async with anyio.create_task_group() as inner:
            task_status.started(inner)
            await anyio.sleep_forever()

    def start_soon(
        self,
        fn: Callable[[*PosArgs], Coroutine[Any, Any, Any]],
        *args: *PosArgs,
        name: object = None,
    ) -> None:
        if self._inner is None:
            raise RuntimeError("background task group is not running")
        self._inner.start_soon(fn, *args, name=name)

    def cancel(self) -> None:
        """Stop every background task (callable from any task)."""
        if self._inner is not None:
            self._inner.cancel_scope.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.cancel()
        outer, self._outer = self._outer, None
        assert outer is not None
        try:
            return bool(await outer.__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as group:
            # An error from the user's own block should come out as itself, as it
            # would from any resource, not wrapped because we happen to host tasks.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                # Re-raised as it came, chaining included (`from None` alone would
                # drop its __cause__: a BindFailed would lose the OSError behind it).
                cause, context = exc.__cause__, exc.__context__
                suppress = exc.__suppress_context__
                try:
                    raise exc from None
                finally:
                    exc.__cause__, exc.__context__ = cause, context
                    exc.__suppress_context__ = suppress
            raise

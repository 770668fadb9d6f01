"""A server process's usual frame, for simulation tests: bind, serve, and close the
server when the process is told to shut down (so that ``async for`` ends)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from moonpool.sim import ProcessContext
from moonpool.transport import ServerTransport


async def serve_until_shutdown(
    ctx: ProcessContext, body: Callable[[ServerTransport[Any]], Awaitable[None]], **options: Any
) -> None:
    """Run ``body(server)`` on a server at ``ctx.address`` until shutdown closes it."""
    async with ServerTransport.bind(ctx.network, ctx.address, **options) as server:
        async with anyio.create_task_group() as group:

            async def stop() -> None:
                await ctx.shutdown.wait()
                await server.aclose()

            group.start_soon(stop)
            await body(server)
            group.cancel_scope.cancel()

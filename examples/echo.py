"""Echo over raw simulated byte streams: the smallest complete moonpool simulation.

A server process echoes whatever it receives; client workloads send random
payloads and check each echo, reconnecting whenever chaos refuses a connect or
resets a connection, or attrition crashes or reboots the server.

    python -m moonpool run examples/echo.py            # 100 seeds, chaos on
    python -m moonpool run examples/echo.py --seed 42  # replay one seed
"""

from __future__ import annotations

import anyio
import anyio.abc
import trio

from moonpool.sim import (
    Attrition,
    ChaosConfig,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    WorkloadContext,
    always,
    reachable,
)

ROUNDS = 20
STREAM_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


async def _echo_connection(stream: anyio.abc.ByteStream) -> None:
    async with stream:
        try:
            while True:
                await stream.send(await stream.receive())
        except STREAM_ERRORS:
            pass


async def echo_server(ctx: ProcessContext) -> None:
    async with await ctx.network.listen(ctx.address) as listener, trio.open_nursery() as nursery:

        async def accept_forever() -> None:
            while True:
                nursery.start_soon(_echo_connection, await listener.accept())

        nursery.start_soon(accept_forever)
        await ctx.shutdown.wait()
        nursery.cancel_scope.cancel()


async def echo_client(ctx: WorkloadContext) -> None:
    server = ctx.peers["server"]
    done = 0
    while done < ROUNDS:
        try:
            stream = await ctx.network.connect(server)
        except OSError:
            reachable("echo client retries a failed connect")
            await trio.sleep(0.1)
            continue
        try:
            async with stream:
                while done < ROUNDS:
                    message = ctx.random.randbytes(ctx.random.randint(1, 4096))
                    await stream.send(message)
                    echoed = b""
                    while len(echoed) < len(message):
                        echoed += await stream.receive()
                    always(echoed == message, "echo returns exactly the bytes sent")
                    done += 1
        except STREAM_ERRORS:
            reachable("echo client survives a broken connection")


def simulation() -> SimulationBuilder:
    return (
        SimulationBuilder()
        .set_iteration_control(FixedCount(100))
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_attrition(Attrition(max_dead=1, interval=2.0))
        .register_process("server", echo_server)
        .register_workload("client", echo_client, count=2)
    )

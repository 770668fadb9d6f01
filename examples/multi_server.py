"""Three servers behind one ``ServerGroup``: load balancing and failover.

Three replica **processes** answer ``GET <n>`` with ``VALUE <n>``; three client
**workloads** each send their requests through a ``ServerGroup`` over all three,
and assert that every request is answered within its deadline -- while
attrition crashes and reboots one replica at a time, under network chaos and
buggify.  Coverage sites say that the load was spread fairly in some seeds
(attrition keeps a replica down for much of others) and that a rebooted replica
is found again: the group probes a failed server once a second.  The same
functions run

* in simulation (the default when the CLI runs this file)::

      python -m moonpool run examples/multi_server.py

* on real loopback TCP, on trio or asyncio (three replicas on free ports)::

      python examples/multi_server.py --real --backend asyncio --requests 5000
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc

from moonpool.net import Listener, NetworkProvider, RealNetwork
from moonpool.sim import (
    Attrition,
    ChaosConfig,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    WorkloadContext,
    always,
    sometimes,
)
from moonpool.transport import (
    ClientTransport,
    ServerGroup,
    ServerTransport,
    TransportError,
)

REPLICAS = 3
REQUESTS_PER_CLIENT = 30
DEADLINE = 30.0
#: "Fair": the least busy replica answered at least this share of an even split.
FAIR_SHARE = 0.5


async def replica(ctx: ProcessContext) -> None:
    """Answer requests until told to shut down (a reboot, or the end of the run)."""
    served: Counter[str] = ctx.state.setdefault("served", Counter())
    async with ServerTransport.bind(ctx.network, ctx.address) as server:

        async def stop() -> None:
            await ctx.shutdown.wait()
            await server.aclose()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stop)
            async for request in server:
                served[ctx.name] += 1
                sometimes(ctx.incarnation > 0, "a rebooted replica answers a request")
                _, _, n = request.payload.partition(b" ")
                with contextlib.suppress(TransportError):  # its client is gone: it resends
                    server.send_reply(request, b"VALUE " + n)


class Client:
    """Requests through one ServerGroup; every one must be answered in time."""

    async def run(self, ctx: WorkloadContext) -> None:
        servers = sorted(address for name, address in ctx.peers.items() if name.startswith("r"))
        async with ClientTransport(ctx.network) as client:
            group = ServerGroup(client, servers)
            for n in range(REQUESTS_PER_CLIENT):
                error: TransportError | None = None
                try:
                    reply = await group.get_reply(b"GET %d" % n, timeout=DEADLINE)
                except TransportError as exc:
                    reply, error = b"", exc
                always(error is None, "every request is answered within its deadline", error=error)
                always(reply == b"VALUE %d" % n, "every reply answers its own request")
                await anyio.sleep(ctx.random.uniform(0.0, 0.3))

    async def check(self, ctx: WorkloadContext) -> None:
        served: Counter[str] = ctx.state.get("served", Counter())
        names = [f"replica-{i}" for i in range(REPLICAS)]
        even = sum(served.values()) / REPLICAS
        sometimes(
            min(served[name] for name in names) >= FAIR_SHARE * even,
            "every replica answered a fair share",
            served=dict(served),
        )


def simulation() -> SimulationBuilder:
    return (
        SimulationBuilder()
        .set_iteration_control(FixedCount(50))
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_attrition(Attrition(max_dead=1, interval=2.0))
        .register_process("replica", replica, count=REPLICAS)
        .register_workload("client", Client, count=3)
    )


# -- the same replicas on real TCP -----------------------------------------------------


class RecordingNetwork:
    """A network provider that remembers where each listener ended up (port 0)."""

    def __init__(self, network: NetworkProvider, expected: int) -> None:
        self._network = network
        self.addresses: list[str] = []
        self._expected = expected
        self.all_listening = anyio.Event()

    async def connect(self, address: str) -> anyio.abc.ByteStream:
        return await self._network.connect(address)

    async def listen(self, address: str) -> Listener:
        listener = await self._network.listen(address)
        self.addresses.append(listener.address)
        if len(self.addresses) == self._expected:
            self.all_listening.set()
        return listener


async def run_real(requests: int, concurrency: int) -> tuple[float, Counter[str]]:
    """Three replicas on 127.0.0.1, ``requests`` through one ServerGroup."""
    network = RecordingNetwork(RealNetwork(), REPLICAS)
    shutdown = anyio.Event()
    state: dict[str, Any] = {}
    async with anyio.create_task_group() as servers:
        for i in range(REPLICAS):
            ctx = ProcessContext(
                name=f"replica-{i}",
                address="127.0.0.1:0",
                peers={},
                network=network,
                random=random.Random(),
                shutdown=shutdown,
                state=state,
            )
            servers.start_soon(replica, ctx)
        with anyio.fail_after(10):
            await network.all_listening.wait()
        try:
            async with ClientTransport(network) as client:
                group = ServerGroup(client, network.addresses)
                numbers = iter(range(requests))

                async def worker() -> None:
                    for n in numbers:
                        reply = await group.get_reply(b"GET %d" % n, timeout=5)
                        if reply != b"VALUE %d" % n:
                            raise AssertionError(f"request {n} was answered with {reply!r}")

                started = time.perf_counter()
                async with anyio.create_task_group() as workers:
                    for _ in range(concurrency):
                        workers.start_soon(worker)
                seconds = time.perf_counter() - started
        finally:
            shutdown.set()
    return requests / seconds, state["served"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", action="store_true", help="run on real loopback TCP")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    if not args.real:
        report = simulation().run()
        print(report)
        return 0 if report.ok else 1
    rate, served = anyio.run(run_real, args.requests, args.concurrency, backend=args.backend)
    spread = ", ".join(f"{name} {count}" for name, count in sorted(served.items()))
    print(f"[{args.backend}] {args.requests} requests over {REPLICAS} replicas: {rate:,.0f}/s")
    print(f"  spread: {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

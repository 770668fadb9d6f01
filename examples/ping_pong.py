"""Ping-pong over the moonpool transport: one program, simulated or on real TCP.

A server **process** answers every ``PING <client> <n>`` with ``PONG <client> <n>``;
client **workloads** send pings, check that each pong answers its own ping, and
retry pings that time out or lose their connection -- also while the server is
crashed or rebooting -- and assert that *every* ping of *every* client is
answered within its deadline.  The same functions run

* in simulation, under network chaos, buggify and attrition (the server is
  crashed and rebooted while the clients run; the default when the CLI runs
  this file)::

      python -m moonpool run examples/ping_pong.py
      python -m moonpool run examples/ping_pong.py --seed 1234

* on real loopback TCP, on trio or asyncio::

      python examples/ping_pong.py --real --backend asyncio --requests 10000
      python examples/ping_pong.py --real --backend trio --requests 20000 --concurrency 100

  The real run starts ``ping_server`` -- the very function the simulation runs --
  on ``127.0.0.1`` (port 0: the kernel picks a free port), then sends the pings from
  ``--concurrency`` tasks sharing *one* ``ClientTransport``: K ``get_reply`` calls
  in flight on one TCP connection, told apart by correlation id, which is the
  transport's job.  Every pong is checked; the run prints requests/s and latency
  percentiles and exits 0, or 1 if any request failed or got a wrong answer.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

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
    buggify_with_prob,
    sometimes,
)
from moonpool.transport import (
    ClientTransport,
    ConnectionFailed,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    SendQueueFull,
    ServerTransport,
    TransportClosed,
    TransportError,
    TransportTimeout,
)

PINGS_PER_CLIENT = 20
PING_TIMEOUT = 1.0
# Simulated seconds within which every ping must be answered, however often it is
# retried: long enough to ride out a partition, a reboot and its recovery delay.
PING_DEADLINE = 60.0
# Up to this many seconds between a client's pings: in simulation it spreads the run
# phase over a few simulated seconds, so that attrition strikes while clients run.
PING_PAUSE = 0.5
MAX_IN_FLIGHT = 256


async def ping_server(ctx: ProcessContext) -> None:
    """Answer pings until this process is told to shut down (a reboot, or the end)."""
    async with ServerTransport.bind(ctx.network, ctx.address) as server:

        async def close_on_shutdown() -> None:
            await ctx.shutdown.wait()
            await server.aclose()

        async def answer(request: ReceivedEnvelope[RequestResponseEnvelope]) -> None:
            kind, _, rest = request.payload.partition(b" ")
            always(kind == b"PING", "the server only ever receives pings")
            sometimes(ctx.incarnation > 0, "a rebooted server answers a ping")
            slow = buggify_with_prob(0.05)
            sometimes(slow, "a request is slower than the ping timeout")
            if slow:
                # A slow request (GC pause, busy disk): longer than the ping timeout.
                # Each request has its own task, so it delays nobody else -- handled
                # in line, one slow request per burst would time out all the others,
                # their retries would queue behind it, and the server would never
                # catch up (the simulation found that metastable failure).
                await anyio.sleep(ctx.random.uniform(1.0, 2.0))
            try:
                server.send_reply(request, b"PONG " + rest)
            except ConnectionFailed:
                # The client's connection went away first (a reset, or it gave up):
                # it will retry.  Rare -- about 1 seed in 150 -- so not a coverage
                # site: the simulation would report it missed in most 100-seed runs.
                pass
            except SendQueueFull:
                pass  # a client that does not read its pongs loses them, nobody else
            except TransportClosed:
                pass  # shutting down
            finally:
                in_flight.release()

        # At most this many requests are answered at once; past it, the server stops
        # reading new requests and TCP pushes back on the clients.
        in_flight = anyio.Semaphore(MAX_IN_FLIGHT)
        async with anyio.create_task_group() as group:
            group.start_soon(close_on_shutdown)
            async for request in server:
                await in_flight.acquire()
                group.start_soon(answer, request)


async def ping(transport: ClientTransport, ctx: WorkloadContext, server: str, n: int) -> bool:
    """One ping, retried until it is answered; False if its deadline passed first."""
    message = f"PING {ctx.name} {n}".encode()
    timeouts = lost = 0
    deadline = anyio.current_time() + PING_DEADLINE
    while (left := deadline - anyio.current_time()) > 0:
        try:
            # At most once, and this loop retries: a ping is safe to repeat, and
            # the loop shows each failure (get_reply would resend it by itself).
            reply = await transport.try_get_reply(server, message, timeout=min(PING_TIMEOUT, left))
        except TransportTimeout:
            timeouts += 1
            continue
        except ConnectionFailed:  # MaybeDelivered too: it may have arrived; no matter
            lost += 1
            await anyio.sleep(ctx.random.uniform(0.01, 0.2))
            continue
        always(reply == b"PONG" + message[4:], "every pong answers its own ping")
        # Evaluated on every ping, so each site is known from the first seed on and
        # UntilAllSometimesReached keeps going until chaos has made each one true.
        sometimes(timeouts > 0, "a ping times out and is retried")
        sometimes(lost > 0, "a ping loses its connection and is retried")
        sometimes(timeouts > 0 and lost > 0, "a ping both times out and loses its connection")
        sometimes(timeouts + lost >= 5, "a ping is answered after five or more attempts")
        return True
    return False


async def ping_client(ctx: WorkloadContext) -> None:
    """Ping the server ``PINGS_PER_CLIENT`` times, at a human pace, through every fault."""
    server = ctx.peers["server"]
    async with ClientTransport(ctx.network) as transport:
        for n in range(PINGS_PER_CLIENT):
            answered = await ping(transport, ctx, server, n)
            always(answered, "every ping of every client is answered within its deadline")
            await anyio.sleep(ctx.random.uniform(0.0, PING_PAUSE))


def simulation() -> SimulationBuilder:
    """The chaos simulation the README's main command runs."""
    return (
        SimulationBuilder()
        .set_iteration_control(FixedCount(100))
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_attrition(
            Attrition(max_dead=1, interval=3.0, crash=1.0, reboot=1.0, recovery=(0.5, 3.0))
        )
        .register_process("server", ping_server)
        .register_workload("client", ping_client, count=2)
    )


# -- the same server on real TCP ----------------------------------------------------


class AnnouncingNetwork:
    """A network provider that tells the caller where its server ended up listening.

    ``ping_server`` binds ``ctx.address`` itself; on real TCP that address says port
    0 (any free port), so the load generator needs the port the kernel chose.  This
    wrapper records it without changing a line of the workload.
    """

    def __init__(self, network: NetworkProvider) -> None:
        self._network = network
        self.address = ""
        self.listening = anyio.Event()

    async def connect(self, address: str) -> anyio.abc.ByteStream:
        return await self._network.connect(address)

    async def listen(self, address: str) -> Listener:
        listener = await self._network.listen(address)
        self.address = listener.address
        self.listening.set()
        return listener


class WrongReply(AssertionError):
    """The server answered a ping with something other than its pong."""


class RealRun:
    """What a real-network run measured."""

    def __init__(self, server: str, requests: int, concurrency: int) -> None:
        self.server = server
        self.requests = requests
        self.concurrency = concurrency
        self.seconds = 0.0
        self.latencies: list[float] = []  # seconds, one per answered ping
        self.error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.latencies) == self.requests

    def percentiles(self) -> dict[str, float]:
        """Nearest-rank latency percentiles, in seconds (empty if nothing was answered)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return {}
        return {
            name: ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
            for name, fraction in PERCENTILES
        }

    def header(self) -> str:
        return (
            f"ping-pong on real TCP: server {self.server}, {self.requests} requests, "
            f"{self.concurrency} in flight over one ClientTransport"
        )

    def summary(self) -> str:
        answered = len(self.latencies)
        lines = [
            f"  {answered} pongs checked in {self.seconds:.3f} s: "
            f"{answered / self.seconds if self.seconds > 0 else 0.0:,.0f} requests/s",
        ]
        if answered:
            lines.append(
                "  latency "
                + "  ".join(f"{name} {s * 1e3:.3f} ms" for name, s in self.percentiles().items())
            )
        if self.error is not None:
            lines.append(f"  FAILED: {type(self.error).__name__}: {self.error}")
        return "\n".join(lines)


PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))


async def ping_load(
    network: NetworkProvider,
    server: str,
    requests: int,
    concurrency: int,
    timeout: float,
    announce: Callable[[RealRun], None] | None = None,
) -> RealRun:
    """``requests`` pings, ``concurrency`` at a time, over one ``ClientTransport``.

    The first failure (a transport error or a wrong pong) stops the run: on loopback
    nothing should fail, so there is nothing to retry -- unlike under simulated chaos.
    """
    run = RealRun(server, requests, concurrency)
    if announce is not None:
        announce(run)
    numbers = iter(range(requests))  # shared by the workers: each takes the next number

    async with ClientTransport(network, timeout=timeout) as transport:

        async def worker() -> None:
            for n in numbers:
                if run.error is not None:
                    return
                message = f"PING real {n}".encode()
                started = time.perf_counter()
                try:
                    reply = await transport.get_reply(server, message)
                except TransportError as exc:
                    run.error = run.error or exc
                    return
                run.latencies.append(time.perf_counter() - started)
                if reply != b"PONG" + message[4:]:
                    run.error = run.error or WrongReply(f"{message!r} was answered with {reply!r}")
                    return

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(max(1, min(concurrency, requests))):
                group.start_soon(worker)
        run.seconds = time.perf_counter() - started
    return run


async def run_real(
    requests: int,
    concurrency: int,
    *,
    host: str = "127.0.0.1",
    timeout: float = 5.0,
    announce: Callable[[RealRun], None] | None = None,
) -> RealRun:
    """Start ``ping_server`` on ``host`` (a free port), ping it, shut it down."""
    network = AnnouncingNetwork(RealNetwork())
    shutdown = anyio.Event()
    server = ProcessContext(
        name="server",
        address=f"{host}:0",
        peers={},
        network=network,
        random=random.Random(),
        shutdown=shutdown,
    )
    async with anyio.create_task_group() as group:
        group.start_soon(ping_server, server)
        try:
            with anyio.fail_after(10):
                await network.listening.wait()
            run = await ping_load(
                network, network.address, requests, concurrency, timeout, announce
            )
        finally:
            shutdown.set()  # ping_server closes its ServerTransport and returns
    return run


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


async def until_ctrl_c(run: Callable[[], Awaitable[RealRun]]) -> RealRun | None:
    """``await run()``, or ``None`` if Ctrl-C came first.

    Ctrl-C becomes a cancellation: everything winds down through its ``finally``
    blocks and ``async with`` exits, as on any cancellation.  Left to Python's
    default handler it is a ``KeyboardInterrupt`` raised at whatever line is
    running, which can be inside trio's own bookkeeping (``Nursery.start_soon``
    is not protected against it) and then crashes the run with
    ``TrioInternalError`` -- trio's docs recommend exactly this for programs
    that must shut down cleanly.  The watcher keeps reading signals until the
    wind-down is over, so an impatient second Ctrl-C lands here too (trio would
    re-raise a signal left unread when the receiver closes).
    """
    result: RealRun | None = None
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as watching:
            work = anyio.CancelScope()

            async def cancel_on_ctrl_c() -> None:
                async for _ in signals:
                    work.cancel()

            watching.start_soon(cancel_on_ctrl_c)
            with work:
                result = await run()
            watching.cancel_scope.cancel()
    return result


def _interrupted(exc: BaseException) -> bool:
    """True for Ctrl-C, also when a task group wrapped it in an exception group."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Ping-pong over the moonpool transport. Without --real, run the chaos "
        "simulation (like 'python -m moonpool run examples/ping_pong.py').",
    )
    parser.add_argument("--real", action="store_true", help="run on real loopback TCP")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument("--requests", type=_positive_int, default=10_000, metavar="N")
    parser.add_argument(
        "--concurrency", type=_positive_int, default=64, metavar="K", help="pings in flight"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=5.0,
        help="seconds to wait for each pong (default 5)",
    )
    args = parser.parse_args(argv)
    if not args.real:
        report = simulation().run()
        print(report)
        return 0 if report.ok else 1

    def announce(run: RealRun) -> None:
        print(f"[{args.backend}] {run.header()}", flush=True)

    real = functools.partial(
        run_real, args.requests, args.concurrency, timeout=args.timeout, announce=announce
    )
    try:
        run = anyio.run(until_ctrl_c, real, backend=args.backend)
        if run is not None:
            print(run.summary())
            return 0 if run.ok else 1
    except BaseException as exc:
        if not _interrupted(exc):  # Ctrl-C outside until_ctrl_c: before or after the run
            raise
    print("\ninterrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    status = main()
    # Done: a late Ctrl-C must not turn the exit into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)

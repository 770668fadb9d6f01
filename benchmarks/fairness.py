"""How much one greedy pipelining client slows the other clients of a server.

On real loopback TCP, one ``ServerTransport`` echo server has four *polite*
clients, each its own ``ClientTransport`` (its own connection), each calling
``get_reply`` with 64 bytes one call at a time and timing every call.  In the
"with greedy" runs a fifth client, its own ``ClientTransport`` too, keeps 512
``get_reply`` calls in flight the whole time (512 tasks looping), with 64 B or
4 KiB payloads.  The figures are the polite calls' p50 and p99 latency with
the greedy neighbour (moonpool's value) against the same server and clients
without it (the baseline): ``ratio`` is the slowdown the neighbour causes, so
lower is better.  1.0x would mean the neighbour costs the others nothing; as the
greedy client's own work shares the event loop (below), even a perfectly fair
server stays somewhat above that.  The greedy client's throughput is recorded in
each figure's details: a server must not become "fair" by starving it.

Both server application styles are measured -- ``async for request in server:
await request.reply(request.payload)`` in one task, and ``await
server.serve(handler)`` with a handler returning ``request.payload`` -- on trio
and on asyncio (through anyio).  Everything runs in one process and one event
loop, like ``real_tcp``: the greedy client's own work shares the loop with the
server and the polite clients.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import anyio

from benchmarks._core import FULL, QUICK, Figure, Outcome, Settings, median
from moonpool.net import RealNetwork
from moonpool.transport import ClientTransport, ConnectionFailed, ReceivedEnvelope, ServerTransport

NAME: Final = "fairness"
DESCRIPTION: Final = (
    "polite clients' get_reply latency beside one greedy pipelining client, on loopback "
    "TCP (trio, asyncio)"
)

HOST: Final = "127.0.0.1"
KiB: Final = 1024
#: Most the greedy neighbour may multiply the polite clients' median latency by.
P50_TARGET: Final = 4.0

POLITE_CLIENTS: Final = 4
POLITE_PAYLOAD: Final = 64
GREEDY_IN_FLIGHT: Final = 512
GREEDY_PAYLOADS: Final = (64, 4 * KiB)
#: Polite clients run for this long per sample, in milliseconds at scale 1.0 ...
WINDOW_MS: Final = 500
#: ... and each makes at least this many calls (at scale 1.0), however slow they are.
MIN_CALLS: Final = 10

#: Per get_reply: a lost reply fails the call (and the run) instead of waiting.
CALL_TIMEOUT: Final = 20.0
#: The polite clients start once every greedy task has had a reply, or after this.
RAMP_LIMIT: Final = 0.5
#: After the polite window, the greedy calls in flight get this long to finish.
DRAIN_LIMIT: Final = 5.0
#: Per sample, set-up and tear-down included: nothing can hang for longer.
SAMPLE_TIMEOUT: Final = 60.0

BACKENDS: Final = ("trio", "asyncio")


# -- the two server application styles -----------------------------------------------


async def _serve_async_for(server: ServerTransport[Any]) -> None:
    async for request in server:
        # ConnectionFailed: its client has gone (tear-down), nobody to answer.
        with suppress(ConnectionFailed):
            await request.reply(request.payload)


async def _echo(request: ReceivedEnvelope[Any]) -> bytes:
    return request.payload


async def _serve_handler(server: ServerTransport[Any]) -> None:
    await server.serve(_echo)


@dataclass(frozen=True, slots=True)
class Style:
    label: str
    run: Callable[[ServerTransport[Any]], Coroutine[Any, Any, None]]


STYLES: Final = (
    Style("async for + reply", _serve_async_for),
    Style("serve(handler)", _serve_handler),
)


# -- one sample --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    window: float  # seconds the polite clients run for (at least)
    min_calls: int  # calls each polite client makes (at least)


@dataclass(slots=True)
class Run:
    """What one sample measured."""

    latencies: list[float] = field(default_factory=list)  # seconds, every polite call
    window: float = 0.0  # seconds from the polite clients' start to the last one's end
    greedy_calls: int = 0  # greedy replies received during that window
    greedy_ramp: int = 0  # greedy replies before it (>= GREEDY_IN_FLIGHT unless RAMP_LIMIT hit)

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile of the polite latencies, in milliseconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            raise AssertionError("no polite call was timed")
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1] * 1e3

    @property
    def polite_rate(self) -> float:
        return len(self.latencies) / self.window if self.window > 0 else 0.0

    @property
    def greedy_rate(self) -> float:
        return self.greedy_calls / self.window if self.window > 0 else 0.0


class _Greedy:
    """``GREEDY_IN_FLIGHT`` tasks, each calling ``get_reply`` again as soon as it returns."""

    def __init__(self, client: ClientTransport, address: str, size: int) -> None:
        self.client = client
        self.address = address
        self.payload = bytes(size)
        self.completed = 0
        self.stopping = False
        # Set once as many calls have completed as are in flight: every task has
        # had a round trip, the start-up burst is over.
        self.steady = anyio.Event()

    async def worker(self) -> None:
        get_reply, address, payload = self.client.get_reply, self.address, self.payload
        while not self.stopping:
            if len(await get_reply(address, payload)) != len(payload):
                raise AssertionError("wrong greedy reply")
            self.completed += 1
            if self.completed == GREEDY_IN_FLIGHT:
                self.steady.set()


async def _polite(
    client: ClientTransport, address: str, until: float, min_calls: int, into: list[float]
) -> None:
    get_reply, payload, clock = client.get_reply, bytes(POLITE_PAYLOAD), time.perf_counter
    calls = 0
    while calls < min_calls or clock() < until:
        started = clock()
        reply = await get_reply(address, payload)
        into.append(clock() - started)
        if len(reply) != POLITE_PAYLOAD:
            raise AssertionError("wrong polite reply")
        calls += 1


async def _clients(
    network: RealNetwork, address: str, greedy_size: int | None, timing: Timing
) -> Run:
    run = Run()
    async with AsyncExitStack() as stack:
        polite = [
            await stack.enter_async_context(ClientTransport(network, timeout=CALL_TIMEOUT))
            for _ in range(POLITE_CLIENTS)
        ]
        greedy: _Greedy | None = None
        if greedy_size is not None:
            client = await stack.enter_async_context(ClientTransport(network, timeout=CALL_TIMEOUT))
            greedy = _Greedy(client, address, greedy_size)
        for each in polite if greedy is None else [*polite, greedy.client]:
            await each.get_reply(address, b"connect")  # connections open before timing
        async with anyio.create_task_group() as load:
            if greedy is not None:
                for _ in range(GREEDY_IN_FLIGHT):
                    load.start_soon(greedy.worker)
                # Bounded, so that a server starving the greedy client cannot stretch
                # the run: the polite clients then start after RAMP_LIMIT.
                with anyio.move_on_after(RAMP_LIMIT):
                    await greedy.steady.wait()
                run.greedy_ramp = greedy.completed
            before = 0 if greedy is None else greedy.completed
            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                for each in polite:
                    group.start_soon(
                        _polite,
                        each,
                        address,
                        started + timing.window,
                        timing.min_calls,
                        run.latencies,
                    )
            run.window = time.perf_counter() - started
            if greedy is not None:
                run.greedy_calls = greedy.completed - before
                # Each task ends after the call it has in flight; whatever is still
                # waiting after DRAIN_LIMIT is cancelled.
                greedy.stopping = True
                load.cancel_scope.deadline = anyio.current_time() + DRAIN_LIMIT
    return run


async def _sample(style: Style, greedy_size: int | None, timing: Timing) -> Run:
    """A fresh server and fresh clients; set-up and tear-down are not timed."""
    network = RealNetwork()
    with anyio.fail_after(SAMPLE_TIMEOUT):
        async with ServerTransport.bind(network, f"{HOST}:0") as server:
            async with anyio.create_task_group() as group:
                group.start_soon(style.run, server)
                try:
                    run = await _clients(network, server.address, greedy_size, timing)
                finally:
                    await server.aclose()  # ends async for / serve()
    return run


async def _interleave(
    samplers: Sequence[Callable[[], Awaitable[Run]]], settings: Settings
) -> list[list[Run]]:
    """Like :func:`benchmarks._core.compare_many_async`, for samples that are not one
    float: round by round, every sampler once, the order alternating; the first
    ``warmup`` rounds are dropped."""
    kept: list[list[Run]] = [[] for _ in samplers]
    gc.collect()
    for index in range(settings.rounds):
        order = list(zip(samplers, kept, strict=True))
        if index % 2:
            order.reverse()
        for sample, into in order:
            gc.collect(1)
            run = await sample()
            if index >= settings.warmup:
                into.append(run)
    return kept


# -- figures -----------------------------------------------------------------------


def _size(size: int) -> str:
    return f"{size} B" if size < KiB else f"{size // KiB} KiB"


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}"


def _rates(values: Sequence[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def _figures(
    backend: str,
    style: Style,
    alone: list[Run],
    greedy_size: int,
    beside: list[Run],
    timing: Timing,
) -> list[Figure]:
    greedy_rates = [run.greedy_rate for run in beside]
    details: dict[str, Any] = {
        "backend": backend,
        "server_style": style.label,
        "polite_clients": POLITE_CLIENTS,
        "polite_payload_bytes": POLITE_PAYLOAD,
        "greedy_in_flight": GREEDY_IN_FLIGHT,
        "greedy_payload_bytes": greedy_size,
        "window_s": timing.window,
        "min_calls_per_polite_client": timing.min_calls,
        "greedy_req_per_s": median(greedy_rates),
        "greedy_req_per_s_samples": greedy_rates,
        "polite_req_per_s": median([run.polite_rate for run in beside]),
        "polite_req_per_s_alone": median([run.polite_rate for run in alone]),
        "greedy_replies_before_window": median([float(run.greedy_ramp) for run in beside]),
        "polite_calls_per_sample": median([float(len(run.latencies)) for run in beside]),
        "polite_calls_per_sample_alone": median([float(len(run.latencies)) for run in alone]),
    }
    prefix = f"{backend}, {style.label}: polite"
    beside_name = f"beside greedy {GREEDY_IN_FLIGHT} x {_size(greedy_size)}"
    return [
        Figure(
            f"{prefix} {label} {beside_name}",
            "ms",
            [run.percentile_ms(fraction) for run in beside],
            [run.percentile_ms(fraction) for run in alone],
            "same, no greedy client",
            target=target,
            higher_is_better=False,
            details={**details, "percentile": fraction},
        )
        for label, fraction, target in (("p50", 0.5, P50_TARGET), ("p99", 0.99, None))
    ]


async def _backend(backend: str, settings: Settings) -> list[Figure]:
    timing = Timing(
        window=settings.count(WINDOW_MS, minimum=80) / 1000,
        min_calls=settings.count(MIN_CALLS, minimum=3),
    )
    figures: list[Figure] = []
    for style in STYLES:
        sizes: list[int | None] = [None, *GREEDY_PAYLOADS]
        samplers = [partial(_sample, style, size, timing) for size in sizes]
        alone, *beside = await _interleave(samplers, settings)
        for size, runs in zip(GREEDY_PAYLOADS, beside, strict=True):
            figures += _figures(backend, style, alone, size, runs, timing)
    return figures


def _notes(figures: Sequence[Figure]) -> list[str]:
    notes = [
        "one process, one event loop per backend (trio; asyncio through anyio): the echo "
        "server, the polite clients and the greedy client all share it; 127.0.0.1 only",
        f"per sample: a fresh ServerTransport echo server, {POLITE_CLIENTS} polite clients "
        f"(each its own ClientTransport, so its own connection) calling get_reply with "
        f"{POLITE_PAYLOAD} B one at a time, each call timed with time.perf_counter; in the "
        f"'with greedy' samples one more ClientTransport keeps {GREEDY_IN_FLIGHT} get_reply "
        "calls in flight (that many tasks looping); the polite clients start once every "
        f"greedy task has had a reply (or after {RAMP_LIMIT:g} s)",
        "a sample's p50/p99: nearest-rank percentiles of every polite call of the sample "
        "(all clients pooled); the figure is the median over the samples; the polite "
        "clients run for a fixed window and make a minimum number of calls each (see "
        "details); set-up and tear-down are not timed",
        "rounds interleave the no-greedy sample and the greedy samples (the order "
        "alternating), after warm-up rounds; ratio = with greedy / without = the slowdown "
        f"the neighbour causes (lower is better); the p50 target is <= {P50_TARGET:g}x, p99 "
        "has none",
        "server styles: 'async for + reply' = one task doing async for request in server: "
        "await request.reply(request.payload); 'serve(handler)' = await server.serve(h) "
        "with h returning request.payload",
        "details.greedy_req_per_s: the greedy client's replies per second during the polite "
        "window (a fair server should not get there by starving it)",
    ]
    # _figures makes them in (p50, p99) pairs.
    for p50, p99 in zip(figures[::2], figures[1::2], strict=True):
        details = p50.details
        notes.append(
            f"{details['backend']}, {details['server_style']}, greedy {GREEDY_IN_FLIGHT} x "
            f"{_size(details['greedy_payload_bytes'])}: min-max of {len(p50.samples)} samples: "
            f"p50 {_span(p50.samples)} ms with greedy, {_span(p50.baseline_samples)} ms alone; "
            f"p99 {_span(p99.samples)} ms with greedy, {_span(p99.baseline_samples)} ms alone; "
            f"greedy {_rates(details['greedy_req_per_s_samples'])} req/s"
        )
    return notes


def run(settings: Settings) -> Outcome:
    figures: list[Figure] = []
    for backend in BACKENDS:
        figures += anyio.run(_backend, backend, settings, backend=backend)
    return Outcome(figures=figures, notes=_notes(figures))


if __name__ == "__main__":
    # ``python -m benchmarks.fairness [--quick]``: this benchmark alone, printed as
    # ``python -m benchmarks`` prints it (no JSON written).
    from benchmarks._runner import render_notes, render_table, run_benchmark

    result = run_benchmark(NAME, QUICK if "--quick" in sys.argv[1:] else FULL)
    print(render_table([result]))
    print(render_notes([result]))
    sys.exit(2 if result.error is not None else 0)

"""The same-shape ping-pong in moonpool and in detangle (an asyncio DST library on PyPI).

Both sides run one server and one client making ``ROUND_TRIPS`` sequential
request/reply exchanges of ``PAYLOAD_SIZE`` bytes with the same
``[u64 LE id][u32 LE len][payload]`` frames, once per seed (moonpool) or per run
(detangle), each a fresh simulation:

* **moonpool**: :func:`benchmarks.sim_echo.simulation` -- a ``SimulationBuilder``
  with one server process (``ServerTransport``, ``async for`` + ``reply``) and one
  workload calling ``ClientTransport.get_reply``, ``FixedCount`` seeds from a
  fixed base seed;
* **detangle**: ``detangle.explore(ping_pong, runs=N, seed=...)``, where
  ``ping_pong`` spawns the server on the simulated host ``"server"``
  (``asyncio.start_server``, 64 KiB reads, one write of the replies per read,
  exactly the raw loopback server of ``real_tcp``) and talks to it with
  ``asyncio.open_connection`` -- detangle serves both from its in-memory network.
  Shrinking and the example database are off (nothing fails, and the database
  would touch the disk).

The judged figure (target >= 1.0) runs each tool as it explores by default:
moonpool with ``ChaosConfig.default()`` + buggify, detangle with its default
``auto`` strategy portfolio (FIFO, PCT, random walk: task reordering) and its
default network (latency choices between 0.5 and 5 ms).  For information, a calm
pair: moonpool with ``ChaosConfig.none()``, buggify off; detangle with a random
walk, ``reorder=False`` (asyncio's own order) and zero latency.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from benchmarks._core import BenchmarkError, Figure, Outcome, Settings, interleave_sync, median
from benchmarks._frames import HEADER, RECEIVE_SIZE, FrameBuffer, asyncio_echo_handler, payload
from benchmarks.sim_echo import BASE_SEED, PAYLOAD_SIZE, Tally, check, simulation
from moonpool.sim import SimulationReport

NAME: Final = "vs_detangle"
DESCRIPTION: Final = (
    "10-round-trip ping-pong per seed: moonpool SimulationBuilder vs detangle.explore (asyncio DST)"
)

ROUND_TRIPS: Final = 10
#: moonpool seeds per sample at scale 1.0 ...
SEEDS: Final = 40
#: ... and detangle runs this many times as many (it is much faster per run).
DETANGLE_FACTOR: Final = 10
TARGET: Final = 1.0
PORT: Final = 4500
SERVER_HOST: Final = "server"


def _detangle() -> Any:
    # Imported by name: detangle is an optional dependency (moonpool[bench]), and the
    # type checker's environment need not have it.
    try:
        return importlib.import_module("detangle")
    except ImportError as exc:
        raise BenchmarkError(
            "detangle is not installed: pip install 'moonpool[bench]' (nox -s bench installs it)"
        ) from exc


# -- the detangle side ---------------------------------------------------------------


async def _server(ready: asyncio.Event) -> None:
    server = await asyncio.start_server(asyncio_echo_handler, SERVER_HOST, PORT)
    ready.set()
    async with server:
        await server.serve_forever()


def ping_pong(round_trips: int) -> Callable[[], Any]:
    """The coroutine function detangle explores: one server task on host ``server``,
    one client doing ``round_trips`` exchanges, every reply checked."""
    detangle = _detangle()
    body = payload(PAYLOAD_SIZE)

    async def main() -> int:
        ready = asyncio.Event()
        server = detangle.spawn(_server(ready), host=SERVER_HOST, name="server")
        await ready.wait()
        reader, writer = await asyncio.open_connection(SERVER_HOST, PORT)
        buffer, pack, size = FrameBuffer(), HEADER.pack, len(body)
        answered = 0
        for cid in range(round_trips):
            writer.write(pack(cid, size) + body)
            await writer.drain()
            got = 0
            while not got:
                got = buffer.take_in_order(await reader.read(RECEIVE_SIZE), cid)
            answered += got
        writer.close()
        await writer.wait_closed()
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        if answered != round_trips:
            raise AssertionError(f"{answered} of {round_trips} replies")
        return answered

    return main


@dataclass(frozen=True, slots=True)
class DetangleMode:
    label: str
    strategy: str
    options: dict[str, Any]


DEFAULT_MODE: Final = DetangleMode("auto strategy, default network", "auto", {})
CALM_MODE: Final = DetangleMode(
    "random walk, reorder=False, zero latency",
    "random",
    {"reorder": False, "net": {"latency": (0.0, 0.0)}},
)


@dataclass(slots=True)
class DetangleSide:
    mode: DetangleMode
    steps: list[int] = field(default_factory=list)

    def sampler(self, runs: int) -> Callable[[], float]:
        detangle = _detangle()
        main = ping_pong(ROUND_TRIPS)

        def sample() -> float:
            started = time.perf_counter()
            stats = detangle.explore(
                main,
                runs=runs,
                seed=BASE_SEED,
                strategy=self.mode.strategy,
                database=False,
                shrink=False,
                name="benchmarks.vs_detangle.ping_pong",
                **self.mode.options,
            )
            wall = time.perf_counter() - started
            if stats.runs != runs:
                raise BenchmarkError(f"detangle ran {stats.runs} of {runs} runs")
            self.steps.append(stats.total_steps)
            return runs / wall

        return sample


# -- the moonpool side -----------------------------------------------------------------


@dataclass(slots=True)
class MoonpoolSide:
    chaos: bool
    reports: list[SimulationReport] = field(default_factory=list)

    def sampler(self, seeds: int) -> Callable[[], float]:
        def sample() -> float:
            tally = Tally()
            builder = simulation(
                ROUND_TRIPS, seeds, chaos=self.chaos, server="async for", tally=tally
            )
            started = time.perf_counter()
            report = builder.run()
            wall = time.perf_counter() - started
            check(report, tally, seeds, ROUND_TRIPS, "moonpool ping-pong")
            self.reports.append(report)
            return seeds / wall

        return sample


def run(settings: Settings) -> Outcome:
    detangle = _detangle()
    seeds = settings.count(SEEDS, minimum=3)
    runs = seeds * DETANGLE_FACTOR
    moon_default, moon_calm = MoonpoolSide(chaos=True), MoonpoolSide(chaos=False)
    det_default, det_calm = DetangleSide(DEFAULT_MODE), DetangleSide(CALM_MODE)
    samples = interleave_sync(
        [
            det_default.sampler(runs),
            moon_default.sampler(seeds),
            det_calm.sampler(runs),
            moon_calm.sampler(seeds),
        ],
        settings,
    )
    version = importlib.metadata.version("detangle")
    common: dict[str, Any] = {
        "round_trips": ROUND_TRIPS,
        "payload_bytes": PAYLOAD_SIZE,
        "moonpool_seeds_per_sample": seeds,
        "detangle_runs_per_sample": runs,
        "detangle_version": version,
        "base_seed": BASE_SEED,
    }
    figures: list[Figure] = []
    notes = [
        f"both sides: one server, one client making {ROUND_TRIPS} sequential request/reply "
        f"exchanges of {PAYLOAD_SIZE} B ([u64][u32][payload] frames) per seed / run, each a "
        f"fresh simulation; moonpool {seeds} FixedCount seeds per sample, detangle "
        f"{detangle.__name__} {version} explore(runs={runs}, seed={BASE_SEED}, "
        "database=False, shrink=False)",
        "moonpool: SimulationBuilder, a ServerTransport process (async for + reply) and a "
        "workload calling ClientTransport.get_reply; detangle: asyncio.start_server on the "
        "simulated host 'server' (64 KiB reads, one write per read) and "
        "asyncio.open_connection, detangle's in-memory network",
        "rounds interleave the four sides (the order reversing each round); each ratio pairs "
        "moonpool's sample with detangle's of the same round",
    ]
    for label, moon, det, target, chaos in (
        ("default exploration", moon_default, det_default, TARGET, "ChaosConfig.default()"),
        ("calm (info)", moon_calm, det_calm, None, "ChaosConfig.none()"),
    ):
        moon_samples = samples[1] if moon is moon_default else samples[3]
        det_samples = samples[0] if det is det_default else samples[2]
        report = moon.reports[-1]
        details = {
            **common,
            "moonpool_chaos": chaos,
            "moonpool_buggify": moon.chaos,
            "detangle_mode": det.mode.label,
            "detangle_strategy": det.mode.strategy,
            "detangle_options": det.mode.options,
            "moonpool_task_steps_per_seed": report.total_events / seeds,
            "detangle_steps_per_run": median([s / runs for s in det.steps]),
        }
        figures.append(
            Figure(
                f"ping-pong {ROUND_TRIPS} round trips/seed, {label}: seeds/s",
                "seeds/s",
                moon_samples,
                det_samples,
                f"detangle {det.mode.label}",
                target=target,
                details=details,
            )
        )
        notes.append(
            f"{label}: moonpool {chaos}{' + buggify' if moon.chaos else ''}, "
            f"{details['moonpool_task_steps_per_seed']:.0f} task steps per seed; detangle "
            f"{det.mode.label}, {details['detangle_steps_per_run']:.0f} loop steps per run"
        )
    return Outcome(figures=figures, notes=notes)

"""What a ``ServerTransport`` holds in memory under attack, against what its limits promise.

Three attacks, each from a child process speaking raw sockets (so that only the
server's side is counted), on loopback TCP, on trio:

* **never-reading clients**: 8 clients each pipeline hundreds of tiny requests
  for 256 KiB replies and never read a byte; ``max_queued_reply_bytes`` (per
  connection) and ``max_total_reply_bytes`` (all connections) are set small;
* **idle flood**: twice ``max_connections`` silent connections; the bound is
  ``max_connections`` times the memory of one idle connection, measured in the
  same round from a few connections; 20 well-behaved clients then try to get a
  reply while the flood holds;
* **header bomb**: ``CheckedEnvelope`` frames of 150,000 empty headers each
  (just under the 1 MiB ``max_frame_size``), sent over and over by 16
  connections to a server whose application is slow (10 ms per request).

Each figure is the server's Python heap (``tracemalloc``) at its peak during the
attack, relative to a baseline taken once the server is up, divided by the bound
the configured limits promise: ``ratio <= 1.1`` is the target.  For the idle
flood, the heap after a full collection is reported too (for information): the
difference is cyclic garbage the evicted connections left for the collector.
The process's RSS growth (``/proc/self/status``) is recorded for information.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import resource
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import anyio
import anyio.abc
import trio
from anyio.streams.buffered import BufferedByteReceiveStream

from benchmarks._core import BenchmarkError, Figure, Outcome, Settings, pin_child, settle
from moonpool.net import RealNetwork
from moonpool.transport import (
    DEFAULT_MAX_FRAME_SIZE,
    CheckedEnvelope,
    ClientTransport,
    ReceivedEnvelope,
    SendQueueFull,
    ServerTransport,
    TransportError,
)

NAME: Final = "memory"
DESCRIPTION: Final = (
    "ServerTransport heap under never-reading clients, an idle flood and a header bomb, "
    "vs the bound its limits promise"
)

TARGET: Final = 1.1
HOST: Final = "127.0.0.1"
KiB: Final = 1024
MiB: Final = 1024 * KiB

# -- never-reading clients
REPLY_SIZE: Final = 256 * KiB
PER_CONNECTION_BYTES: Final = 4 * MiB  # max_queued_reply_bytes
TOTAL_REPLY_BYTES: Final = 16 * MiB  # max_total_reply_bytes
READERS: Final = 8  # never-reading clients
# -- idle flood
MAX_CONNECTIONS: Final = 1024
PROBE_CONNECTIONS: Final = 50  # connections whose growth gives the per-connection cost
GOOD_CLIENTS: Final = 20
GOOD_TIMEOUT: Final = 5.0
# -- header bomb
BOMBERS: Final = 16
BOMB_HEADERS: Final = 150_000
SLOW_APPLICATION: Final = 0.010  # seconds the bomb scenario's application takes per request

STEP_TIMEOUT: Final = 60.0  # any one step of a sample (an attack, a settle, a check)
FD_MARGIN: Final = 256

# The attacker: raw blocking sockets driven by one JSON command per stdin line,
# one JSON result per stdout line; exits (closing every socket) at stdin EOF.
_ATTACKER_SCRIPT: Final = r"""
import json, resource, signal, socket, struct, sys, threading, zlib
if hasattr(signal, "alarm"):
    signal.alarm(600)  # never outlive a stuck parent
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = int(sys.argv[1])
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard < 0 else min(want, hard), hard))
held = []

def connect(host, port):
    return socket.create_connection((host, port), timeout=30)

def op_open(host, port, count):
    failed = 0
    for _ in range(count):
        try:
            held.append(connect(host, port))
        except OSError:
            failed += 1
    return {"opened": count - failed, "failed": failed}

def op_close():
    count = len(held)
    for sock in held:
        sock.close()
    held.clear()
    return {"closed": count}

def op_pipeline(host, port, clients, requests):
    # RequestResponseEnvelope frames: [u64 LE correlation id][u32 LE length][payload]
    pack = struct.Struct("<QI").pack
    # Ids from 1: correlation id 0 is a one-way message (nothing to answer).
    data = b"".join(pack(n, 1) + b"x" for n in range(1, requests + 1))
    for _ in range(clients):
        sock = connect(host, port)
        sock.sendall(data)  # and never read
        held.append(sock)
    return {"sent": clients * requests, "bytes_per_client": len(data)}

def bomb_frame(headers):
    import msgspec
    # CheckedEnvelope: [body_len u32][crc32(body) u32][crc32(first 8 bytes) u32][body],
    # body = msgpack [kind=REQUEST, correlation id, payload, headers]
    body = msgspec.msgpack.encode([0, 1, b"", {f"{i:x}": "" for i in range(headers)}])
    head = struct.pack("<II", len(body), zlib.crc32(body))
    return head + struct.pack("<I", zlib.crc32(head)) + body

def op_bomb(host, port, connections, rounds, headers):
    frame = bomb_frame(headers)
    counts = {"sent": 0, "closed_by_server": 0, "reset": 0, "answered": 0,
              "still_open": 0, "connect_failed": 0}
    lock = threading.Lock()

    def add(key):
        with lock:
            counts[key] += 1

    def worker():
        for _ in range(rounds):
            try:
                sock = connect(host, port)
            except OSError:
                add("connect_failed")
                continue
            with sock:
                try:
                    sock.sendall(frame)
                    add("sent")
                    outcome = "closed_by_server" if sock.recv(1) == b"" else "answered"
                except socket.timeout:
                    outcome = "still_open"
                except OSError:
                    outcome = "reset"
                add(outcome)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts["frame_bytes"] = len(frame)
    return counts

OPS = {"open": op_open, "close": op_close, "pipeline": op_pipeline, "bomb": op_bomb}
print("ready", flush=True)
for line in sys.stdin:
    command = json.loads(line)
    try:
        result = OPS[command.pop("op")](**command)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
"""


# -- measuring ---------------------------------------------------------------------


def _rss_bytes() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes ({} where /proc is missing)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


@dataclass(slots=True)
class Held:
    """What the server's side held during an attack, relative to the baseline."""

    peak: int  # tracemalloc peak - baseline
    current: int  # tracemalloc current - baseline, after the attack settled and a collection
    garbage: int  # what that full collection freed (cyclic garbage the attack left)
    rss_growth: int | None  # VmRSS at the end - VmRSS at the baseline
    rss_peak_growth: int | None  # VmHWM - VmRSS at the baseline (when it could be reset)


class Probe:
    """A tracemalloc baseline (after a full collection), with its peak reset."""

    def __init__(self) -> None:
        gc.collect()
        self.baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        self.hwm_reset = _reset_hwm()
        self.rss = _rss_bytes().get("VmRSS")

    def held(self) -> Held:
        uncollected, peak = tracemalloc.get_traced_memory()
        gc.collect()
        current = tracemalloc.get_traced_memory()[0]
        rss = _rss_bytes()
        base_rss = self.rss
        rss_now, hwm = rss.get("VmRSS"), rss.get("VmHWM")
        return Held(
            peak=peak - self.baseline,
            current=current - self.baseline,
            garbage=uncollected - current,
            rss_growth=None if base_rss is None or rss_now is None else rss_now - base_rss,
            rss_peak_growth=None
            if base_rss is None or hwm is None or not self.hwm_reset
            else hwm - base_rss,
        )


#: Every wait of this benchmark: bounded by one step's timeout, then a longer settle.
_settle = partial(settle, limit=STEP_TIMEOUT, idle=0.2)


def _fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted``; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft


@contextlib.contextmanager
def _quiet_transport() -> Iterator[None]:
    """Every attack makes the server log (closed for bad input, refused); counted in
    its stats instead of printed thousands of times."""
    logger = logging.getLogger("moonpool.transport")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- the attacker process ----------------------------------------------------------


class Attacker:
    """The child process that runs the raw-socket clients."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._lines = BufferedByteReceiveStream(process.stdout)

    async def ready(self) -> None:
        with anyio.fail_after(STEP_TIMEOUT):
            line = await self._lines.receive_until(b"\n", 1 << 16)
        if line != b"ready":
            raise BenchmarkError(f"attacker process did not start: {line!r}")

    async def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        with anyio.fail_after(STEP_TIMEOUT):
            await self._stdin.send(json.dumps({"op": op, **arguments}).encode() + b"\n")
            line = await self._lines.receive_until(b"\n", 1 << 20)
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise BenchmarkError(f"attacker {op} failed: {result['error']}")
        return result


@asynccontextmanager
async def attacker(fds: int) -> AsyncIterator[Attacker]:
    command = [sys.executable, "-c", _ATTACKER_SCRIPT, str(fds)]
    process = await anyio.open_process(command, stderr=None)
    try:
        pin_child(process.pid)  # off the server's CPU, when there is another
        child = Attacker(process)
        await child.ready()
        yield child
    finally:
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await process.stdin.aclose()
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(10):
                    await process.wait()
            await process.aclose()


def _port(server: ServerTransport[Any]) -> int:
    return int(server.address.rpartition(":")[2])


# -- 1. never-reading clients ------------------------------------------------------


@dataclass(slots=True)
class ReaderSample:
    held: Held
    requests: int
    replies_sent: int
    refused_total: int  # SendQueueFull naming max_total_reply_bytes
    refused_connection: int  # SendQueueFull naming the per-connection limits


async def _never_reading(child: Attacker, requests: int) -> ReaderSample:
    reply = b"r" * REPLY_SIZE
    refused = {"total": 0, "connection": 0}
    network = RealNetwork()
    async with (
        ServerTransport.bind(
            network,
            f"{HOST}:0",
            max_queued_reply_bytes=PER_CONNECTION_BYTES,
            max_total_reply_bytes=TOTAL_REPLY_BYTES,
        ) as server,
        anyio.create_task_group() as group,
    ):

        async def big_reply(request: ReceivedEnvelope[Any]) -> None:
            try:
                server.send_reply(request, reply)
            except SendQueueFull as exc:
                refused["total" if "max_total_reply_bytes=" in str(exc) else "connection"] += 1

        group.start_soon(server.serve, big_reply)
        await anyio.sleep(0.05)  # serve() is running
        probe = Probe()
        await child.call(
            "pipeline", host=HOST, port=_port(server), clients=READERS, requests=requests
        )
        total = READERS * requests
        await _settle(lambda: server.stats.requests_received >= total, "every request read")
        held = probe.held()
        sent = server.stats.replies_sent
        await child.call("close")
        group.cancel_scope.cancel()
    return ReaderSample(held, total, sent, refused["total"], refused["connection"])


# -- 2. idle flood -----------------------------------------------------------------


@dataclass(slots=True)
class FloodSample:
    held: Held
    per_connection: float  # tracemalloc bytes per idle connection (PROBE_CONNECTIONS)
    flood: int
    connection_count: int
    evicted: int | None
    rejected: int | None
    good_ok: int
    good_errors: dict[str, int]


async def _echo(request: ReceivedEnvelope[Any]) -> bytes:
    return request.payload


async def _good_clients(address: str, count: int) -> tuple[int, dict[str, int]]:
    """``count`` new ClientTransports at once, each asking for one reply."""
    ok = [0]
    errors: dict[str, int] = {}
    network = RealNetwork()

    async def one(index: int) -> None:
        try:
            with anyio.fail_after(GOOD_TIMEOUT + 2):
                async with ClientTransport(network, timeout=GOOD_TIMEOUT) as client:
                    payload = f"hello {index}".encode()
                    if await client.get_reply(address, payload) == payload:
                        ok[0] += 1
        except (TransportError, TimeoutError, OSError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return ok[0], errors


async def _idle_flood(child: Attacker, limit: int) -> FloodSample:
    network = RealNetwork()
    async with (
        ServerTransport.bind(network, f"{HOST}:0", max_connections=limit) as server,
        anyio.create_task_group() as group,
    ):
        group.start_soon(server.serve, _echo)
        await anyio.sleep(0.05)
        port, stats = _port(server), server.stats
        probe_count = min(PROBE_CONNECTIONS, limit)

        # The cost of one idle connection, from a few of them, in this very round.
        probe = Probe()
        opened = await child.call("open", host=HOST, port=port, count=probe_count)
        if opened["opened"] != probe_count:
            raise BenchmarkError(f"could not open {probe_count} connections: {opened}")
        await _settle(lambda: server.connection_count >= probe_count, "probe connections up")
        per_connection = probe.held().current / probe_count
        await child.call("close")
        await _settle(lambda: server.connection_count == 0, "probe connections gone")

        def seen() -> int:
            # Every flood connection is either accepted (and perhaps evicted later)
            # or refused; ``connections_rejected`` is absent from older versions.
            return stats.connections_accepted + getattr(stats, "connections_rejected", 0)

        flood = 2 * limit
        first = seen()
        probe = Probe()
        opened = await child.call("open", host=HOST, port=port, count=flood)
        if opened["failed"]:
            raise BenchmarkError(f"the flood could not open all its connections: {opened}")
        if hasattr(stats, "connections_rejected"):
            await _settle(lambda: seen() - first >= flood, "every flood connection seen")
        else:
            await _settle(lambda: server.connection_count >= limit, "server full")
        held = probe.held()
        count = server.connection_count
        good_ok, good_errors = await _good_clients(server.address, GOOD_CLIENTS)
        await child.call("close")
        group.cancel_scope.cancel()
    return FloodSample(
        held,
        per_connection,
        flood,
        count,
        getattr(stats, "connections_evicted", None),
        getattr(stats, "connections_rejected", None),
        good_ok,
        good_errors,
    )


# -- 3. header bomb ----------------------------------------------------------------


@dataclass(slots=True)
class BombSample:
    held: Held
    bombs: int
    frame_bytes: int
    closed_for_bad_input: int
    outcomes: dict[str, int]
    good_reply: bool


async def _slow(request: ReceivedEnvelope[Any]) -> bytes:
    await anyio.sleep(SLOW_APPLICATION)
    return request.payload


async def _header_bomb(child: Attacker, rounds: int) -> BombSample:
    network = RealNetwork()
    async with (
        ServerTransport.bind(network, f"{HOST}:0", envelope=CheckedEnvelope) as server,
        anyio.create_task_group() as group,
    ):
        group.start_soon(server.serve, _slow)
        await anyio.sleep(0.05)
        probe = Probe()
        outcome = await child.call(
            "bomb",
            host=HOST,
            port=_port(server),
            connections=BOMBERS,
            rounds=rounds,
            headers=BOMB_HEADERS,
        )
        bombs = BOMBERS * rounds
        await _settle(
            lambda: (
                server.connection_count == 0
                and server.stats.connections_closed_for_bad_input >= outcome["sent"]
            ),
            "every bomb refused",
        )
        held = probe.held()
        frame_bytes = int(outcome.pop("frame_bytes"))
        if frame_bytes > DEFAULT_MAX_FRAME_SIZE:
            raise BenchmarkError(f"bomb frame of {frame_bytes} bytes exceeds max_frame_size")
        # The server still serves a well-formed request afterwards.
        async with ClientTransport(network, envelope=CheckedEnvelope, timeout=5.0) as client:
            try:
                good = await client.get_reply(server.address, b"still there?") == b"still there?"
            except TransportError:
                good = False
        closed = server.stats.connections_closed_for_bad_input
        group.cancel_scope.cancel()
    return BombSample(held, bombs, frame_bytes, closed, outcome, good)


# -- the benchmark -----------------------------------------------------------------


def _spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    low, high = min(values) / scale, max(values) / scale
    return f"{low:.3g}-{high:.3g}{unit}"


def _mib(values: list[float]) -> str:
    return _spread(values, MiB, " MiB")


def _held_details(samples: list[Held]) -> dict[str, Any]:
    return {
        "settled_bytes": [h.current for h in samples],
        "cyclic_garbage_bytes": [h.garbage for h in samples],
        "rss_growth_bytes": [h.rss_growth for h in samples],
        "rss_peak_growth_bytes": [h.rss_peak_growth for h in samples],
        "measure": "tracemalloc peak - baseline, server side only",
    }


async def _measure(settings: Settings) -> tuple[list[Figure], list[str]]:
    requests = settings.count(400, minimum=100)
    limit = settings.count(MAX_CONNECTIONS, minimum=128)
    rounds = settings.count(12, minimum=2)
    fds = _fd_limit(3 * limit + FD_MARGIN)
    if fds < 2 * limit + FD_MARGIN:  # the child needs 2 x limit, the server limit + a few
        limit = max(PROBE_CONNECTIONS, (fds - FD_MARGIN) // 2)
    samples = 1 if settings.quick else settings.repeats  # --quick: a smoke test
    readers: list[ReaderSample] = []
    floods: list[FloodSample] = []
    bombs: list[BombSample] = []
    tracemalloc.start()
    try:
        async with attacker(3 * limit + FD_MARGIN) as child:
            for index in range(settings.warmup + samples):
                # The first round warms up what the process keeps for good (trio's
                # I/O registrations, interned strings, free lists); it is not kept.
                reader = await _never_reading(child, requests)
                flood = await _idle_flood(child, limit)
                bomb = await _header_bomb(child, rounds)
                if index >= settings.warmup:
                    readers.append(reader)
                    floods.append(flood)
                    bombs.append(bomb)
    finally:
        tracemalloc.stop()

    figures: list[Figure] = []
    notes: list[str] = []

    # 1. never-reading clients
    reader_bound = TOTAL_REPLY_BYTES + REPLY_SIZE
    peaks = [float(s.held.peak) for s in readers]
    figures.append(
        Figure(
            f"never-reading clients ({READERS}): peak server heap",
            "B",
            peaks,
            [float(reader_bound)] * len(peaks),
            "max_total_reply_bytes + one reply",
            target=TARGET,
            higher_is_better=False,
            details={
                "clients": READERS,
                "requests_per_client": requests,
                "reply_bytes": REPLY_SIZE,
                "max_queued_reply_bytes": PER_CONNECTION_BYTES,
                "max_total_reply_bytes": TOTAL_REPLY_BYTES,
                "bound_bytes": reader_bound,
                "bound_with_one_reply_in_flight_per_connection": TOTAL_REPLY_BYTES
                + READERS * REPLY_SIZE,
                "replies_sent": [s.replies_sent for s in readers],
                "refused_max_total_reply_bytes": [s.refused_total for s in readers],
                "refused_per_connection_limits": [s.refused_connection for s in readers],
                **_held_details([s.held for s in readers]),
            },
        )
    )
    notes.append(
        f"never-reading clients: {READERS} raw clients each pipeline {requests} 1-byte "
        f"requests and never read; the application answers each with a {REPLY_SIZE // KiB} "
        f"KiB reply (send_reply, SendQueueFull counted); limits max_queued_reply_bytes="
        f"{PER_CONNECTION_BYTES // MiB} MiB, max_total_reply_bytes={TOTAL_REPLY_BYTES // MiB} "
        f"MiB; bound = max_total_reply_bytes + one reply = {reader_bound / MiB:.2f} MiB; "
        f"peak {_mib(peaks)} over {len(peaks)} samples, after the attack settled "
        f"{_mib([float(s.held.current) for s in readers])}; replies the kernel's socket "
        "buffers took are not on the heap"
    )

    # 2. idle flood
    flood_peaks = [float(s.held.peak) for s in floods]
    flood_bounds = [limit * s.per_connection for s in floods]
    evicted = [s.evicted for s in floods]
    figures.append(
        Figure(
            f"idle flood ({2 * limit} connections, max_connections={limit}): peak server heap",
            "B",
            flood_peaks,
            flood_bounds,
            f"max_connections x one idle connection ({PROBE_CONNECTIONS}-connection probe)",
            target=TARGET,
            higher_is_better=False,
            details={
                "max_connections": limit,
                "flood_connections": 2 * limit,
                "per_idle_connection_bytes": [s.per_connection for s in floods],
                "connections_held": [s.connection_count for s in floods],
                "connections_evicted": evicted,
                "connections_rejected": [s.rejected for s in floods],
                "good_clients": GOOD_CLIENTS,
                "good_clients_served": [s.good_ok for s in floods],
                "good_client_errors": [s.good_errors for s in floods],
                **_held_details([s.held for s in floods]),
            },
        )
    )
    settled = [float(s.held.current) for s in floods]
    figures.append(
        Figure(
            "idle flood: server heap after a full collection (info)",
            "B",
            settled,
            flood_bounds,
            "max_connections x one idle connection",
            higher_is_better=False,
            details={"cyclic_garbage_bytes": [s.held.garbage for s in floods]},
        )
    )
    notes.append(
        f"idle flood: a child process opens {2 * limit} silent connections to a server with "
        f"max_connections={limit}; bound = {limit} x the growth per connection of "
        f"{PROBE_CONNECTIONS} idle connections measured in the same round "
        f"({_spread([s.per_connection for s in floods], unit=' B')} per connection); peak "
        f"{_mib(flood_peaks)} vs bound {_mib(flood_bounds)}, after gc.collect() "
        f"{_mib(settled)}, the collection freeing {_mib([float(s.held.garbage) for s in floods])} "
        f"of cyclic garbage; evicted {evicted}; {GOOD_CLIENTS} new ClientTransports during "
        f"the flood were served: {[s.good_ok for s in floods]}. An evicted connection's "
        "task is cancelled (close_now, from the accept loop); the trio Cancelled that ends "
        "it and the frames in its traceback hold the connection in reference cycles, so "
        "it is freed by the cyclic garbage collector, not when it closes: that garbage is "
        "what the peak holds above the collected figure"
    )

    # 3. header bomb
    bomb_bound = BOMBERS * DEFAULT_MAX_FRAME_SIZE
    bomb_peaks = [float(s.held.peak) for s in bombs]
    figures.append(
        Figure(
            f"header bomb ({BOMBERS} connections): peak server heap",
            "B",
            bomb_peaks,
            [float(bomb_bound)] * len(bomb_peaks),
            "connections x max_frame_size",
            target=TARGET,
            higher_is_better=False,
            details={
                "connections": BOMBERS,
                "bombs_per_sample": bombs[0].bombs,
                "frame_bytes": bombs[0].frame_bytes,
                "headers_per_bomb": BOMB_HEADERS,
                "max_frame_size": DEFAULT_MAX_FRAME_SIZE,
                "bound_bytes": bomb_bound,
                "application_seconds_per_request": SLOW_APPLICATION,
                "closed_for_bad_input": [s.closed_for_bad_input for s in bombs],
                "attacker_outcomes": [s.outcomes for s in bombs],
                "good_request_after": [s.good_reply for s in bombs],
                **_held_details([s.held for s in bombs]),
            },
        )
    )
    notes.append(
        f"header bomb: {BOMBERS} connections from a child process each send "
        f"{bombs[0].bombs // BOMBERS} CheckedEnvelope frames of {BOMB_HEADERS:,} empty headers "
        f"({bombs[0].frame_bytes:,} bytes, within max_frame_size), reconnecting after each "
        f"close, to a server whose application takes {SLOW_APPLICATION * 1000:g} ms per "
        f"request; bound = {BOMBERS} x max_frame_size = {bomb_bound / MiB:g} MiB (each "
        f"connection buffers at most one frame); peak {_mib(bomb_peaks)}, settled "
        f"{_mib([float(s.held.current) for s in bombs])}"
    )
    notes.append(
        "method: tracemalloc (Python heap only: kernel socket buffers are not counted) "
        "from a baseline taken after a full collection once the server is up; the figure "
        "is the peak during the attack; attackers are raw blocking sockets in one child "
        "process, so only the server is traced; trio, loopback 127.0.0.1 only; "
        f"{settings.warmup} unrecorded round first; the server's log is silenced (its "
        "stats count what it refused)"
    )
    notes.append(
        "RSS growth (VmRSS, and VmHWM reset through /proc/self/clear_refs) is in each "
        "figure's details for information: it includes tracemalloc's own bookkeeping and "
        "whatever the allocator keeps after a free, so it is not judged"
    )
    return figures, notes


def run(settings: Settings) -> Outcome:
    with _quiet_transport():
        figures, notes = trio.run(_measure, settings)
    return Outcome(figures=figures, notes=notes)

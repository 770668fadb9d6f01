"""A durable key-value store: a write-ahead log on a disk that crashes like a real one.

Two server **processes** each keep a dict in memory and a write-ahead log on
their disk (``ctx.storage``): a ``Put`` is written at the end of the log, the
log is synced, and only then is the write applied and acknowledged.  At boot a
server replays its log, stopping at the first record whose length or checksum
is wrong -- a write torn by a crash -- writes back what it replayed, syncs it,
and cuts the log there.  Client
**workloads** own keys, write new versions of them and read them back, while
attrition crashes, reboots and *wipes* the servers (a wipe empties the disk:
the machine was replaced) under network chaos, disk faults and buggify.

What the clients check, during the run and once chaos is over:

* a value read back is one that was written (never torn, never made up);
* a key reads at least its last acknowledged version -- unless its server was
  wiped since that acknowledgement (``ctx.kills(server)["wipe"]``): a wiped
  server may have lost everything, and the model says so.

Two planted bugs, both caught by the simulation::

    python -m moonpool run examples/kv_store.py                 # passes
    python -m moonpool run examples/kv_store.py:ack_before_sync # acknowledges before fsync
    python -m moonpool run examples/kv_store.py:trust_torn      # replays a torn record
    python -m moonpool run examples/kv_store.py:trust_torn --seed N --timeline-kind storage \
        --timeline

The same server runs on a real disk and real TCP: ``--real`` writes through
``RealStorage`` in a temporary directory, stops the server, boots it again on
the same directory and reads every acknowledged write back::

    python examples/kv_store.py --real [--backend asyncio] [--directory DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec

from moonpool.net import RealNetwork
from moonpool.sim import (
    Attrition,
    ChaosConfig,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    WorkloadContext,
    always,
    buggify,
    sometimes,
)
from moonpool.storage import RealStorage, StorageChaosConfig, StorageError, StorageFile
from moonpool.transport import (
    ClientTransport,
    ReceivedEnvelope,
    RequestResponseEnvelope,
    ServerTransport,
    TransportError,
)

SERVERS = 2
KEYS_PER_CLIENT = 8
OPERATIONS_PER_CLIENT = 40
TIMEOUT = 2.0
#: How long one disk operation may take before the server gives up on it.
IO_TIMEOUT = 1.0
WAL = "wal"
#: The default disk faults, on a disk whose syncs take 2-40 ms (a spinning disk's).
SLOW_DISK = msgspec.structs.replace(StorageChaosConfig.default(), sync_latency=(0.002, 0.04))
_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
_KEY = struct.Struct("<H")  # key length; then the key, the version (u64), the value


# -- the protocol ------------------------------------------------------------------------


class Put(msgspec.Struct, tag=True):
    key: str
    version: int
    value: bytes


class Get(msgspec.Struct, tag=True):
    key: str


class Reply(msgspec.Struct):
    ok: bool
    version: int = 0  # 0: no such key
    value: bytes = b""


_requests = msgspec.msgpack.Decoder(Put | Get)
_replies = msgspec.msgpack.Decoder(Reply)
_encode = msgspec.msgpack.encode


def value_for(key: str, version: int) -> bytes:
    """The value a client writes as ``version`` of ``key``: long enough to span sectors."""
    filler = (zlib.crc32(f"{key}/{version}".encode()) % 400) + 100
    return f"{key}={version};".encode() + b"v" * filler


def server_for(key: str) -> str:
    return f"kv-{zlib.crc32(key.encode()) % SERVERS}"


# -- the write-ahead log -----------------------------------------------------------------


def encode_record(key: str, version: int, value: bytes) -> bytes:
    raw = key.encode()
    payload = _KEY.pack(len(raw)) + raw + version.to_bytes(8, "little") + value
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def replay(log: bytes, data: dict[str, tuple[int, bytes]], *, trust_torn: bool) -> int:
    """Apply the log's records to ``data``; returns where the valid log ends.

    A record is valid if it is all there and its checksum matches: a crash may
    have torn the last ones, or lost a write before one that survived (the gap
    reads as zeros).  ``trust_torn`` is the planted bug: it takes the length at
    its word and skips the checksum, so a torn record's prefix is applied.
    """
    position = 0
    while position + _HEADER.size <= len(log):
        length, checksum = _HEADER.unpack_from(log, position)
        start = position + _HEADER.size
        payload = log[start : start + length]  # short if torn: slicing does not complain
        if length == 0 or (
            not trust_torn and (len(payload) < length or zlib.crc32(payload) != checksum)
        ):
            break
        (key_length,) = _KEY.unpack_from(payload)
        if len(payload) < _KEY.size + key_length + 8:
            break
        key = payload[_KEY.size : _KEY.size + key_length].decode(errors="replace")
        at = _KEY.size + key_length
        version = int.from_bytes(payload[at : at + 8], "little")
        if version > data.get(key, (0, b""))[0]:
            data[key] = (version, payload[at + 8 :])
        position = start + length
    return position


class Log:
    """The write-ahead log: records written at ``end``, the end of what is durable."""

    def __init__(self, wal: StorageFile, end: int) -> None:
        self.wal = wal
        self.end = end

    async def write(self, record: bytes) -> None:
        """Write ``record`` at the end, durably (``ok`` may be sent once this returns).

        Always at ``end``, never ``append``: a write whose sync failed may be gone
        (Linux drops the pages a failed fsync was writing, and a crash shows the
        disk), so the next record goes over it, and the log has no hole.
        """
        await self.wal.write(self.end, record)
        if buggify():
            await anyio.sleep(0.05)  # a slow group commit
        await self.wal.sync()
        self.end += len(record)


async def open_log(
    ctx: ProcessContext, data: dict[str, tuple[int, bytes]], *, trust_torn: bool
) -> Log:
    """Open (or create) the log, replay it, and make what was replayed durable."""
    storage = ctx.storage
    while True:  # a disk that hangs or fails at boot is tried again: nothing is lost yet
        try:
            with anyio.fail_after(IO_TIMEOUT):
                wal = await storage.open(WAL)
                await storage.sync()  # the log's creation is durable only once the store is
                size = await wal.size()
                log = await wal.read(0, size)
                end = replay(log, data, trust_torn=trust_torn)
                # What was replayed may not be durable: the last incarnation may have
                # stopped before its sync, or its sync failed and the pages were
                # dropped (they are still read here, from the cache).  Write it again
                # and sync, before answering "already durable" from it.  (Found by
                # this simulation: a resend acknowledged from an unsynced record,
                # then lost in a crash.)  Then cut the torn tail, or records written
                # after it would never be read.
                await wal.write(0, log[:end])
                if end < size:
                    await wal.truncate(end)
                await wal.sync()
                sometimes(end < size, "a server cuts a torn or partly lost log tail at boot")
                return Log(wal, end)
        except (TimeoutError, StorageError):
            data.clear()
            await anyio.sleep(0.1)


def kv_server(
    *,
    ack_before_sync: bool = False,
    trust_torn: bool = False,
    on_listen: Callable[[str], None] | None = None,
) -> Any:
    """The server process; the flags are the planted bugs (``on_listen``: told its address)."""

    async def server(ctx: ProcessContext) -> None:
        data: dict[str, tuple[int, bytes]] = {}
        log = await open_log(ctx, data, trust_torn=trust_torn)
        sometimes(bool(data) and ctx.incarnation > 0, "a rebooted server recovers its data")
        lock = anyio.Lock()  # one write-and-sync at a time keeps the log in order

        async def put(request: ReceivedEnvelope[RequestResponseEnvelope], put: Put) -> bytes | None:
            async with lock:
                if put.version <= data.get(put.key, (0, b""))[0]:
                    return _encode(Reply(ok=True))  # a resend, or overtaken: already durable
                record = encode_record(put.key, put.version, put.value)
                try:
                    with anyio.fail_after(IO_TIMEOUT):
                        if ack_before_sync:
                            data[put.key] = (put.version, put.value)
                            with contextlib.suppress(TransportError):
                                transport.send_reply(request, _encode(Reply(ok=True)))
                        await log.write(record)
                except (TimeoutError, StorageError):
                    # Not durable, maybe not even written: the client does not know
                    # either way, and will write a newer version.
                    return None if ack_before_sync else _encode(Reply(ok=False))
                data[put.key] = (put.version, put.value)
                return None if ack_before_sync else _encode(Reply(ok=True))

        async def handle(request: ReceivedEnvelope[RequestResponseEnvelope]) -> bytes | None:
            message = _requests.decode(request.payload)
            if isinstance(message, Get):
                version, value = data.get(message.key, (0, b""))
                return _encode(Reply(ok=True, version=version, value=value))
            return await put(request, message)

        async with ServerTransport.bind(ctx.network, ctx.address) as transport:
            if on_listen is not None:
                on_listen(transport.address)

            async def stop_on_shutdown() -> None:
                await ctx.shutdown.wait()
                await transport.aclose()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stop_on_shutdown)
                await transport.serve(handle)
        await log.wal.aclose()

    return server


# -- the clients and their model ---------------------------------------------------------


class Writer:
    """Writes versions of its own keys, reads them back; checks what a crash may lose."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}  # the newest version written (acknowledged or not)
        # The last acknowledged version, with its server's wipe count when acknowledged.
        self.acked: dict[str, tuple[int, int]] = {}

    def wipes(self, ctx: WorkloadContext, key: str) -> int:
        return ctx.kills(server_for(key)).get("wipe", 0)

    async def read(self, ctx: WorkloadContext, client: ClientTransport, key: str) -> None:
        server = ctx.peers[server_for(key)]
        before = self.wipes(ctx, key)
        try:
            reply = _replies.decode(await client.get_reply(server, _encode(Get(key)), timeout=30))
        except TransportError:
            return  # unanswered: nothing to check
        version, acked_wipes = self.acked.get(key, (0, -1))
        always(
            reply.version == 0 or reply.value == value_for(key, reply.version),
            "a value read back is the one written as that version (never torn)",
            key=key,
            version=reply.version,
            value=reply.value[:48],
        )
        always(reply.version <= self.sent.get(key, 0), "nobody made up a version", key=key)
        unwiped = before == self.wipes(ctx, key) == acked_wipes
        always(
            not unwiped or reply.version >= version,
            "an acknowledged write is still there unless its server was wiped since",
            key=key,
            acknowledged=version,
            read=reply.version,
        )
        sometimes(unwiped and version > 0, "an acknowledged write is read back")

    async def run(self, ctx: WorkloadContext) -> None:
        keys = [f"{ctx.name}/k{i}" for i in range(KEYS_PER_CLIENT)]
        async with ClientTransport(ctx.network) as client:
            for _ in range(OPERATIONS_PER_CLIENT):
                key = ctx.random.choice(keys)
                if ctx.random.random() < 0.3:
                    await self.read(ctx, client, key)
                    continue
                version = self.sent[key] = self.sent.get(key, 0) + 1
                wipes = self.wipes(ctx, key)
                request = _encode(Put(key, version, value_for(key, version)))
                with contextlib.suppress(TransportError):
                    server = ctx.peers[server_for(key)]
                    raw = await client.get_reply(server, request, timeout=TIMEOUT)
                    if _replies.decode(raw).ok:
                        self.acked[key] = (version, wipes)
                await anyio.sleep(ctx.random.uniform(0.0, 0.2))

    async def check(self, ctx: WorkloadContext) -> None:
        async with ClientTransport(ctx.network) as client:
            for key in sorted(self.sent):
                await self.read(ctx, client, key)


def _simulation(*, ack_before_sync: bool = False, trust_torn: bool = False) -> SimulationBuilder:
    server = kv_server(ack_before_sync=ack_before_sync, trust_torn=trust_torn)
    return (
        SimulationBuilder()
        .set_iteration_control(FixedCount(100))
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_storage_chaos(SLOW_DISK)
        .set_attrition(Attrition(max_dead=1, interval=1.0, crash=2.0, reboot=1.0, wipe=0.25))
        .register_process("kv", server, count=SERVERS)
        .register_workload("client", Writer, count=3)
    )


def simulation() -> SimulationBuilder:
    """The correct store."""
    return _simulation()


def ack_before_sync() -> SimulationBuilder:
    """Planted bug: a write is acknowledged before the log is synced (200 seeds)."""
    return _simulation(ack_before_sync=True).set_iteration_control(FixedCount(200))


def trust_torn() -> SimulationBuilder:
    """Planted bug: the replay applies a torn record's prefix (200 seeds)."""
    return _simulation(trust_torn=True).set_iteration_control(FixedCount(200))


# -- the same server on a real disk ------------------------------------------------------


class RealServer:
    """The server process on a real directory and loopback TCP, booted and stopped by hand."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state: dict[str, Any] = {}

    async def boot(self, tasks: anyio.abc.TaskGroup) -> str:
        """Start a new incarnation; returns its address once it listens."""
        self.shutdown, self.done = anyio.Event(), anyio.Event()
        listening = anyio.Event()
        address = ""

        def on_listen(bound: str) -> None:
            nonlocal address
            address = bound
            listening.set()

        ctx = ProcessContext(
            name="kv-0",
            address="127.0.0.1:0",
            peers={},
            network=RealNetwork(),
            random=random.Random(),
            shutdown=self.shutdown,
            state=self.state,
            storage=RealStorage(self.directory),
        )

        async def live() -> None:
            try:
                await kv_server(on_listen=on_listen)(ctx)
            finally:
                self.done.set()

        tasks.start_soon(live)
        with anyio.fail_after(10):
            await listening.wait()
        return address

    async def stop(self) -> None:
        self.shutdown.set()
        with anyio.fail_after(10):
            await self.done.wait()


async def run_real(directory: Path, writes: int) -> tuple[int, int]:
    """Write ``writes`` keys, stop the server, boot it on the same directory, read back."""
    server = RealServer(directory)
    async with anyio.create_task_group() as tasks, ClientTransport(RealNetwork()) as client:
        address = await server.boot(tasks)
        for n in range(writes):
            key = f"key-{n}"
            put = _encode(Put(key, 1, value_for(key, 1)))
            raw = await client.get_reply(address, put, timeout=5)
            if not _replies.decode(raw).ok:
                raise RuntimeError(f"write of {key} failed")
        await server.stop()
        address = await server.boot(tasks)  # a new incarnation: it knows only its log
        found = 0
        for n in range(writes):
            key = f"key-{n}"
            reply = _replies.decode(await client.get_reply(address, _encode(Get(key)), timeout=5))
            found += reply.value == value_for(key, 1)
        await server.stop()
    return found, (directory / WAL).stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", action="store_true", help="a real directory and real TCP")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument("--directory", type=Path, help="where the log goes (default: a temp dir)")
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args(argv)
    if not args.real:
        report = simulation().run()
        print(report)
        return 0 if report.ok else 1
    with tempfile.TemporaryDirectory(prefix="moonpool-kv-") as temporary:
        directory = args.directory or Path(temporary)
        found, size = anyio.run(run_real, directory, args.writes, backend=args.backend)
    print(
        f"[{args.backend}] {args.writes} writes acknowledged, server rebooted on its "
        f"directory, {found} read back ({size} bytes of log)"
    )
    return 0 if found == args.writes else 1


if __name__ == "__main__":
    sys.exit(main())

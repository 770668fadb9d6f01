"""Processes and workloads for the crash-semantics tests, on ``ProcessContext.storage``.

The main one is a log of fixed-size records: a process writes each record and
syncs it, and says in ``ctx.state`` how many are synced; a workload crashes it
at random times; each boot reads the log back and asserts (``always``) that
every record synced before the crash is intact.

This module is also a target for ``python -m moonpool run`` (see
:func:`simulation`), which the determinism test runs in a subprocess.  So it
imports nothing from ``tests``.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import trio

from moonpool.sim import (
    ChaosConfig,
    ProcessContext,
    SimulationBuilder,
    WorkloadContext,
    always,
)
from moonpool.storage import StorageChaosConfig, StorageFile, StorageProvider, SyncFailed

__all__ = [
    "LOG",
    "LOG_WRITER",
    "RECORD",
    "Snapshots",
    "collector",
    "crash_at_random",
    "log_writer",
    "record",
    "simulation",
    "simulation_builder",
    "sync_store",
    "write_synced",
]

#: The log's file name, the process's name, and one record's size: not a multiple
#: of the sector, so records start and end inside sectors and tears cut them anywhere.
LOG = "log"
LOG_WRITER = "disk"
RECORD = 700

#: What a collector saw: per seed, a copy of ``ctx.state`` at the start of the check phase.
Snapshots = dict[int, dict[str, Any]]


def record(index: int) -> bytes:
    """Record ``index`` of the log: its number, then bytes that depend on it (never zeros)."""
    head = f"<record {index:06d}>".encode()
    body = bytes(1 + (index * 31 + i) % 254 for i in range(RECORD - len(head)))
    return head + body


async def write_synced(file: StorageFile, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` and sync it, again until the sync succeeds.

    Written again each time: a failed sync drops the writes it covered (as
    Linux does), so syncing again alone would not make them durable.
    """
    while True:
        await file.write(offset, data)
        try:
            await file.sync()
        except SyncFailed:
            continue
        return


async def sync_store(storage: StorageProvider) -> None:
    """``storage.sync()`` until it succeeds (a failed one leaves the changes unsynced)."""
    while True:
        try:
            await storage.sync()
        except SyncFailed:
            continue
        return


def log_writer(*, publish_before_sync: bool = False) -> Callable[[ProcessContext], Any]:
    """The log process; ``publish_before_sync`` is a planted bug (it says "synced" too early)."""

    async def disk(ctx: ProcessContext) -> None:
        storage = ctx.storage
        log = await storage.open(LOG)
        await sync_store(storage)  # the log's creation is durable only once the store is
        synced: int = ctx.state.get("synced", 0)
        if synced:
            data = await log.read(0, synced * RECORD)
            damaged = [i for i in range(synced) if data[i * RECORD : (i + 1) * RECORD] != record(i)]
            always(
                not damaged,
                "every record synced before a crash is intact at the next boot",
                synced=synced,
                damaged=damaged[:5],
                incarnation=ctx.incarnation,
            )
            ctx.state.setdefault("verified", []).append((ctx.incarnation, synced))
        index = synced
        while not ctx.shutdown.is_set():
            if publish_before_sync:
                await log.write(index * RECORD, record(index))
                ctx.state["synced"] = index + 1
            await write_synced(log, index * RECORD, record(index))
            ctx.state["synced"] = index + 1
            index += 1
            if ctx.random.random() < 0.5:
                # The next record, written but not synced yet: a crash now may keep,
                # lose or tear it -- right after the synced tail, inside its sector.
                await log.write(index * RECORD, record(index))
                await trio.sleep(ctx.random.uniform(0.0, 0.005))

    return disk


async def crash_at_random(
    ctx: WorkloadContext, name: str = LOG_WRITER, *, crashes: int = 12
) -> None:
    """Crash process ``name`` ``crashes`` times, at random moments, each time once it is up."""
    for _ in range(crashes):
        await trio.sleep(ctx.random.uniform(0.0, 0.04))
        killed = await ctx.kill(name, "crash", restart_after=ctx.random.uniform(0.0, 0.01))
        always(killed, "the process was up when the workload crashed it")
        # Polled, not awaited on an event: a workload with a timer pending is what
        # lets the runtime's restart_after fire (see WorkloadContext.kill).
        while not ctx.is_running(name):  # noqa: ASYNC110
            await trio.sleep(0.002)


def collector(sink: Snapshots, check: Callable[[WorkloadContext], None] | None = None) -> type:
    """A workload class that copies ``ctx.state`` into ``sink[seed]`` in its check phase.

    Register it last: checks run in registration order, so it sees every other
    workload's notes.  ``check`` runs there too (an ``always`` in it fails the seed).
    """

    class Collect:
        async def run(self, ctx: WorkloadContext) -> None:
            await trio.lowlevel.checkpoint()

        async def check(self, ctx: WorkloadContext) -> None:
            if check is not None:
                check(ctx)
            sink[ctx.seed] = dict(ctx.state)

    return Collect


def simulation_builder(
    *,
    sink: Snapshots | None = None,
    publish_before_sync: bool = False,
    crashes: int = 12,
    storage: StorageChaosConfig | None = None,
) -> SimulationBuilder:
    """The synced-log simulation: full network chaos, buggify, default storage chaos."""

    async def crasher(ctx: WorkloadContext) -> None:
        await crash_at_random(ctx, crashes=crashes)

    def every_boot_verified(ctx: WorkloadContext) -> None:
        state: MutableMapping[str, Any] = ctx.state
        always(
            len(state.get("verified", [])) >= 1,
            "a boot after a crash read the synced records back",
        )

    builder = (
        SimulationBuilder()
        .set_chaos(ChaosConfig.default())
        .enable_buggify()
        .set_storage_chaos(storage or StorageChaosConfig.default())
        .set_settle_time(0.5)
        .register_process(LOG_WRITER, log_writer(publish_before_sync=publish_before_sync))
        .register_workload("crasher", crasher)
    )
    if sink is not None:
        builder.register_workload("collect", collector(sink, every_boot_verified))
    return builder


def simulation() -> SimulationBuilder:
    """The CLI target: ``python -m moonpool run tests/storage/sim_disk_workloads.py``.

    Without a failure database: a test runs it in a subprocess, whose failing seeds
    must not land in the checkout's ``.moonpool/``.
    """
    return simulation_builder(sink={}).set_database(None)

"""SimStorage details a hostile user found: failed syncs, bounds, names, errors."""

from __future__ import annotations

import errno
import random

import pytest
import trio

from moonpool.sim import Attrition, ChaosConfig, ProcessContext, SimulationBuilder, WorkloadContext
from moonpool.storage import (
    FileClosedError,
    SimStorage,
    StorageChaosConfig,
    StorageError,
    SyncFailed,
)
from moonpool.storage._disk import MAX_JOURNAL, MAX_PENDING_OPS, Disk, Inode
from moonpool.storage._sim_storage import MAX_FILE_SIZE
from moonpool.storage._unavailable import NO_STORAGE

ALWAYS_FAILS = StorageChaosConfig(sync_failure=1.0)


def test_a_failed_sync_drops_its_writes_like_linux() -> None:
    inode = Inode()
    inode.write(0, b"synced")
    inode.sync()
    inode.write(6, b"-dropped")
    assert inode.fail_sync() == 1
    inode.write(14, b"-later")
    inode.sync()  # covers the later write only
    assert bytes(inode.current) == b"synced-dropped-later"  # still read from the cache
    assert bytes(inode.durable) == b"synced\0\0\0\0\0\0\0\0-later"
    inode.crash(random.Random(0), lambda *args: True, "f", _outcome())
    assert bytes(inode.current) == b"synced\0\0\0\0\0\0\0\0-later"  # the disk's bytes


def test_a_crash_after_a_failed_sync_alone_shows_the_disk() -> None:
    inode = Inode()
    inode.write(0, b"lost")
    inode.fail_sync()
    assert not inode.pending and bytes(inode.current) == b"lost"
    inode.crash(random.Random(0), lambda *args: True, "f", _outcome())
    assert bytes(inode.current) == b""


def _outcome():  # type: ignore[no-untyped-def]
    from moonpool.storage._disk import CrashOutcome

    return CrashOutcome()


def test_unsynced_ops_are_bounded_the_oldest_written_back() -> None:
    inode = Inode()
    for i in range(MAX_PENDING_OPS + 10):
        inode.write(0, i.to_bytes(4, "little"))
    assert len(inode.pending) == MAX_PENDING_OPS
    # The ten oldest reached the disk, in order: the durable image is the tenth.
    assert bytes(inode.durable) == (9).to_bytes(4, "little")


def test_unsynced_namespace_changes_are_bounded_the_oldest_committed() -> None:
    disk = Disk()
    for i in range(MAX_JOURNAL + 5):
        disk.open(f"f{i}")
    assert len(disk.journal) == MAX_JOURNAL
    assert sorted(disk.durable_names) == sorted(f"f{i}" for i in range(5))
    disk.crash(random.Random(1), lambda *args: True)
    assert {f"f{i}" for i in range(5)} <= set(disk.names)  # committed: never undone


def test_a_log_synced_after_every_append_costs_its_appends_not_its_size() -> None:
    inode = Inode()
    record = b"r" * 1024
    for _ in range(3000):
        inode.write(len(inode.current), record)
        inode.sync()
    assert len(inode.durable) == 3000 * 1024
    # (Each sync replays one op on the durable image; copying the whole file per
    # sync made this quadratic: 8000 appends took 11 s.)


@pytest.mark.trio
async def test_a_simulated_file_is_bounded_with_a_clear_error() -> None:
    storage = SimStorage()
    file = await storage.open("big")
    with pytest.raises(StorageError) as caught:
        await file.write(2**40, b"x")
    assert caught.value.errno == errno.EFBIG and "in memory" in str(caught.value)
    with pytest.raises(StorageError):
        await file.truncate(MAX_FILE_SIZE + 1)
    with pytest.raises(ValueError, match=r"0\.\.2\*\*63-1"):
        await file.write(2**64, b"x")
    assert await file.size() == 0  # nothing was written


@pytest.mark.trio
async def test_an_operation_under_way_when_its_file_is_closed_completes() -> None:
    storage = SimStorage(chaos=StorageChaosConfig(latency=(0.01, 0.01)))
    file = await storage.open("f")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(file.write, 0, b"data")
        await trio.sleep(0.001)
        await file.aclose()
    reopened = await storage.open("f")
    assert await reopened.read(0, 10) == b"data"  # as on a real file (RealStorage too)
    with pytest.raises(FileClosedError, match=r"storage.open\('f'\)"):
        await file.read(0, 1)


@pytest.mark.trio
async def test_a_missing_file_error_carries_its_errno_and_name() -> None:
    storage = SimStorage()
    with pytest.raises(FileNotFoundError) as caught:
        await storage.remove("nope")
    assert caught.value.errno == errno.ENOENT and caught.value.filename == "nope"


@pytest.mark.trio
async def test_a_failed_store_sync_leaves_its_changes_unsynced() -> None:
    storage = SimStorage(chaos=ALWAYS_FAILS)
    await storage.open("f")
    with pytest.raises(SyncFailed, match="1 unsynced create"):
        await storage.sync()
    after = storage.crash()
    # The create may or may not survive; it was not made durable by the failed sync.
    assert await after.list() in ([], ["f"])
    assert storage.fault_counts["sync_failure"] == 1


def test_chaos_config_errors_say_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"\(low, high\) tuple of seconds"):
        StorageChaosConfig(latency=[0, 0.001])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probability within"):
        StorageChaosConfig(sync_failure="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probability within"):
        StorageChaosConfig(hang=None)  # type: ignore[arg-type]


def test_a_context_without_storage_says_so_and_pretends_nothing() -> None:
    with pytest.raises(AttributeError):
        NO_STORAGE.directory  # noqa: B018
    with pytest.raises(RuntimeError, match="pass storage=RealStorage"):
        trio.run(NO_STORAGE.open, "f")


async def _writes_a_file_with_a_comma(ctx: ProcessContext) -> None:
    file = await ctx.storage.open("log,1")
    while not ctx.shutdown.is_set():
        await file.append(b"x" * 700)  # never synced: a crash loses or tears it
        await trio.sleep(0.01)


async def _crashes_it(ctx: WorkloadContext) -> None:
    for _ in range(3):
        await trio.sleep(0.05)
        await ctx.kill("disk", "crash", restart_after=0.01)
        while not ctx.is_running("disk"):  # noqa: ASYNC110
            await trio.sleep(0.01)
    # Every seed fails: the test is whether its storage faults replay by plan.
    raise AssertionError("planned failure")


def test_a_fault_on_a_file_with_a_comma_in_its_name_replays_by_plan() -> None:
    def builder() -> SimulationBuilder:
        return (
            SimulationBuilder()
            .set_chaos(ChaosConfig.default())
            .enable_buggify()
            .set_database(None)
            .register_process("disk", _writes_a_file_with_a_comma)
            .register_workload("crasher", _crashes_it)
            .set_seeds([4])
        )

    report = builder().record_timeline().run()
    injected = [f.id for f in report.runs[0].injected if f.family in ("lost_write", "torn_write")]
    assert injected and all("log%2C1" in fault for fault in injected)
    # The plan parses (a comma in a name used to split it), and the replay lets
    # through only faults of the plan.
    replay = builder().set_fault_plan(injected).record_timeline().run()
    assert replay.runs[0].injected
    assert {f.id for f in replay.runs[0].injected} <= set(injected)


def test_storage_latency_is_counted_in_the_report() -> None:
    async def disk(ctx: ProcessContext) -> None:
        file = await ctx.storage.open("f")
        for _ in range(10):
            await file.append(b"x")
        await ctx.shutdown.wait()

    async def idle(ctx: WorkloadContext) -> None:
        await trio.sleep(1)

    report = (
        SimulationBuilder()
        .enable_buggify()
        .set_attrition(Attrition(interval=0.5))
        .set_database(None)
        .register_process("disk", disk)
        .register_workload("idle", idle)
        .set_seeds([1])
        .run()
    )
    assert report.fault_totals["storage_latency"] >= 11  # open and ten appends

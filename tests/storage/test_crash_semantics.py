"""The crash contract of ``moonpool.storage``, in simulation: processes, workloads, kills.

Each test runs processes that use ``ctx.storage`` under default network chaos,
buggify and storage chaos (``StorageChaosConfig.default()``, or the one fault a
test is about turned up), on fixed seeds.  Processes note what they find in
``ctx.state``; workloads kill them at known points (``ctx.kill``) and a collector
copies the state per seed, for the test to check across seeds.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import trio

from moonpool.sim import (
    ChaosConfig,
    KillKind,
    ProcessContext,
    SimulationBuilder,
    SimulationReport,
    WorkloadContext,
    WorkloadFunction,
)
from moonpool.storage import (
    SECTOR,
    STORAGE_FAULT_FAMILIES,
    FileClosedError,
    SimStorage,
    StorageChaosConfig,
    StorageDown,
    StorageError,
    StorageFile,
    StorageProvider,
    SyncFailed,
)
from tests.sim.test_determinism import _run_in_subprocess
from tests.storage.sim_disk_workloads import (
    LOG_WRITER,
    Snapshots,
    collector,
    simulation_builder,
    sync_store,
    write_synced,
)

DISK = LOG_WRITER  # every test's process is called "disk"
HEADER = b"H" * 100  # synced first, so that later writes start inside a sector
PAYLOAD = bytes(1 + i % 251 for i in range(3000))  # never zero: spans six sector boundaries
OLD = b"o" * 3000
NEW = bytes(1 + i % 100 for i in range(2000))  # differs from OLD at every byte
OVER_AT = 100
SECOND = bytes(reversed(PAYLOAD))

UNSYNCED_FAULTS = ("lost_write", "torn_write", "undone_create", "undone_remove", "undone_rename")


def storage_chaos(**changes: Any) -> StorageChaosConfig:
    """The default storage chaos with the fault a test is about turned up."""
    chaos: StorageChaosConfig = msgspec.structs.replace(StorageChaosConfig.default(), **changes)
    return chaos


def simulation(
    seeds: Sequence[int],
    *,
    storage: StorageChaosConfig | None = None,
    sink: Snapshots | None = None,
    process: Callable[[ProcessContext], Awaitable[None]],
    workload: WorkloadFunction | type[Any],
) -> SimulationBuilder:
    """One process "disk", one workload, and a collector of ``ctx.state`` into ``sink``."""
    builder = (
        SimulationBuilder()
        .set_chaos(ChaosConfig.default())
        .enable_buggify()
        .set_storage_chaos(storage or StorageChaosConfig.default())
        .set_seeds(list(seeds))
        .set_settle_time(0.5)
        .register_process(DISK, process)
        .register_workload("script", workload)
    )
    if sink is not None:
        builder.register_workload("collect", collector(sink))
    return builder


def event(state: MutableMapping[str, Any], name: str) -> trio.Event:
    """The event ``name`` of this seed (made by whoever asks first: process or workload)."""
    found = state.get(name)
    if found is None:
        found = state[name] = trio.Event()
    assert isinstance(found, trio.Event)
    return found


async def read_all(storage: StorageProvider, name: str) -> bytes:
    file = await storage.open(name)
    try:
        return await file.read(0, await file.size())
    finally:
        await file.aclose()


def written(image: bytes, offset: int, data: bytes) -> bytes:
    """``image`` with ``data`` written at ``offset`` (a gap reads as zeros)."""
    result = bytearray(image)
    if offset > len(result):
        result.extend(bytes(offset - len(result)))
    result[offset : offset + len(data)] = data
    return bytes(result)


def fate(found: bytes, before: bytes, offset: int, data: bytes) -> str:
    """What a crash did to the one unsynced write of ``data`` at ``offset`` over ``before``."""
    if found == written(before, offset, data):
        return "kept"
    if found == before:
        return "lost"
    first = (offset // SECTOR + 1) * SECTOR  # boundaries strictly inside the write
    for boundary in range(first, offset + len(data), SECTOR):
        if found == written(before, offset, data[: boundary - offset]):
            return "torn"
    return f"other ({len(found)} bytes)"


def crash_and_restart(
    ready: str, done: str, kind: KillKind = "crash"
) -> Callable[[WorkloadContext], Awaitable[None]]:
    """A workload: once ``ready`` is set, kill the disk (``kind``), boot it, wait for ``done``."""

    async def script(ctx: WorkloadContext) -> None:
        await event(ctx.state, ready).wait()
        assert await ctx.kill(DISK, kind)
        ctx.state["kills"] = ctx.kills(DISK)
        # A restart_after would not do here: a workload waiting on an event has no
        # timer pending, and the runtime's restarts do not rescue it (a deadlock).
        assert await ctx.restart(DISK)
        await event(ctx.state, done).wait()

    return script


def faults_of(report: SimulationReport, *families: str) -> int:
    return sum(report.fault_totals.get(family, 0) for family in families)


def line_of(fn: Callable[..., object], text: str) -> int:
    """The line number in this file of the one line of ``fn`` that contains ``text``."""
    lines, start = inspect.getsourcelines(fn)
    [index] = [i for i, line in enumerate(lines) if text in line]
    return start + index


# -- 1. synced data survives every crash ---------------------------------------------------------


def test_synced_records_survive_every_crash() -> None:
    """Each boot reads back every record synced before the crash (``always`` in the process)."""
    sink: Snapshots = {}
    report = simulation_builder(sink=sink).set_seeds(list(range(25))).run()
    report.assert_success()
    assert len(sink) == 25
    assert report.fault_totals["crash"] == 25 * 12
    # The checks had something to check: boots after crashes with records synced,
    # and crashes that lost or tore the unsynced record after them.
    verified = [synced for state in sink.values() for _, synced in state["verified"]]
    assert len(verified) > 200
    assert sum(verified) > 1000
    assert report.fault_totals["lost_write"] > 0
    assert report.fault_totals["torn_write"] > 0


def test_the_synced_record_check_catches_a_write_published_before_its_sync() -> None:
    """The same simulation with a planted bug (publishing "synced" before ``sync()``) fails:
    the check above is not vacuous."""
    report = simulation_builder(sink={}, publish_before_sync=True).set_seeds(range(10)).run()
    assert len(report.failures) == 10
    assert {failure.kind for failure in report.failures} == {"assertion"}
    assert "every record synced before a crash is intact at the next boot" in (
        report.failures[0].error
    )


# -- 2. unsynced writes are kept, lost or torn ---------------------------------------------------


async def unsynced_writer(ctx: ProcessContext) -> None:
    """Two synced files, then one unsynced write to each: an append and an overwrite."""
    storage = ctx.storage
    if ctx.incarnation == 0:
        grow = await storage.open("grow")
        over = await storage.open("over")
        await sync_store(storage)
        await write_synced(grow, 0, HEADER)
        await write_synced(over, 0, OLD)
        assert await grow.append(PAYLOAD) == len(HEADER)
        await over.write(OVER_AT, NEW)
        event(ctx.state, "written").set()
    else:
        ctx.state["fates"] = {
            "grow": fate(await read_all(storage, "grow"), HEADER, len(HEADER), PAYLOAD),
            "over": fate(await read_all(storage, "over"), OLD, OVER_AT, NEW),
        }
        event(ctx.state, "classified").set()
    await ctx.shutdown.wait()


def test_a_crash_keeps_loses_or_tears_each_unsynced_write() -> None:
    sink: Snapshots = {}
    report = simulation(
        range(40),
        sink=sink,
        process=unsynced_writer,
        workload=crash_and_restart("written", "classified"),
    ).run()
    report.assert_success()
    seen: dict[str, dict[str, int]] = {"grow": {}, "over": {}}
    for run in report.runs:
        fates = sink[run.seed]["fates"]
        for name, what in fates.items():
            seen[name][what] = seen[name].get(what, 0) + 1
        # The seed's fault counts say the same as what the next boot found.
        outcomes = list(fates.values())
        assert run.faults.get("lost_write", 0) == outcomes.count("lost"), run.seed
        assert run.faults.get("torn_write", 0) == outcomes.count("torn"), run.seed
    for name in seen:
        # Each fate, over the seeds; nothing else (garbage, a tear off a boundary) ever.
        assert set(seen[name]) == {"kept", "lost", "torn"}, seen
    assert report.fault_totals["lost_write"] > 0
    assert report.fault_totals["torn_write"] > 0


# -- 3. a graceful reboot and the end of its grace period lose nothing; a wipe loses all ---------


def unsynced_then_reboot(*, deaf: bool) -> Callable[[ProcessContext], Awaitable[None]]:
    """Creates, writes and renames, syncing nothing; ``deaf``: ignores ``ctx.shutdown``."""

    async def disk(ctx: ProcessContext) -> None:
        storage = ctx.storage
        if ctx.incarnation == 0:
            data = await storage.open("data")
            await data.write(0, PAYLOAD)
            await data.write(100, NEW)
            tmp = await storage.open("tmp")
            await tmp.write(0, b"renamed")
            await storage.rename("tmp", "moved")
            event(ctx.state, "written").set()
            if deaf:
                await trio.sleep_forever()  # killed when the grace period ends
        else:
            ctx.state["after"] = {
                name: await read_all(storage, name) for name in await storage.list()
            }
            event(ctx.state, "classified").set()
        await ctx.shutdown.wait()

    return disk


@pytest.mark.parametrize("deaf", [False, True], ids=["returns", "killed_after_grace"])
def test_a_reboot_loses_nothing_unsynced(deaf: bool) -> None:
    sink: Snapshots = {}
    report = (
        simulation(
            range(15),
            sink=sink,
            process=unsynced_then_reboot(deaf=deaf),
            workload=crash_and_restart("written", "classified", kind="reboot"),
        )
        .set_shutdown_grace(2.0)
        .run()
    )
    report.assert_success()
    expected = {"data": written(PAYLOAD, 100, NEW), "moved": b"renamed"}
    assert all(state["after"] == expected for state in sink.values())
    assert report.fault_totals["reboot"] == 15
    assert faults_of(report, *UNSYNCED_FAULTS) == 0
    grace_expired = [
        any(e.event == "grace_expired" for e in run.process_events) for run in report.runs
    ]
    assert grace_expired == [deaf] * 15


async def wiped(ctx: ProcessContext) -> None:
    storage = ctx.storage
    if ctx.incarnation == 0:
        data = await storage.open("data")
        await sync_store(storage)
        await write_synced(data, 0, PAYLOAD)
        unsynced = await storage.open("unsynced")
        await unsynced.write(0, b"x")
        ctx.state["before"] = await storage.list()
        event(ctx.state, "written").set()
    else:
        ctx.state["after"] = await storage.list()
        ctx.state["exists"] = await storage.exists("data")
        event(ctx.state, "classified").set()
    await ctx.shutdown.wait()


def test_a_wipe_empties_the_store_synced_data_too() -> None:
    sink: Snapshots = {}
    report = simulation(
        range(10),
        sink=sink,
        process=wiped,
        workload=crash_and_restart("written", "classified", kind="wipe"),
    ).run()
    report.assert_success()
    for state in sink.values():
        assert state["before"] == ["data", "unsynced"]
        assert state["after"] == []
        assert state["exists"] is False
        assert state["kills"] == {"crash": 0, "reboot": 0, "wipe": 1}
    assert report.fault_totals["wipe"] == 10
    assert "crash" not in report.fault_totals


# -- 4. an unsynced rename or create may be undone; never once the store is synced ---------------


def renamer(*, then_sync: bool) -> Callable[[ProcessContext], Awaitable[None]]:
    """Renames a synced file, then creates one and syncs *its* data; ``then_sync``: the store."""

    async def disk(ctx: ProcessContext) -> None:
        storage = ctx.storage
        if ctx.incarnation == 0:
            original = await storage.open("a")
            await sync_store(storage)
            await write_synced(original, 0, PAYLOAD)
            await storage.rename("a", "b")
            created = await storage.open("c")
            await write_synced(created, 0, b"c")  # the file's data; not its creation
            if then_sync:
                await sync_store(storage)
            event(ctx.state, "renamed").set()
        else:
            ctx.state["after"] = {
                name: await read_all(storage, name) for name in await storage.list()
            }
            event(ctx.state, "classified").set()
        await ctx.shutdown.wait()

    return disk


def test_an_unsynced_rename_or_create_may_be_undone_newest_first() -> None:
    sink: Snapshots = {}
    report = simulation(
        range(30),
        sink=sink,
        process=renamer(then_sync=False),
        workload=crash_and_restart("renamed", "classified"),
    ).run()
    report.assert_success()
    seen = {tuple(sorted(state["after"])) for state in sink.values()}
    # Both undone, the create undone, neither: a prefix of the changes is kept, so
    # never the create without the rename before it (("a", "c")).
    assert seen == {("a",), ("b",), ("b", "c")}
    for state in sink.values():
        after = state["after"]
        assert after.get("a", after.get("b")) == PAYLOAD  # synced data, whatever its name
        assert after.get("c", b"c") == b"c"
    assert report.fault_totals["undone_rename"] > 0
    assert report.fault_totals["undone_create"] > 0


async def replacer(ctx: ProcessContext) -> None:
    """The atomic replace: write and sync a new file, rename it over the old, no store sync."""
    storage = ctx.storage
    if ctx.incarnation == 0:
        final = await storage.open("final")
        await sync_store(storage)
        await write_synced(final, 0, OLD)
        tmp = await storage.open("tmp")
        await write_synced(tmp, 0, PAYLOAD)
        await storage.rename("tmp", "final")
        event(ctx.state, "replaced").set()
    else:
        ctx.state["after"] = {name: await read_all(storage, name) for name in await storage.list()}
        event(ctx.state, "classified").set()
    await ctx.shutdown.wait()


def test_an_unsynced_atomic_replace_leaves_the_old_file_or_the_new() -> None:
    sink: Snapshots = {}
    report = simulation(
        range(30),
        sink=sink,
        process=replacer,
        workload=crash_and_restart("replaced", "classified"),
    ).run()
    report.assert_success()
    old, created, new = {"final": OLD}, {"final": OLD, "tmp": PAYLOAD}, {"final": PAYLOAD}
    outcomes = [state["after"] for state in sink.values()]
    assert all(after in (old, created, new) for after in outcomes)
    assert all(outcome in outcomes for outcome in (old, created, new))


def test_a_synced_store_undoes_no_rename_or_create() -> None:
    sink: Snapshots = {}
    report = simulation(
        range(30),
        sink=sink,
        process=renamer(then_sync=True),
        workload=crash_and_restart("renamed", "classified"),
    ).run()
    report.assert_success()
    assert all(state["after"] == {"b": PAYLOAD, "c": b"c"} for state in sink.values())
    assert report.fault_totals["crash"] == 30
    assert faults_of(report, "undone_create", "undone_remove", "undone_rename") == 0


# -- 5. a crashed incarnation's storage is down; a closed file is closed -------------------------


def store_calls(storage: StorageProvider) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "open": lambda: storage.open("other"),
        "list": storage.list,
        "exists": lambda: storage.exists("data"),
        "remove": lambda: storage.remove("data"),
        "rename": lambda: storage.rename("data", "moved"),
        "sync": storage.sync,
    }


def file_calls(file: StorageFile) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "read": lambda: file.read(0, 1),
        "write": lambda: file.write(0, b"late"),
        "append": lambda: file.append(b"late"),
        "size": file.size,
        "truncate": lambda: file.truncate(0),
        "file sync": file.sync,
    }


async def raising(
    error: type[Exception], calls: dict[str, Callable[[], Awaitable[object]]]
) -> list[str]:
    """The calls that raise ``error`` (any other exception propagates)."""
    names = []
    for name, call in calls.items():
        try:
            await call()
        except error:
            names.append(name)
    return names


FILE_CALLS = ["read", "write", "append", "size", "truncate", "file sync"]
ALL_CALLS = ["open", "list", "exists", "remove", "rename", "sync", *FILE_CALLS]


async def doomed(ctx: ProcessContext) -> None:
    storage = ctx.storage
    if ctx.incarnation == 0:
        data = await storage.open("data")
        await sync_store(storage)
        await data.write(0, b"unsynced")
        ctx.state["handles"] = (storage, data)
        event(ctx.state, "opened").set()
        try:
            await ctx.shutdown.wait()  # crashed here
        finally:
            # Cancelled: a call that reached a checkpoint would raise Cancelled, and
            # this note would never be made.
            calls = store_calls(storage) | file_calls(data)
            ctx.state["down in finally"] = await raising(StorageDown, calls)
        return
    old_storage, _ = ctx.state["handles"]
    ctx.state["a new store"] = storage is not old_storage and isinstance(storage, SimStorage)
    ctx.state["listed"] = await storage.list()
    file = await storage.open("data")
    await file.aclose()
    await file.aclose()  # a no-op
    ctx.state["closed"] = await raising(FileClosedError, file_calls(file))
    ctx.state["exists"] = await storage.exists("data")  # the store is fine
    event(ctx.state, "checked").set()
    await ctx.shutdown.wait()


class UsesDeadHandles:
    async def run(self, ctx: WorkloadContext) -> None:
        await event(ctx.state, "opened").wait()
        storage, file = ctx.state["handles"]
        assert await ctx.kill(DISK, "crash")
        calls = store_calls(storage) | file_calls(file)
        ctx.state["alive"] = storage.alive
        ctx.state["down from workload"] = await raising(StorageDown, calls)
        assert await ctx.restart(DISK)
        await event(ctx.state, "checked").wait()
        ctx.state["still down"] = await raising(StorageDown, calls)
        try:
            await storage.list()
        except StorageDown as exc:
            ctx.state["error"] = exc


def test_a_crashed_incarnations_storage_and_files_raise_storage_down() -> None:
    sink: Snapshots = {}
    report = simulation(range(5), sink=sink, process=doomed, workload=UsesDeadHandles).run()
    report.assert_success()
    for state in sink.values():
        assert state["alive"] is False
        assert state["down in finally"] == ALL_CALLS
        assert state["down from workload"] == ALL_CALLS
        assert state["still down"] == ALL_CALLS  # the next boot does not revive the old view
        assert isinstance(state["error"], StorageError)
        assert "has crashed" in str(state["error"])
        assert state["a new store"] is True
        assert state["listed"] == ["data"]
        assert state["closed"] == FILE_CALLS
        assert state["exists"] is True


async def slow_writer(ctx: ProcessContext) -> None:
    storage = ctx.storage
    data = await storage.open("data")
    if ctx.incarnation == 0:
        await sync_store(storage)
        event(ctx.state, "writing").set()
        await data.write(0, PAYLOAD)  # crashed while this takes its time
        ctx.state["wrote"] = True
    else:
        ctx.state["size"] = await data.size()
        event(ctx.state, "classified").set()
    await ctx.shutdown.wait()


async def crash_mid_write(ctx: WorkloadContext) -> None:
    await event(ctx.state, "writing").wait()
    await trio.sleep(0.1)  # the write takes 0.2 s at least
    assert await ctx.kill(DISK, "crash")
    assert await ctx.restart(DISK)
    await event(ctx.state, "classified").wait()


def test_an_operation_cut_short_by_a_crash_did_not_happen() -> None:
    sink: Snapshots = {}
    report = simulation(
        range(15),
        storage=storage_chaos(latency=(0.2, 0.3)),
        sink=sink,
        process=slow_writer,
        workload=crash_mid_write,
    ).run()
    report.assert_success()
    assert all(state["size"] == 0 and "wrote" not in state for state in sink.values())
    assert faults_of(report, *UNSYNCED_FAULTS) == 0  # nothing pending: no fate to draw


# -- 6. a failed sync drops its writes (as Linux does); once chaos is over, sync works -----------


async def sync_fails(ctx: ProcessContext) -> None:
    storage = ctx.storage
    data = await storage.open("data")
    with contextlib.suppress(SyncFailed):  # (if it fails, a crash may undo the create)
        await storage.sync()
    failures: list[BaseException] = ctx.state.setdefault("sync failures", [])
    if ctx.incarnation == 0:
        await data.write(0, PAYLOAD)
        try:
            await data.sync()
        except SyncFailed as exc:
            failures.append(exc)
        event(ctx.state, "written").set()
    elif ctx.incarnation == 1:  # still in the run phase, chaos on
        ctx.state["fate"] = fate(await read_all(storage, "data"), b"", 0, PAYLOAD)
        await data.write(0, SECOND)
        try:
            await data.sync()
        except SyncFailed as exc:
            failures.append(exc)
        event(ctx.state, "rewritten").set()
        await event(ctx.state, "chaos over").wait()
        # The failed sync dropped SECOND: syncing again alone would make nothing
        # durable; it must be written again.  (A SyncFailed now fails the seed.)
        await data.write(0, SECOND)
        await data.sync()
        await storage.sync()
        event(ctx.state, "synced").set()
    else:
        ctx.state["final"] = await read_all(storage, "data")
        event(ctx.state, "final read").set()
    await ctx.shutdown.wait()


class CrashAfterFailedSync:
    async def run(self, ctx: WorkloadContext) -> None:
        await event(ctx.state, "written").wait()
        assert await ctx.kill(DISK, "crash")
        assert await ctx.restart(DISK)
        await event(ctx.state, "rewritten").wait()

    async def check(self, ctx: WorkloadContext) -> None:
        event(ctx.state, "chaos over").set()
        await event(ctx.state, "synced").wait()
        # A crash now: what that sync covered is durable.  (After the run phase a
        # crashed process boots again at once.)
        assert await ctx.kill(DISK, "crash")
        await event(ctx.state, "final read").wait()


def test_a_failed_sync_drops_its_writes_and_sync_works_after_chaos() -> None:
    sink: Snapshots = {}
    report = simulation(
        range(20),
        storage=storage_chaos(sync_failure=1.0),
        sink=sink,
        process=sync_fails,
        workload=CrashAfterFailedSync,
    ).run()
    report.assert_success()
    fates = {state["fate"] for state in sink.values()}
    # Not kept, not even torn: the writes a failed sync covered never reach the disk.
    assert fates == {"lost"}
    for state in sink.values():
        assert len(state["sync failures"]) == 2
        assert all(isinstance(exc, StorageError) for exc in state["sync failures"])
        assert "were dropped" in str(state["sync failures"][0])
        assert state["final"] == SECOND
    # The file syncs' two per seed, and the store's at each boot during the run phase;
    # none in the check phase (the final sync there succeeded).
    assert report.fault_totals["sync_failure"] >= 2 * 20


# -- 7. a hung operation -------------------------------------------------------------------------


async def hangs_without_timeout(ctx: ProcessContext) -> None:
    data = await ctx.storage.open("data")  # with hang=1.0, the first operation never returns
    await data.write(0, b"data")
    event(ctx.state, "written").set()
    await ctx.shutdown.wait()


async def waits_for_the_write(ctx: WorkloadContext) -> None:
    await event(ctx.state, "written").wait()


def test_a_hung_operation_without_a_timeout_is_a_deadlock_at_the_users_line() -> None:
    report = simulation(
        range(3),
        storage=storage_chaos(hang=1.0),
        process=hangs_without_timeout,
        workload=waits_for_the_write,
    ).run()
    assert len(report.failures) == 3
    hung = line_of(hangs_without_timeout, "await ctx.storage.open")
    waiting = line_of(waits_for_the_write, ".wait()")
    for failure in report.failures:
        assert failure.kind == "deadlock"
        assert "in the run phase" in failure.error
        assert (
            f"process 'disk' (incarnation 0) waits at {Path(__file__)}:{hung} "
            f"in hangs_without_timeout" in failure.traceback
        ), failure.traceback
        assert (
            f"workload 'script' (run) waits at {Path(__file__)}:{waiting} "
            f"in waits_for_the_write" in failure.traceback
        ), failure.traceback
        # What hung is on the timeline.
        assert any(e.kind == "fault" and "open data hangs" in e.text for e in failure.timeline_tail)
    assert report.fault_totals["storage_hang"] == 3


async def opens_patiently_then_writes(ctx: ProcessContext) -> None:
    data: StorageFile | None = None
    while data is None:
        with trio.move_on_after(0.5):
            data = await ctx.storage.open("data")
    await data.write(0, b"data")  # no timeout: a hang here is for ever
    event(ctx.state, "written").set()
    await ctx.shutdown.wait()


def test_a_hung_write_is_reported_at_the_write() -> None:
    """Half the operations hang: the open is retried with a timeout, the write is not."""
    report = simulation(
        range(12),
        storage=storage_chaos(hang=0.5),
        process=opens_patiently_then_writes,
        workload=waits_for_the_write,
    ).run()
    line = line_of(opens_patiently_then_writes, "await data.write")
    where = f"waits at {Path(__file__)}:{line} in opens_patiently_then_writes"
    failed = {failure.seed for failure in report.failures}
    assert 0 < len(failed) < 12, "some writes hang, others not"
    for failure in report.failures:
        assert failure.kind == "deadlock"
        assert where in failure.traceback, failure.traceback
    assert report.fault_totals["storage_hang"] > len(failed)  # opens hung too


async def writes_with_a_timeout(ctx: ProcessContext) -> None:
    storage = ctx.storage
    try:
        with anyio.fail_after(1):
            data = await storage.open("data")
            await data.write(0, b"data")
    except TimeoutError:
        ctx.state["timed out at"] = trio.current_time()
    event(ctx.state, "written").set()
    await event(ctx.state, "chaos over").wait()
    with anyio.fail_after(1):  # the hangs were the run phase's chaos: over now
        data = await storage.open("data")
        await data.write(0, b"data")
        ctx.state["after chaos"] = await data.read(0, 4)
    event(ctx.state, "checked").set()
    await ctx.shutdown.wait()


class WaitsThenChecks:
    async def run(self, ctx: WorkloadContext) -> None:
        await event(ctx.state, "written").wait()

    async def check(self, ctx: WorkloadContext) -> None:
        event(ctx.state, "chaos over").set()
        await event(ctx.state, "checked").wait()


def test_a_timeout_around_a_hung_operation_lets_the_seed_pass() -> None:
    sink: Snapshots = {}
    report = simulation(
        range(5),
        storage=storage_chaos(hang=1.0),
        sink=sink,
        process=writes_with_a_timeout,
        workload=WaitsThenChecks,
    ).run()
    report.assert_success()
    for state in sink.values():
        assert state["timed out at"] == pytest.approx(1.0)
        assert state["after chaos"] == b"data"
    assert report.fault_totals["storage_hang"] == 5


# -- 8. read corruption flips one bit of what is read, never of what is stored -------------------


def bits_apart(a: bytes, b: bytes) -> int:
    """How many bits ``a`` and ``b`` differ by (-1 if their lengths differ)."""
    if len(a) != len(b):
        return -1
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


async def reads_twice(ctx: ProcessContext) -> None:
    storage = ctx.storage
    data = await storage.open("data")
    await sync_store(storage)
    await write_synced(data, 0, PAYLOAD)
    reads = [await data.read(0, len(PAYLOAD)) for _ in range(5)]
    reads.append(await data.read(1000, 100))
    ctx.state["run reads"] = reads
    ctx.state["past the end"] = await data.read(len(PAYLOAD), 10)
    event(ctx.state, "written").set()
    await event(ctx.state, "chaos over").wait()
    ctx.state["check read"] = await data.read(0, len(PAYLOAD))
    event(ctx.state, "checked").set()
    await ctx.shutdown.wait()


def test_read_corruption_flips_one_bit_of_the_read_and_none_on_disk() -> None:
    sink: Snapshots = {}
    report = simulation(
        range(5),
        storage=storage_chaos(read_corruption=1.0),
        sink=sink,
        process=reads_twice,
        workload=WaitsThenChecks,
    ).run()
    report.assert_success()
    for state in sink.values():
        *whole, part = state["run reads"]
        assert [bits_apart(read, PAYLOAD) for read in whole] == [1] * 5
        assert bits_apart(part, PAYLOAD[1000:1100]) == 1
        assert len(set(whole)) > 1, "a different bit each time"
        assert state["past the end"] == b""
        assert state["check read"] == PAYLOAD  # the disk kept the right bytes
    assert report.fault_totals["read_corruption"] == 5 * 6


# -- 9. determinism ------------------------------------------------------------------------------


HELPER = Path(__file__).with_name("sim_disk_workloads.py")


def test_same_seed_same_trace_with_storage_faults() -> None:
    seeds = [3, 4, 5]
    one = simulation_builder(sink={}).set_seeds(seeds).set_check_determinism().run()
    two = simulation_builder(sink={}).set_seeds(seeds).run()
    one.assert_success()
    assert [r.trace_hash for r in one.runs] == [r.trace_hash for r in two.runs]
    assert [r.faults for r in one.runs] == [r.faults for r in two.runs]
    assert [r.events for r in one.runs] == [r.events for r in two.runs]
    assert len({r.trace_hash for r in one.runs}) == 3
    assert all(r.faults.get("lost_write", 0) + r.faults.get("torn_write", 0) for r in one.runs)


def test_same_seed_same_trace_with_storage_faults_across_hash_seeds() -> None:
    seed = 31337
    a = _run_in_subprocess(seed, "0", HELPER)
    b = _run_in_subprocess(seed, "4242", HELPER)
    runs_a, runs_b = a["runs"], b["runs"]
    assert isinstance(runs_a, list)
    assert isinstance(runs_b, list)
    [run_a], [run_b] = runs_a, runs_b
    for key in ("trace_hash", "faults", "events", "sim_time"):
        assert run_a[key] == run_b[key], key
    assert run_a["faults"]["crash"] == 12
    here = simulation_builder(sink={}).set_seeds([seed]).run()
    assert here.runs[0].trace_hash == run_a["trace_hash"]
    assert here.runs[0].faults == run_a["faults"]


# -- 10. a crash's outcome is on the timeline, and its faults replay -----------------------------


def test_a_crash_and_what_it_kept_are_on_the_timeline() -> None:
    report = simulation_builder(sink={}, crashes=4).set_seeds([8]).record_timeline().run()
    report.assert_success()
    [run] = report.runs
    crashes = [e for e in run.timeline if e.kind == "storage" and e.text.startswith("crash: ")]
    assert len(crashes) == run.faults["crash"] == 4
    assert all(e.host == DISK for e in crashes)
    assert any("unsynced op(s) kept" in e.text for e in crashes)
    assert all("unsynced op(s) kept" in e.text or "nothing was unsynced" in e.text for e in crashes)
    injected = {fault.family for fault in run.injected}
    assert injected & {"lost_write", "torn_write"}
    assert injected <= set(STORAGE_FAULT_FAMILIES)  # scripted kills are no faults to shrink
    lost = [e for e in run.timeline if e.kind == "fault" and "bytes at" in e.text]
    assert lost and all(e.host == DISK for e in lost)


def test_a_failing_seeds_storage_faults_are_in_its_failure_and_replay() -> None:
    buggy = simulation_builder(sink={}, publish_before_sync=True)
    report = buggy.set_seeds([2]).record_timeline().run()
    [failure] = report.failures
    tail = failure.timeline_tail
    assert any(e.kind == "storage" and e.text.startswith("crash: ") for e in tail), tail
    assert any(e.kind == "fault" and (" lost" in e.text or " torn " in e.text) for e in tail)
    # The storage faults alone, as a fault plan, fail the seed the same way; every
    # fault but them, and it passes: the lost or torn write is what broke it.
    injected = report.runs[0].injected
    storage_faults = [f.id for f in injected if f.family in STORAGE_FAULT_FAMILIES]
    other_faults = [f.id for f in injected if f.family not in STORAGE_FAULT_FAMILIES]
    assert storage_faults
    again = simulation_builder(sink={}, publish_before_sync=True).set_seeds([2])
    replayed = again.set_fault_plan(storage_faults).run()
    assert [f.error for f in replayed.failures] == [failure.error]
    spared = simulation_builder(sink={}, publish_before_sync=True).set_seeds([2])
    spared.set_fault_plan(other_faults or "none").run().assert_success()

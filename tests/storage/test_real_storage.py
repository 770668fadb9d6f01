"""``RealStorage`` beyond the shared conformance suite: what it does on a real disk.

These touch the file system under ``tmp_path`` only.  They carry no marker:
the markers in ``pyproject.toml`` are for slow and real-network tests, and these
are neither.
"""

from __future__ import annotations

import errno
import gc
import os
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from moonpool.storage._provider import (
    FileClosedError,
    InvalidFileName,
    StorageError,
    StorageFile,
    StorageProvider,
    SyncFailed,
)
from moonpool.storage._real_storage import RealFile, RealStorage

pytestmark = pytest.mark.anyio


def _disk_bytes(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read()


async def disk_bytes(path: Path) -> bytes:
    """What is really in the file, read behind the store's back."""
    return await anyio.to_thread.run_sync(_disk_bytes, path)


async def disk_listing(path: Path) -> list[str]:
    return sorted(await anyio.to_thread.run_sync(os.listdir, path))


def _raise_eio(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


# -- construction and the directory -------------------------------------------


async def test_implements_the_protocols(tmp_path: Path) -> None:
    store = RealStorage(tmp_path)
    assert isinstance(store, StorageProvider)
    async with await store.open("f") as file:
        assert isinstance(file, RealFile)
        assert isinstance(file, StorageFile)


async def test_directory_is_created_by_first_use_not_by_the_constructor(
    tmp_path: Path,
) -> None:
    place = tmp_path / "a" / "b" / "store"
    store = RealStorage(place)
    assert not await anyio.Path(tmp_path / "a").exists(), "the constructor must do no I/O"
    assert await store.list() == []
    assert await anyio.Path(place).is_dir()


async def test_directory_is_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = RealStorage("relative")
    assert store.directory == tmp_path / "relative"
    assert isinstance(store.directory, Path)
    assert RealStorage(str(tmp_path)).directory == tmp_path
    monkeypatch.chdir(tmp_path.parent)
    async with await store.open("f"):
        pass
    assert await disk_listing(tmp_path / "relative") == ["f"], "a later chdir moves nothing"


async def test_a_path_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "plain"
    await anyio.Path(not_a_dir).write_bytes(b"I am a file")
    store = RealStorage(not_a_dir)
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        await store.list()
    with pytest.raises(NotADirectoryError, match="plain"):
        await store.open("f")
    under_a_file = RealStorage(not_a_dir / "store")
    with pytest.raises(NotADirectoryError, match="parent of it is not a directory"):
        await under_a_file.exists("f")
    assert await disk_bytes(not_a_dir) == b"I am a file"


async def test_repr(tmp_path: Path) -> None:
    store = RealStorage(tmp_path)
    assert repr(store) == f"RealStorage({str(tmp_path)!r})"
    file = await store.open("log")
    assert repr(file) == f"<RealFile 'log' in {str(tmp_path)!r} (open)>"
    await file.aclose()
    assert repr(file) == f"<RealFile 'log' in {str(tmp_path)!r} (closed)>"


# -- what lands on disk -------------------------------------------------------


async def test_files_really_appear_with_their_bytes(tmp_path: Path) -> None:
    store = RealStorage(tmp_path)
    async with await store.open("data") as file:
        await file.write(0, b"hello")
        await file.write(8, b"world")
        assert await file.append(b"!") == 13
        await file.sync()
    assert await disk_listing(tmp_path) == ["data"]
    assert await disk_bytes(tmp_path / "data") == b"hello\0\0\0world!"
    await store.rename("data", "renamed")
    assert await disk_listing(tmp_path) == ["renamed"]
    assert await disk_bytes(tmp_path / "renamed") == b"hello\0\0\0world!"
    await store.remove("renamed")
    assert await disk_listing(tmp_path) == []


async def test_sees_files_written_behind_its_back(tmp_path: Path) -> None:
    await anyio.Path(tmp_path / "external").write_bytes(b"from outside")
    store = RealStorage(tmp_path)
    assert await store.list() == ["external"]
    async with await store.open("external") as file:
        assert await file.read(0, 100) == b"from outside"


async def test_list_leaves_out_subdirectories_and_unnameable_entries_only(
    tmp_path: Path,
) -> None:
    await anyio.Path(tmp_path / "subdir").mkdir()
    await anyio.Path(tmp_path / "subdir" / "nested").write_bytes(b"")
    await anyio.Path(tmp_path / ".hidden").write_bytes(b"")
    await anyio.Path(tmp_path / "file.tmp").write_bytes(b"")
    await anyio.Path(tmp_path / "link").symlink_to(tmp_path / "file.tmp")
    # A name that is not UTF-8: no call of the store could name it, so it is not listed.
    fd = os.open(os.fsencode(tmp_path) + b"/\xff", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    store = RealStorage(tmp_path)
    # A symbolic link is not a file of the store either: it could lead outside it.
    assert await store.list() == [".hidden", "file.tmp"]
    assert not await store.exists("subdir"), "a subdirectory is not a file of the store"
    assert not await store.exists("link")
    with pytest.raises(InvalidFileName, match="is a symbolic link"):
        await store.open("link")


async def test_names_cannot_escape_the_directory(tmp_path: Path) -> None:
    place = tmp_path / "store"
    store = RealStorage(place)
    await (await store.open("inside")).aclose()
    await anyio.Path(tmp_path / "outside").write_bytes(b"precious")
    for escape in ("../x", "../outside", "..", "/etc/passwd", "sub/x", "..\\x"):
        with pytest.raises(InvalidFileName):
            await store.open(escape)
        with pytest.raises(InvalidFileName):
            await store.remove(escape)
        with pytest.raises(InvalidFileName):
            await store.rename("inside", escape)
        with pytest.raises(InvalidFileName):
            await store.rename(escape, "inside")
    assert await disk_listing(tmp_path) == ["outside", "store"], "nothing created outside"
    assert await disk_listing(place) == ["inside"]
    assert await disk_bytes(tmp_path / "outside") == b"precious"


async def test_large_payload_round_trips(tmp_path: Path) -> None:
    data = bytes(range(256)) * (5 * 4096)  # 5 MiB
    store = RealStorage(tmp_path)
    async with await store.open("big") as file:
        await file.write(0, data)
        assert await file.read(0, len(data) + 1) == data
        assert await file.read(0, 1 << 62) == data, "a huge size must not allocate it"
        assert await file.read(1 << 62, 1) == b""
    assert await disk_bytes(tmp_path / "big") == data


# -- sync failures ------------------------------------------------------------


async def test_a_failed_file_fsync_raises_sync_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RealStorage(tmp_path)
    async with await store.open("wal") as file:
        await file.write(0, b"record")
        monkeypatch.setattr(os, "fsync", _raise_eio)
        with pytest.raises(SyncFailed, match="wal") as info:
            await file.sync()
        assert isinstance(info.value, StorageError)
        assert info.value.errno == errno.EIO
        cause = info.value.__cause__
        assert isinstance(cause, OSError)
        assert cause.errno == errno.EIO
        monkeypatch.undo()
        await file.sync()  # the file is still usable
        assert await file.read(0, 10) == b"record"


async def test_a_failed_directory_fsync_raises_sync_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RealStorage(tmp_path)
    await (await store.open("a")).aclose()
    monkeypatch.setattr(os, "fsync", _raise_eio)
    with pytest.raises(SyncFailed, match="not durable") as info:
        await store.sync()
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(SyncFailed, match="which happened"):
        await store.rename("a", "b")
    monkeypatch.undo()
    assert await store.list() == ["b"], "the rename itself was done; only its sync failed"


# -- concurrency and closing --------------------------------------------------


async def test_concurrent_appends_from_many_tasks_do_not_overlap(tmp_path: Path) -> None:
    store = RealStorage(tmp_path)
    records = {
        (task, n): f"<task {task} record {n}>".encode() * (1 + (task * 7 + n) % 5)
        for task in range(20)
        for n in range(10)
    }
    offsets: dict[tuple[int, int], int] = {}
    async with await store.open("log") as file:

        async def appender(task: int) -> None:
            for n in range(10):
                offsets[task, n] = await file.append(records[task, n])

        async with anyio.create_task_group() as tg:
            for task in range(20):
                tg.start_soon(appender, task)

    spans = sorted((offset, key) for key, offset in offsets.items())
    expected = b"".join(records[key] for _, key in spans)
    at = 0
    for offset, key in spans:
        assert offset == at, f"record {key} at {offset}, expected {at}: overlap or gap"
        at += len(records[key])
    assert await disk_bytes(tmp_path / "log") == expected


async def test_aclose_waits_for_a_running_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The descriptor is closed only after the ``pread`` running on it has finished."""
    store = RealStorage(tmp_path)
    file = await store.open("f")
    await file.write(0, b"data")
    entered, release = threading.Event(), threading.Event()
    real_pread = os.pread

    def slow_pread(fd: int, size: int, offset: int) -> bytes:
        entered.set()
        release.wait(10)
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", slow_pread)
    got: list[bytes] = []
    closed = anyio.Event()

    async def reader() -> None:
        got.append(await file.read(0, 100))

    async def closer() -> None:
        await file.aclose()
        closed.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.to_thread.run_sync(entered.wait, 10)
            tg.start_soon(closer)
            await anyio.wait_all_tasks_blocked()
            assert not closed.is_set(), "aclose must wait for the running read"
            with pytest.raises(FileClosedError, match="'f'"):
                await file.size()  # but new calls are refused at once
            release.set()
    assert got == [b"data"], "the running read finished on an open descriptor"
    assert closed.is_set()
    assert "closed" in repr(file)
    await file.aclose()


async def test_closed_file_error_names_the_file(tmp_path: Path) -> None:
    store = RealStorage(tmp_path)
    file = await store.open("journal")
    await file.aclose()
    with pytest.raises(FileClosedError, match=r"'journal'.*closed.*storage\.open\('journal'\)"):
        await file.read(0, 1)


async def test_a_leaked_file_is_closed_with_a_resource_warning(tmp_path: Path) -> None:
    store = RealStorage(tmp_path)
    file = await store.open("leak")
    with pytest.warns(ResourceWarning, match="unclosed <RealFile 'leak'"):
        del file  # CPython closes it here: this was the only reference
    gc.collect()


async def test_a_subdirectory_is_not_a_file_of_the_store(tmp_path: Path) -> None:
    await anyio.Path(tmp_path / "dir").mkdir()
    store = RealStorage(tmp_path)
    await (await store.open("f")).aclose()
    for refused in (store.open("dir"), store.remove("dir"), store.rename("dir", "x")):
        with pytest.raises(InvalidFileName, match="is not a regular file"):
            await refused
    with pytest.raises(InvalidFileName, match="is not a regular file"):
        await store.rename("f", "dir")  # nor may a file replace one
    assert (tmp_path / "dir").is_dir() and not (tmp_path / "x").exists()


async def test_a_dangling_link_cannot_create_a_file_outside_the_store(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    (store_dir / "evil").symlink_to(tmp_path / "created-outside")
    store = RealStorage(store_dir)
    with pytest.raises(InvalidFileName, match="symbolic link"):
        await store.open("evil")
    assert not (tmp_path / "created-outside").exists()


async def test_an_io_error_of_the_disk_is_a_storage_error_with_its_errno(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from moonpool.storage import StorageError, _real_storage

    store = RealStorage(tmp_path)
    file = await store.open("f")

    def no_space(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_real_storage.os, "pwrite", no_space)
    with pytest.raises(StorageError) as caught:
        await file.write(0, b"data")
    assert caught.value.errno == errno.ENOSPC and "No space left" in str(caught.value)
    await file.aclose()


async def test_a_cancel_does_not_abandon_a_running_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write whose thread has started completes, even when its caller is cancelled."""
    store = RealStorage(tmp_path)
    file = await store.open("f")
    entered, release = threading.Event(), threading.Event()
    real_pwrite = os.pwrite

    def slow_pwrite(fd: int, data: bytes, offset: int) -> int:
        entered.set()
        release.wait(10)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    finished: list[str] = []

    async def writer(scope: anyio.CancelScope) -> None:
        with scope:
            await file.write(0, b"written")
            finished.append("returned")  # no checkpoint after the thread: it returns
            await anyio.lowlevel.checkpoint()
            finished.append("not reached")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            tg.start_soon(writer, scope)
            await anyio.to_thread.run_sync(entered.wait, 10)
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert finished == [], "the write is still running in its thread"
            release.set()
    monkeypatch.undo()
    assert finished == ["returned"]
    assert await file.read(0, 100) == b"written"
    await file.aclose()

"""Behaviour every :class:`~moonpool.storage.StorageProvider` in moonpool must share.

Server code is written once against the protocol and runs on ``SimStorage`` in
simulation and on ``RealStorage`` in production; it can only be right on both
if the two agree on the details it leans on: short reads at the end of a file,
zeros in gaps, the offsets ``append`` returns, what ``rename`` replaces, that an
open handle outlives ``remove``, which names are refused, and what a closed file
does.  These checks pin those details down, and use the protocol only.

A store is reached through an :data:`Opener`: an async callable that opens the
store at one fixed *place* (a directory, a simulated disk).  The first call
gives the store a check works on, and the place must start empty; each later
call is a *reopen* -- a fresh store object on the same place, as a process sees
it after a graceful restart -- and must see everything that was synced.  A
check may close its files before reopening, and uses only the newest store
after.  For example::

    def real_opener(directory: Path) -> Opener:
        async def open_store() -> StorageProvider:
            return RealStorage(directory)
        return open_store

    def sim_opener() -> Opener:          # reopen = reboot onto the same disk
        current: SimStorage | None = None
        async def open_store() -> StorageProvider:
            nonlocal current
            current = SimStorage() if current is None else current.reboot()
            return current
        return open_store

Run one check with an opener of a fresh place (``await check(opener)``), or all
of them with :func:`check_storage_provider`, which takes a :data:`PlaceFactory`
returning a fresh, empty place's opener for each check.

Rules the checks follow so that they also run inside a simulation: anyio calls
only, every check bounded by ``anyio.fail_after`` on the event loop's own clock
(so a virtual clock works), deterministic payloads, every file closed at the
end of the check.
"""

from __future__ import annotations

import array
import functools
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from moonpool.storage._provider import (
    MAX_NAME_BYTES,
    FileClosedError,
    InvalidFileName,
    StorageFile,
    StorageProvider,
)

__all__ = [
    "BAD_NAMES",
    "CHECKS",
    "DEFAULT_TIMEOUT",
    "Opener",
    "PlaceFactory",
    "check_append",
    "check_bad_names",
    "check_bad_offsets",
    "check_closed_file",
    "check_concurrent_appends",
    "check_handle_survives_rename_and_remove",
    "check_list_and_exists",
    "check_open_creates_empty_file",
    "check_read_and_write",
    "check_remove",
    "check_rename",
    "check_reopen_sees_synced_data",
    "check_storage_provider",
    "check_sync",
    "check_truncate",
    "check_two_handles_share_one_file",
    "check_write_accepts_buffers_only",
    "check_write_past_end_leaves_zeros",
]

Opener = Callable[[], Awaitable[StorageProvider]]
"""Opens the store at one place; the first call gives it empty, later calls reopen it."""

PlaceFactory = Callable[[], Opener]
"""Returns the :data:`Opener` of a fresh, empty place (one per check)."""

DEFAULT_TIMEOUT = 10.0
"""Seconds (of the event loop's clock) each check may take before it counts as a hang."""

BAD_NAMES: tuple[object, ...] = (
    "",
    ".",
    "..",
    "a/b",
    "../x",
    "/abs",
    "a\\b",
    "a\0b",
    "x" * (MAX_NAME_BYTES + 1),
    "\u00e9" * (MAX_NAME_BYTES // 2 + 1),  # few characters, too many UTF-8 bytes
    "\udcff",  # a lone surrogate: not encodable as UTF-8
    None,
    b"bytes",
    7,
)
"""Names every store must refuse with ``InvalidFileName``, before any I/O."""

_GOOD_NAME_MAX = "n" * MAX_NAME_BYTES


# -- helpers ----------------------------------------------------------------


def _payload(size: int, salt: int) -> bytes:
    """``size`` bytes of a 32-bit counter starting at ``salt``.

    A counter rather than a short repeating pattern, so that bytes landing at the
    wrong offset, lost or duplicated, change what is read back.
    """
    words = array.array("I", range(salt, salt + size // 4 + 1))
    return words.tobytes()[:size]


def _bounded(
    check: Callable[[Opener], Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    """Bound ``check`` by ``timeout`` seconds, and report a hang by the check's name."""

    @functools.wraps(check)
    async def bounded(open_store: Opener, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        with anyio.move_on_after(timeout) as scope:
            await check(open_store)
        if scope.cancelled_caught:
            pytest.fail(f"{check.__name__}: did not finish within {timeout:g}s; a call hung")

    return bounded


async def _read_all(file: StorageFile) -> bytes:
    return await file.read(0, await file.size())


async def _make(store: StorageProvider, name: str, data: bytes) -> None:
    """Create ``name`` holding exactly ``data``."""
    async with await store.open(name) as file:
        await file.truncate(0)
        await file.write(0, data)


async def _contents(store: StorageProvider, name: str) -> bytes:
    async with await store.open(name) as file:
        return await _read_all(file)


# -- the checks -------------------------------------------------------------


@_bounded
async def check_open_creates_empty_file(open_store: Opener) -> None:
    """``open`` of a new name creates it empty; opening it again does not truncate it."""
    store = await open_store()
    assert isinstance(store, StorageProvider)
    assert await store.list() == [], "a check's place must start empty"
    assert not await store.exists("log")
    async with await store.open("log") as file:
        assert isinstance(file, StorageFile)
        assert file.name == "log"
        assert await store.exists("log"), "open must create the file at once"
        assert await store.list() == ["log"]
        assert await file.size() == 0
        assert await file.read(0, 10) == b""
        await file.write(0, b"kept")
    async with await store.open("log") as file:
        assert await file.size() == 4, "reopening an existing file must not truncate it"
        assert await file.read(0, 4) == b"kept"
    async with await store.open(_GOOD_NAME_MAX) as file:  # the longest legal name
        assert file.name == _GOOD_NAME_MAX
    assert await store.exists(_GOOD_NAME_MAX)


@_bounded
async def check_read_and_write(open_store: Opener) -> None:
    """Positional writes overwrite in place; reads are short at EOF and empty past it."""
    store = await open_store()
    data = _payload(10_000, 1)
    async with await store.open("f") as file:
        await file.write(0, data)
        assert await file.size() == len(data)
        assert await file.read(0, len(data)) == data
        assert await file.read(100, 50) == data[100:150]
        assert await file.read(9_990, 100) == data[9_990:], "short read at the end"
        assert await file.read(len(data), 10) == b"", "a read at EOF returns b''"
        assert await file.read(len(data) + 1_000, 10) == b"", "a read past EOF returns b''"
        assert await file.read(5, 0) == b""
        patch = b"PATCH"
        await file.write(4_000, patch)
        assert await file.size() == len(data), "an overwrite inside the file keeps its size"
        expected = data[:4_000] + patch + data[4_005:]
        assert await _read_all(file) == expected
        await file.write(len(data) - 2, b"tail")  # straddles the end: extends by 2
        expected = expected[:-2] + b"tail"
        assert await file.size() == len(data) + 2
        assert await _read_all(file) == expected
        await file.write(3, b"")
        await file.write(await file.size(), b"")
        assert await _read_all(file) == expected, "an empty write changes nothing"
        result = await file.read(0, 3)
        assert type(result) is bytes, f"read must return bytes, got {type(result).__name__}"


@_bounded
async def check_write_past_end_leaves_zeros(open_store: Opener) -> None:
    """A write past the end extends the file; the gap reads back as zeros."""
    store = await open_store()
    async with await store.open("sparse") as file:
        await file.write(0, b"head")
        await file.write(5_000, b"tail")
        assert await file.size() == 5_004
        assert await file.read(0, 5_004) == b"head" + bytes(4_996) + b"tail"
        assert await file.read(4_990, 100) == bytes(10) + b"tail"
    async with await store.open("fresh") as file:
        await file.write(700, b"x")
        assert await _read_all(file) == bytes(700) + b"x"


@_bounded
async def check_write_accepts_buffers_only(open_store: Opener) -> None:
    """``write``/``append`` take bytes, bytearray and memoryview (copied at the call); not str."""
    store = await open_store()
    async with await store.open("buffers") as file:
        buffer = bytearray(b"abcd")
        await file.write(0, buffer)  # type: ignore[arg-type]  # bytes-like is accepted
        buffer[:] = b"ZZZZ"
        assert await _read_all(file) == b"abcd", "write must copy, not alias, a bytearray"
        await file.write(4, memoryview(b"xxefgh")[2:])  # type: ignore[arg-type]
        assert await file.append(bytearray(b"ij")) == 8  # type: ignore[arg-type]
        assert await _read_all(file) == b"abcdefghij"
        with pytest.raises(TypeError):
            await file.write(0, "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await file.append("text")  # type: ignore[arg-type]
        assert await _read_all(file) == b"abcdefghij", "a refused write changes nothing"


@_bounded
async def check_append(open_store: Opener) -> None:
    """``append`` writes at the current end and returns that offset."""
    store = await open_store()
    records = [_payload(n, n) for n in (1, 100, 4_096, 3, 513)]
    async with await store.open("log") as file:
        offsets = [await file.append(record) for record in records]
        expected_offsets, at = [], 0
        for record in records:
            expected_offsets.append(at)
            at += len(record)
        assert offsets == expected_offsets
        assert await file.size() == at
        for offset, record in zip(offsets, records, strict=True):
            assert await file.read(offset, len(record)) == record
        await file.write(at + 10, b"w")  # append follows the end however it moved
        assert await file.append(b"next") == at + 11
        assert await file.append(b"") == at + 15, "append(b'') returns the end, writes nothing"
        assert await file.size() == at + 15


@_bounded
async def check_concurrent_appends(open_store: Opener) -> None:
    """Tasks appending through one handle at once get distinct, non-overlapping places."""
    store = await open_store()
    results: dict[int, int] = {}
    records = {i: _payload(300 + 17 * i, 1_000 * i) for i in range(8)}
    async with await store.open("log") as file:

        async def append(i: int) -> None:
            results[i] = await file.append(records[i])

        async with anyio.create_task_group() as tg:
            for i in records:
                tg.start_soon(append, i)
        total = sum(len(record) for record in records.values())
        assert await file.size() == total
        spans = sorted((results[i], results[i] + len(records[i])) for i in records)
        assert spans[0][0] == 0
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end == start, f"appends overlap or leave a gap: {spans}"
        for i, record in records.items():
            assert await file.read(results[i], len(record)) == record


@_bounded
async def check_truncate(open_store: Opener) -> None:
    """``truncate`` shrinks the file, or extends it with zeros; appends follow it."""
    store = await open_store()
    data = _payload(2_000, 7)
    async with await store.open("t") as file:
        await file.write(0, data)
        await file.truncate(600)
        assert await file.size() == 600
        assert await _read_all(file) == data[:600]
        assert await file.read(550, 100) == data[550:600]
        await file.truncate(1_000)
        assert await file.size() == 1_000
        assert await _read_all(file) == data[:600] + bytes(400), "extending must fill with zeros"
        await file.truncate(1_000)  # to the same size: no change
        assert await file.size() == 1_000
        assert await file.append(b"end") == 1_000
        await file.truncate(0)
        assert await file.size() == 0
        assert await file.read(0, 10) == b""
        assert await file.append(b"again") == 0


@_bounded
async def check_two_handles_share_one_file(open_store: Opener) -> None:
    """Two handles to one name are one file: each sees the other's writes at once."""
    store = await open_store()
    async with await store.open("shared") as one, await store.open("shared") as two:
        await one.write(0, b"from one")
        assert await two.read(0, 100) == b"from one"
        assert await two.size() == 8
        assert await two.append(b"|two") == 8
        assert await one.read(0, 100) == b"from one|two"
        await two.truncate(4)
        assert await one.size() == 4
        assert await one.append(b"!") == 4
        assert await two.read(0, 100) == b"from!"
        await one.aclose()
        assert await two.read(0, 100) == b"from!", "closing one handle leaves the other open"


@_bounded
async def check_list_and_exists(open_store: Opener) -> None:
    """``list`` returns every file name, sorted; ``exists`` agrees with it."""
    store = await open_store()
    names = ["b", "a.log", "Z", "\u00e9t\u00e9", ".hidden", "a", "10", "9", "a b"]
    for name in names:
        async with await store.open(name):
            pass
    listed = await store.list()
    assert listed == sorted(names), f"list() returned {listed}"
    assert type(listed) is list
    for name in names:
        assert await store.exists(name), name
    for name in ("c", "a.lo", "\u00e9"):  # (no case variants: macOS folds case)
        assert not await store.exists(name), name


@_bounded
async def check_remove(open_store: Opener) -> None:
    """``remove`` deletes a file; removing a missing file raises ``FileNotFoundError``."""
    store = await open_store()
    await _make(store, "keep", b"k")
    await _make(store, "gone", b"data")
    await store.remove("gone")
    assert await store.list() == ["keep"]
    assert not await store.exists("gone")
    with pytest.raises(FileNotFoundError):
        await store.remove("gone")
    with pytest.raises(FileNotFoundError):
        await store.remove("never")
    async with await store.open("gone") as file:
        assert await file.size() == 0, "a name opened after its remove is a new, empty file"
    assert await store.list() == ["gone", "keep"]
    assert await _contents(store, "keep") == b"k"


@_bounded
async def check_rename(open_store: Opener) -> None:
    """``rename`` moves a file, replacing the destination; a missing source raises."""
    store = await open_store()
    await _make(store, "new", b"new contents")
    await _make(store, "old", b"previous, longer contents")
    await store.rename("new", "old")
    assert await store.list() == ["old"], "the source name must be gone"
    assert not await store.exists("new")
    assert await _contents(store, "old") == b"new contents", "the destination is replaced whole"
    await store.rename("old", "moved")  # to a name that does not exist
    assert await store.list() == ["moved"]
    assert await _contents(store, "moved") == b"new contents"
    with pytest.raises(FileNotFoundError):
        await store.rename("old", "moved")
    with pytest.raises(FileNotFoundError):
        await store.rename("missing", "other")
    assert await store.list() == ["moved"], "a failed rename changes nothing"
    assert await _contents(store, "moved") == b"new contents"
    await store.rename("moved", "moved")  # onto itself: a no-op
    assert await store.list() == ["moved"]
    assert await _contents(store, "moved") == b"new contents"


@_bounded
async def check_handle_survives_rename_and_remove(open_store: Opener) -> None:
    """An open handle follows its file through ``rename`` and keeps it after ``remove``."""
    store = await open_store()
    async with await store.open("a") as handle:
        await handle.write(0, b"original")
        await store.rename("a", "b")
        assert handle.name == "a", "name is the name the file was opened with"
        assert await handle.read(0, 100) == b"original"
        await handle.append(b"+more")
        assert await _contents(store, "b") == b"original+more", "the handle writes the renamed file"
        async with await store.open("a") as fresh:
            assert await fresh.size() == 0, "the old name is free: opening it makes a new file"
        await store.remove("b")
        assert await handle.read(0, 100) == b"original+more", "a removed file stays readable"
        await handle.write(0, b"O")
        assert await handle.read(0, 100) == b"Original+more", "and writable"
        assert await handle.size() == 13
        await store.remove("a")
        assert await store.list() == []


@_bounded
async def check_bad_names(open_store: Opener) -> None:
    """Every name that is not one plain file name is refused, before any I/O."""
    store = await open_store()
    await _make(store, "ok", b"ok")
    for bad in BAD_NAMES:
        with pytest.raises(InvalidFileName):
            await store.open(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidFileName):
            await store.exists(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidFileName):
            await store.remove(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidFileName):
            await store.rename(bad, "ok")  # type: ignore[arg-type]
        with pytest.raises(InvalidFileName):
            await store.rename("ok", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidFileName):  # the name is checked before the source is looked up
            await store.rename("missing", bad)  # type: ignore[arg-type]
    assert issubclass(InvalidFileName, ValueError)
    assert await store.list() == ["ok"], "refused names must leave the store untouched"
    assert await _contents(store, "ok") == b"ok"


@_bounded
async def check_bad_offsets(open_store: Opener) -> None:
    """A negative (or non-int) offset or size raises ``ValueError``, and changes nothing."""
    store = await open_store()
    async with await store.open("f") as file:
        await file.write(0, b"data")
        # The message must say which argument is wrong (and it is a plain
        # ValueError, not one of its subclasses that mean something else).
        for bad in (-1, -(1 << 40), 1.5, True, "3", None):
            with pytest.raises(ValueError, match="offset") as info:
                await file.read(bad, 1)  # type: ignore[arg-type]
            assert not isinstance(info.value, InvalidFileName | FileClosedError)
            with pytest.raises(ValueError, match="size"):
                await file.read(0, bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="offset"):
                await file.write(bad, b"x")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="size"):
                await file.truncate(bad)  # type: ignore[arg-type]
        assert await _read_all(file) == b"data"


@_bounded
async def check_closed_file(open_store: Opener) -> None:
    """Every call on a closed file raises ``FileClosedError``; ``aclose`` twice is fine."""
    store = await open_store()
    file = await store.open("f")
    await file.write(0, b"data")
    await file.aclose()
    await file.aclose()
    assert file.name == "f", "name still answers after close"
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "read": lambda: file.read(0, 1),
        "write": lambda: file.write(0, b"x"),
        "append": lambda: file.append(b"x"),
        "size": file.size,
        "truncate": lambda: file.truncate(0),
        "sync": file.sync,
    }
    for what, call in calls.items():
        try:
            await call()
        except FileClosedError:
            continue
        pytest.fail(f"{what}() on a closed file did not raise FileClosedError")
    assert issubclass(FileClosedError, ValueError)
    async with await store.open("f") as again:
        assert await again.read(0, 10) == b"data", "closing changed nothing in the file"
    with pytest.raises(FileClosedError):
        await again.size()  # ``async with`` closed it
    await again.aclose()
    async with await store.open("g") as other:
        await other.write(0, b"g")
    assert await store.list() == ["f", "g"], "the store outlives its files"


@_bounded
async def check_sync(open_store: Opener) -> None:
    """``sync`` of a file and of the store succeed, and change nothing visible."""
    store = await open_store()
    await store.sync()  # nothing to sync yet
    async with await store.open("f") as file:
        await file.sync()  # nothing written yet
        await file.write(0, b"synced")
        await file.sync()
        await file.sync()  # twice in a row
        assert await _read_all(file) == b"synced"
    await store.sync()
    assert await store.list() == ["f"]


@_bounded
async def check_reopen_sees_synced_data(open_store: Opener) -> None:
    """A new store on the same place sees the synced files, names and contents."""
    store = await open_store()
    big = _payload(70_000, 3)
    async with await store.open("data") as file:
        await file.write(0, big)
        await file.truncate(65_000)
        await file.append(b"end")
        await file.sync()
    async with await store.open("tmp") as file:
        await file.write(0, b"renamed")
        await file.sync()
    await store.rename("tmp", "final")
    await _make(store, "doomed", b"x")
    async with await store.open("empty"):
        pass
    await store.remove("doomed")
    await store.sync()

    reopened = await open_store()
    assert await reopened.list() == ["data", "empty", "final"]
    assert not await reopened.exists("tmp")
    assert await _contents(reopened, "data") == big[:65_000] + b"end"
    assert await _contents(reopened, "final") == b"renamed"
    assert await _contents(reopened, "empty") == b""
    async with await reopened.open("data") as file:  # the reopened store is fully usable
        assert await file.append(b"!") == 65_003


Check = Callable[..., Awaitable[None]]

CHECKS: tuple[Check, ...] = (
    check_open_creates_empty_file,
    check_read_and_write,
    check_write_past_end_leaves_zeros,
    check_write_accepts_buffers_only,
    check_append,
    check_concurrent_appends,
    check_truncate,
    check_two_handles_share_one_file,
    check_list_and_exists,
    check_remove,
    check_rename,
    check_handle_survives_rename_and_remove,
    check_bad_names,
    check_bad_offsets,
    check_closed_file,
    check_sync,
    check_reopen_sees_synced_data,
)
"""Every check, in order; parametrize over it to see each one pass or fail by name."""


async def check_storage_provider(
    new_place: PlaceFactory, *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Run every check in :data:`CHECKS`, each on a fresh place from ``new_place``."""
    for check in CHECKS:
        await check(new_place(), timeout=timeout)

"""``RealStorage``: the :class:`~moonpool.storage.StorageProvider` on a real directory.

Written against anyio only, so the same server code runs on trio and asyncio.
File system calls block, and no event loop offers non-blocking disk I/O, so
every one runs in a worker thread (``anyio.to_thread.run_sync``).  The choices
that follow from that, and from the contract in :mod:`moonpool.storage._provider`:

* **Cancellation.**  Worker threads are never abandoned on cancel
  (``abandon_on_cancel=False``).  An abandoned thread would go on using a file
  descriptor that ``aclose`` may meanwhile have closed -- and that the kernel
  may have handed out again, to a different file.  So an operation cancelled
  before its thread starts raises and did not happen, and one whose thread has
  started runs to the end and returns normally (its effect happened, and the
  cancel is delivered at the caller's next checkpoint).  Each operation does all
  its system calls in *one* thread call, so it is never half done by a cancel.
* **Closing while busy.**  ``aclose`` marks the file closed at once (new calls
  raise :class:`FileClosedError`), then waits for the operations already in a
  worker thread to finish; the last of them closes the descriptor.  A
  descriptor is therefore never closed under a running ``pread`` or ``fsync``.
* **Appends** on one :class:`RealFile` are serialised by a lock: the end of
  the file is read (``fstat``) and written in one step, so two tasks appending
  through the same handle get distinct offsets and records that do not overlap.
  Appends through *different* handles, or a ``write`` racing an ``append``,
  are not ordered against each other (nor are they on any real file system).
* **Durability.**  ``StorageFile.sync`` is ``fsync`` of the file, and
  ``RealStorage.sync`` is ``fsync`` of the directory, which is what makes
  creations, removals and renames survive a crash.  ``rename`` also syncs the
  directory, as the contract allows (code must not count on it).  An
  ``OSError`` from ``fsync`` becomes :class:`SyncFailed`; on Linux the dirty
  pages it was to write may be gone for good (see the contract).  On macOS plain
  ``fsync`` does not flush the drive's own cache (``F_FULLFSYNC`` would); this
  store uses plain ``fsync`` there too.
* **The directory** is created (with its parents) by the first operation, not
  by the constructor, so building a ``RealStorage`` does no I/O and cannot
  block the event loop.  A path that exists but is not a directory is reported
  by that first operation as ``NotADirectoryError``.  A relative path is made
  absolute when the store is built, so a later ``chdir`` does not move it.

POSIX only: positional I/O needs ``os.pread``/``os.pwrite``, which Windows lacks.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar, TypeVarTuple, Unpack, final

import anyio
import anyio.lowlevel
import anyio.to_thread

from moonpool.storage._provider import (
    FileClosedError,
    InvalidFileName,
    StorageError,
    SyncFailed,
    check_name,
    check_offset,
)

__all__ = ["RealFile", "RealStorage"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# O_NOFOLLOW: a symbolic link in the directory must not lead a name outside it.
_FILE_FLAGS: Final = (
    os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
)
_DIR_FLAGS: Final = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_MODE: Final = 0o644

# The most one pread asks for: os.pread allocates its whole buffer up front, and
# Linux never transfers more than about 2 GiB per call anyway.
_MAX_CHUNK: Final = 1 << 30


async def _in_thread(func: Callable[[Unpack[_Ts]], _T], *args: *_Ts) -> _T:
    """Run ``func(*args)`` in a worker thread that a cancel never abandons (see module doc)."""
    return await anyio.to_thread.run_sync(func, *args, abandon_on_cancel=False)


# -- blocking helpers, each run whole in one worker thread --------------------


def _not_a_file(name: str, path: Path) -> InvalidFileName | None:
    """Why ``name`` is not a file of the store although something is there, or None."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
    return InvalidFileName(
        f"{name!r} in {str(path.parent)!r} is {what}: a store holds regular files "
        f"only, and follows no links out of its directory"
    )


def _pread_all(fd: int, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``offset``, looping over short reads until EOF."""
    end = os.fstat(fd).st_size
    # Clamp first: os.pread allocates ``size`` bytes even when the file is small.
    size = min(size, end - offset)
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, min(size, _MAX_CHUNK), offset)
        if not chunk:  # the file shrank under us
            break
        chunks.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``, looping over short writes."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # cannot happen on a regular file; never spin on it
            raise OSError(errno.EIO, f"pwrite wrote nothing at offset {offset}")
        view = view[written:]
        offset += written


def _append(fd: int, data: bytes) -> int:
    offset = os.fstat(fd).st_size
    _pwrite_all(fd, data, offset)
    return offset


def _size(fd: int) -> int:
    return os.fstat(fd).st_size


def _fsync_file(fd: int, what: str) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise SyncFailed(
            f"fsync of {what} failed ({exc}); the writes it was to make durable are not, "
            "and on Linux may already be lost"
        ) from exc


def _fsync_directory(directory: Path, what: str) -> None:
    """``fsync`` the directory itself, making creations, removals and renames durable."""
    try:
        fd = os.open(directory, _DIR_FLAGS)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SyncFailed(
            f"fsync of directory {str(directory)!r} ({what}) failed ({exc}); the creates, "
            "removes and renames in it are not durable"
        ) from exc


def _list_files(directory: Path) -> list[str]:
    names: list[str] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            # is_file() follows symlinks, as open() would; subdirectories, sockets
            # and FIFOs are not files of the store.  A name the store could not
            # address (not UTF-8) is left out too: no call could name it.
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                names.append(check_name(entry.name))
            except ValueError:
                continue
    names.sort()
    return names


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _bytes_of(data: object) -> bytes:
    """``data`` as an immutable copy (bytes-like only: a str has no byte encoding here).

    The copy matters for ``bytearray``: the caller may change it while the write
    is still running in its worker thread.
    """
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(
        f"data must be bytes, bytearray or memoryview, not {type(data).__name__}"
        + (" (encode the str first)" if isinstance(data, str) else "")
    )


# -- the store ----------------------------------------------------------------


@final
class RealStorage:
    """A :class:`~moonpool.storage.StorageProvider` on one real, flat directory.

    ``directory`` is created (with its parents) by the first operation that needs
    it; the constructor does no I/O.  See the module doc for what each operation
    does on disk, and for how cancellation and closing behave.
    """

    __slots__ = ("_directory", "_ready")

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        if not hasattr(os, "pread") or not hasattr(os, "pwrite"):
            raise NotImplementedError(
                "RealStorage needs os.pread and os.pwrite, which this platform lacks "
                "(RealStorage supports POSIX systems only)"
            )
        self._directory = Path(os.path.abspath(os.fspath(directory)))
        self._ready = False

    @property
    def directory(self) -> Path:
        """The directory holding the files (absolute)."""
        return self._directory

    def __repr__(self) -> str:
        return f"RealStorage({str(self._directory)!r})"

    def _path(self, name: object) -> Path:
        return self._directory / check_name(name)

    def _ensure_directory(self) -> None:
        """Create the directory on first use (in a worker thread: it blocks)."""
        if self._ready:
            return
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(
                errno.ENOTDIR,
                f"RealStorage directory {str(self._directory)!r} exists and is not a directory",
            ) from None
        except NotADirectoryError as exc:
            raise NotADirectoryError(
                errno.ENOTDIR,
                f"cannot create RealStorage directory {str(self._directory)!r}: "
                f"a parent of it is not a directory ({exc})",
            ) from exc
        self._ready = True

    async def open(self, name: str) -> RealFile:
        """Open file ``name`` for reading and writing, creating it (empty) if missing."""
        path = self._path(name)

        def open_file() -> int:
            self._ensure_directory()
            refused = _not_a_file(name, path)
            if refused is not None:
                raise refused
            return os.open(path, _FILE_FLAGS, _FILE_MODE)

        fd = await _in_thread(open_file)
        # No checkpoint between here and the return, so a cancel cannot leak fd.
        return RealFile(fd, name, path)

    async def list(self) -> list[str]:
        """The names of the regular files in the directory, sorted (subdirectories left out)."""

        def list_files() -> list[str]:
            self._ensure_directory()
            return _list_files(self._directory)

        return await _in_thread(list_files)

    async def exists(self, name: str) -> bool:
        """Whether ``name`` is a regular file in the directory."""
        path = self._path(name)

        def is_file() -> bool:
            self._ensure_directory()
            return _is_file(path)

        return await _in_thread(is_file)

    async def remove(self, name: str) -> None:
        """Unlink ``name`` (``FileNotFoundError`` if missing); open handles keep working."""
        path = self._path(name)

        def unlink() -> None:
            self._ensure_directory()
            refused = _not_a_file(name, path)
            if refused is not None:
                raise refused
            os.unlink(path)

        await _in_thread(unlink)

    async def rename(self, old: str, new: str) -> None:
        """Atomically rename ``old`` to ``new`` (``os.replace``), then sync the directory.

        ``FileNotFoundError`` if ``old`` is missing.  If the directory sync fails,
        the rename has happened but may not survive a crash: :class:`SyncFailed`.
        """
        old_path, new_path = self._path(old), self._path(new)

        def replace() -> None:
            self._ensure_directory()
            for name, path in ((old, old_path), (new, new_path)):
                refused = _not_a_file(name, path)
                if refused is not None:
                    raise refused
            os.replace(old_path, new_path)
            _fsync_directory(self._directory, f"after renaming {old!r} to {new!r}, which happened")

        await _in_thread(replace)

    async def sync(self) -> None:
        """``fsync`` the directory: every create, remove and rename so far is durable."""

        def sync_directory() -> None:
            self._ensure_directory()
            _fsync_directory(self._directory, "of the store")

        await _in_thread(sync_directory)


# -- one open file ------------------------------------------------------------


@final
class RealFile:
    """One open file of a :class:`RealStorage` (made by :meth:`RealStorage.open`).

    Positional I/O on a file descriptor; see the module doc for how appends,
    cancellation and ``aclose`` during a running operation behave.
    """

    __slots__ = ("_append_lock", "_closed", "_fd", "_idle", "_in_flight", "_name", "_path")

    def __init__(self, fd: int, name: str, path: Path) -> None:
        self._fd: int | None = fd
        self._name = name
        self._path = path
        self._closed = False
        self._in_flight = 0
        self._idle: anyio.Event | None = None
        self._append_lock = anyio.Lock()

    @property
    def name(self) -> str:
        """The name the file was opened with (a later ``rename`` does not change it)."""
        return self._name

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<RealFile {self._name!r} in {str(self._path.parent)!r} ({state})>"

    # The descriptor is used only between _enter and _leave; see aclose.

    def _check_open(self) -> None:
        if self._closed or self._fd is None:
            raise FileClosedError(
                f"file {self._name!r} in {str(self._path.parent)!r} is closed; "
                f"open it again with storage.open({self._name!r})"
            )

    def _enter(self) -> int:
        self._check_open()
        assert self._fd is not None
        self._in_flight += 1
        return self._fd

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._closed and self._in_flight == 0:
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self._idle is not None:
            self._idle.set()

    async def _run(self, func: Callable[[int, Unpack[_Ts]], _T], *args: *_Ts) -> _T:
        fd = self._enter()
        try:
            return await _in_thread(func, fd, *args)
        except StorageError:
            raise
        except OSError as exc:  # the disk's own error (EIO, ENOSPC, EFBIG): say so
            raise StorageError(
                exc.errno, f"I/O error on {str(self._path)!r}: {exc.strerror or exc}"
            ) from exc
        finally:
            self._leave()

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``: fewer at the end of the file, none past it."""
        check_offset("offset", offset)
        check_offset("size", size)
        return await self._run(_pread_all, offset, size)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at ``offset``; a gap past the end reads back as zeros."""
        check_offset("offset", offset)
        payload = _bytes_of(data)
        await self._run(_pwrite_all, payload, offset)

    async def append(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at the end of the file; returns the offset it was written at."""
        payload = _bytes_of(data)
        self._check_open()  # fail fast on a closed file, without queueing on the lock
        async with self._append_lock:
            return await self._run(_append, payload)

    async def size(self) -> int:
        """The file's size in bytes (synced or not)."""
        return await self._run(_size)

    async def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes, or extend it with zeros."""
        check_offset("size", size)
        await self._run(os.ftruncate, size)

    async def sync(self) -> None:
        """``fsync`` the file; an ``OSError`` from it is raised as :class:`SyncFailed`."""
        await self._run(_fsync_file, f"file {str(self._path)!r}")

    async def aclose(self) -> None:
        """Close the file; closing twice is a no-op.

        Calls made after this raise :class:`FileClosedError`.  Operations already
        running finish first (their results are delivered), and this waits for
        them; if this wait is cancelled the descriptor is still closed, by the
        last of them.
        """
        if not self._closed:
            self._closed = True
            if self._in_flight == 0:
                self._close_fd()
        if self._fd is not None:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()
        else:
            await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Like Python's own files: a handle dropped without aclose() still gives
        # its descriptor back, with a ResourceWarning to say it leaked.
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            warnings.warn(
                f"unclosed {self!r}; close files with aclose() or async with",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
            os.close(fd)

"""The interface every store offers, and the errors both stores raise alike.

A :class:`StorageProvider` is a flat directory of named files -- no
subdirectories, so that a name can never escape the store -- and a
:class:`StorageFile` is positional I/O on one of them.  ``SimStorage`` and
``RealStorage`` implement it, and one conformance suite holds them to it, so
the same server code runs in simulation and on a real disk.

What is durable, and when (the crash contract; ``SimStorage`` explores it and
``RealStorage`` provides at least it):

* bytes written to a file are durable once a later ``sync()`` *of that file*
  has returned; until then a crash may keep, lose or tear each write (tear:
  keep a prefix of it, cut at a :data:`SECTOR`-byte boundary of the file);
* creating a file (``open`` of a new name), ``remove`` and ``rename`` are
  atomic at once, and durable once a later ``storage.sync()`` has returned
  (``fsync`` of the directory); until then a crash may undo the latest of
  them -- the newest first, as a journaling file system keeps their order.
  A file's own ``sync()`` does not make its creation durable, and a rename
  of a file whose writes are not synced may survive a crash while the
  writes do not (the classic empty-file-after-rename bug).  ``RealStorage``
  syncs the directory after each rename too, but code must not count on
  that: the simulation does not;
* an operation that has not returned when the process crashes, or that was
  cancelled, did not happen;
* a process that exits, or reboots gracefully, loses nothing: the operating
  system still has its writes.  Only a crash of the machine (a ``crash`` or
  ``wipe`` kill) loses unsynced data, and a ``wipe`` loses everything.

Errors, the same from both stores:

* a name that is not one plain file name raises :class:`InvalidFileName`;
* any call on a closed file raises :class:`FileClosedError`, and any call on a
  store (or a file of it) whose process has crashed raises :class:`StorageDown`;
* ``remove``/``rename`` of a missing file raise :class:`FileNotFoundError`;
* a failed ``sync`` raises :class:`SyncFailed`, and the writes it was to cover
  are dropped, as Linux drops them (PostgreSQL's "fsyncgate"): the pages are
  marked clean without reaching the disk, so the process still reads them but
  no later ``sync`` writes them, and a crash shows what the disk had.  Code
  that must survive this rewrites what it wrote since its last good sync
  before syncing again, or treats the file as lost.  A failed ``sync`` of the
  store leaves its namespace changes unsynced (sync it again);
* an I/O error of the disk itself (``EIO``, ``ENOSPC``, ``EFBIG``) raises a
  :class:`StorageError` with its ``errno``; a simulated file may not grow past
  ``moonpool.storage.MAX_FILE_SIZE`` (it lives in memory);
"""

from __future__ import annotations

import errno
from types import TracebackType
from typing import Protocol, Self, final, runtime_checkable

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_OFFSET",
    "SECTOR",
    "FileClosedError",
    "InvalidFileName",
    "StorageDown",
    "StorageError",
    "StorageFile",
    "StorageProvider",
    "SyncFailed",
    "check_name",
    "check_offset",
]

SECTOR = 512
"""Torn writes are cut at multiples of this many bytes from the file's start."""

#: The longest file name a store accepts, in UTF-8 bytes (what most file systems allow).
MAX_NAME_BYTES = 255


class StorageError(OSError):
    """An I/O error of a store (the base of :class:`SyncFailed` and :class:`StorageDown`)."""


@final
class SyncFailed(StorageError):
    """``sync()`` failed: the writes it was to make durable are not (see the module doc)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


@final
class StorageDown(StorageError):
    """The process that opened this store or file has crashed: its disk is gone to it."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


@final
class FileClosedError(ValueError):
    """A call on a file after its ``aclose()`` (like Python's "I/O operation on closed file")."""


@final
class InvalidFileName(ValueError):
    """A name that is not one plain file name inside the store."""


def check_name(name: object) -> str:
    """``name`` if it names a file directly inside a store, else :class:`InvalidFileName`.

    A store is flat: no separators, no ``.``/``..``, no NUL, no empty name, at most
    :data:`MAX_NAME_BYTES` bytes -- so no name reaches outside the directory of a
    ``RealStorage``, and a name means the same in both stores.
    """
    if not isinstance(name, str):
        raise InvalidFileName(f"a file name is a str, got {name!r}")
    if name in ("", ".", ".."):
        raise InvalidFileName(f"{name!r} is not a file name")
    if "/" in name or "\\" in name or "\0" in name:
        raise InvalidFileName(
            f"file name {name!r} has a path separator or NUL: a store is one flat "
            f"directory, and names cannot reach outside it"
        )
    try:
        encoded = name.encode()
    except UnicodeEncodeError:
        raise InvalidFileName(f"file name {name!r} is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidFileName(
            f"file name {name[:32]!r}... is {len(encoded)} bytes long; at most "
            f"{MAX_NAME_BYTES} are allowed"
        )
    return name


#: The largest offset or size a store accepts (a signed 64-bit file offset).
MAX_OFFSET = (1 << 63) - 1


def check_offset(what: str, value: object) -> int:
    """``value`` if it is an int within 0..MAX_OFFSET (an offset or a size), else ``ValueError``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_OFFSET:
        raise ValueError(f"{what} must be an int within 0..2**63-1, got {value!r}")
    return value


@runtime_checkable
class StorageFile(Protocol):
    """One open file of a store: positional reads and writes, and ``sync``."""

    @property
    def name(self) -> str:
        """The name the file was opened with (a later ``rename`` does not change it)."""
        ...

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``: fewer at the end of the file, none past it."""
        ...

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; a gap past the end reads back as zeros."""
        ...

    async def append(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at the end of the file; returns the offset it was written at."""
        ...

    async def size(self) -> int:
        """The file's size in bytes, as this process sees it (synced or not)."""
        ...

    async def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes, or extend it with zeros."""
        ...

    async def sync(self) -> None:
        """Make every write to this file so far durable (``fsync``)."""
        ...

    async def aclose(self) -> None:
        """Close the file (unsynced writes stay unsynced); closing twice is a no-op."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class StorageProvider(Protocol):
    """A flat directory of files; implemented by ``SimStorage`` and ``RealStorage``."""

    async def open(self, name: str) -> StorageFile:
        """Open file ``name`` for reading and writing, creating it (empty) if missing."""
        ...

    async def list(self) -> list[str]:
        """The names of the files in the store, sorted."""
        ...

    async def exists(self, name: str) -> bool:
        """Whether file ``name`` is in the store."""
        ...

    async def remove(self, name: str) -> None:
        """Remove file ``name`` (open handles to it keep working on the removed file)."""
        ...

    async def rename(self, old: str, new: str) -> None:
        """Atomically rename ``old`` to ``new``, replacing ``new`` if it exists.

        Durable once ``sync()`` of the store has returned (see the module doc).
        """
        ...

    async def sync(self) -> None:
        """Make every create, remove and rename so far durable (``fsync`` of the directory)."""
        ...

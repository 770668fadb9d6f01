"""The failure database: the seeds that failed last time are replayed first.

A failing seed found by a long random run is the most valuable thing the run
produced, and the easiest to lose: the terminal scrolls, the next run draws
fresh seeds and may never hit it again.  Like hypothesis' example database, a
:class:`FailureDatabase` saves every failing seed per simulation (its *key*) and
the runner replays those seeds before any new one.  A saved seed that passes
``drop_after`` times in a row is taken to be fixed and dropped, so the database
forgets a bug once it is gone instead of replaying it forever; a failure in
between resets that count.

The database sits on the path of every simulation run, so it must never be the
reason a run fails or hangs:

* One small JSON file per key, replaced atomically (a temporary file in the same
  directory, then :func:`os.replace`): Ctrl-C mid-write or two runs writing at
  once leave either the old file or the new one, never a torn one.  There is no
  lock (a lock is something to wait on); of two concurrent writers the last
  wins, and a seed whose update was lost is saved again when it fails again.
* A corrupt, unreadable or foreign file reads as "no seeds" with one
  :class:`MoonpoolDatabaseWarning`, and the next failure overwrites it.  A
  directory that cannot be written warns the same way and the run carries on.
* Reading never creates anything, and a passing seed that is not saved writes
  nothing: a project whose simulations all pass has no database directory.
* The directory is created on the first write with a ``.gitignore`` of ``*`` in
  it (like ``.pytest_cache``): the seeds are local state, not source.
* At most ``max_seeds`` seeds per key (the oldest goes first), so a simulation
  that fails on every seed cannot grow the replay phase without bound.

File names must be the same in every process, and readable enough to find by
hand, so a file is named by a sanitised prefix of the key plus 16 hex digits of
its SHA-256 (never ``hash()``, which ``PYTHONHASHSEED`` changes between runs).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, final

import msgspec

__all__ = ["DEFAULT_DIRECTORY", "FailureDatabase", "MoonpoolDatabaseWarning", "SavedSeed"]

#: Where the database lives unless told otherwise; a relative path is resolved
#: against the current directory when the database is used, like ``.pytest_cache``.
DEFAULT_DIRECTORY: Final = ".moonpool"

#: The format of the per-key files; a file of any other version is ignored (with
#: a warning) and replaced on the next failure.
_VERSION: Final = 1
_SUBDIRECTORY: Final = "failing-seeds"
_GITIGNORE: Final = "# Created by moonpool automatically.\n*\n"
_PREFIX_LENGTH: Final = 60
_HASH_DIGITS: Final = 16
#: Saved errors are a reminder of what failed, not the report: one line, this long.
_ERROR_LENGTH: Final = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class MoonpoolDatabaseWarning(UserWarning):
    """The failure database could not be read or written; the run went on without it."""


MoonpoolDatabaseWarning.__module__ = "moonpool.sim"


@final
@dataclass(frozen=True)
class SavedSeed:
    """One saved failing seed.

    ``passes`` counts the runs in a row the seed has passed since it last
    failed; ``error`` is a one-line reminder of that failure (``""`` if none
    was given).
    """

    seed: int
    passes: int
    error: str


SavedSeed.__module__ = "moonpool.sim"


# The on-disk shape, checked by msgspec on decoding: a file that does not match
# is "wrongly shaped" and ignored rather than half-trusted.
class _Header(msgspec.Struct):
    version: int


class _Entry(msgspec.Struct):
    seed: Annotated[int, msgspec.Meta(ge=0)]
    passes: Annotated[int, msgspec.Meta(ge=0)] = 0
    error: str = ""


class _File(msgspec.Struct):
    version: int
    key: str
    seeds: list[_Entry]


class _Unusable(Exception):
    """A database file that exists but cannot be used; the message says why."""


@final
class FailureDatabase:
    """Failing seeds saved per key, replayed first, dropped once they pass again.

    ``directory`` holds the database (its files are under
    ``directory / "failing-seeds"``); a relative path is resolved against the
    current directory each time the database is used.  A saved seed is
    dropped after it passes ``drop_after`` runs in a row, and at most
    ``max_seeds`` seeds are kept per key.

    The runner calls :meth:`seeds` before a run and :meth:`record` after each
    seed; :meth:`record_failure` is shorthand for ``record(..., failed=True)``.
    No method raises for a problem with the files or the directory (they warn
    with :class:`MoonpoolDatabaseWarning` instead); bad arguments raise
    ``ValueError``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        drop_after: int = 3,
        max_seeds: int = 100,
    ) -> None:
        _check_count("drop_after", drop_after)
        _check_count("max_seeds", max_seeds)
        self._directory = Path(directory)
        self._drop_after = drop_after
        self._max_seeds = max_seeds
        # Files already warned about: seeds() followed by record() on the same
        # corrupt file warns once, not twice.  Forgotten once the file is rewritten.
        self._warned: set[Path] = set()

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def drop_after(self) -> int:
        return self._drop_after

    @property
    def max_seeds(self) -> int:
        return self._max_seeds

    def __repr__(self) -> str:
        return (
            f"FailureDatabase({os.fspath(self._directory)!r}, drop_after={self._drop_after}, "
            f"max_seeds={self._max_seeds})"
        )

    def path_for(self, key: str) -> Path:
        """The file that holds ``key``'s seeds (which need not exist)."""
        _check_key(key)
        digest = hashlib.sha256(key.encode()).hexdigest()[:_HASH_DIGITS]
        # Leading dots would hide the file (and the temporary files start with one).
        prefix = _UNSAFE.sub("_", key)[:_PREFIX_LENGTH].lstrip(".")
        name = f"{prefix}-{digest}" if prefix else digest
        return self._directory / _SUBDIRECTORY / f"{name}.json"

    def seeds(self, key: str) -> list[int]:
        """The saved failing seeds of ``key``, in the order they were first saved."""
        return [entry.seed for entry in self._load(key)]

    def entries(self, key: str) -> list[SavedSeed]:
        """The saved seeds of ``key`` with their pass counts and errors, oldest first."""
        return [SavedSeed(e.seed, e.passes, e.error) for e in self._load(key)]

    def record(self, key: str, seed: int, *, failed: bool, error: str = "") -> None:
        """Record that ``seed`` of ``key`` failed or passed.

        A failure saves the seed (or keeps it where it is, if saved already),
        resets its pass count to 0 and, if ``error`` is not empty, remembers
        its first 200 characters on one line.  A pass counts for a saved seed
        only: after ``drop_after`` of them in a row it is dropped; an unsaved
        seed that passes writes nothing.  ``error`` is ignored for a pass (and
        must be a str: ``TypeError`` otherwise).
        """
        _check_key(key)
        _check_seed(seed)
        if not isinstance(error, str):
            raise TypeError(f"error must be a str, got {error!r}")
        entries = self._load(key)
        index = next((i for i, entry in enumerate(entries) if entry.seed == seed), None)
        if failed:
            if index is None:
                entries.append(_Entry(seed, 0, _shorten(error)))
                del entries[: -self._max_seeds]
            else:
                old = entries[index]
                entries[index] = _Entry(seed, 0, _shorten(error) if error else old.error)
        else:
            if index is None:
                return
            old = entries[index]
            if old.passes + 1 >= self._drop_after:
                del entries[index]
            else:
                entries[index] = _Entry(seed, old.passes + 1, old.error)
        self._save(key, entries)

    def record_failure(self, key: str, seed: int, error: str = "") -> None:
        """Shorthand for ``record(key, seed, failed=True, error=error)``."""
        self.record(key, seed, failed=True, error=error)

    def clear(self, key: str) -> None:
        """Forget every saved seed of ``key``."""
        path = self.path_for(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            _warn(f"moonpool could not delete the failure database file {path}: {exc}")
        else:
            self._warned.discard(path)

    def _load(self, key: str) -> list[_Entry]:
        path = self.path_for(key)
        try:
            entries = _read(path, key)
        except (FileNotFoundError, NotADirectoryError):
            # No file (a file where a directory should be is the writer's
            # problem: record warns when it cannot save).
            return []
        except (OSError, _Unusable) as exc:
            if path not in self._warned:
                self._warned.add(path)
                _warn(
                    f"moonpool ignored the failure database file {path} ({exc}); "
                    "it will be replaced on the next failure"
                )
            return []
        # A file written with a larger max_seeds: keep the newest, as record would.
        return entries[-self._max_seeds :]

    def _save(self, key: str, entries: list[_Entry]) -> None:
        path = self.path_for(key)
        try:
            if not entries:
                path.unlink(missing_ok=True)
            else:
                self._make_directories()
                document = _File(version=_VERSION, key=key, seeds=entries)
                _write_atomically(path, msgspec.json.encode(document) + b"\n")
        except OSError as exc:
            _warn(
                f"moonpool could not write the failure database file {path} ({exc}); "
                "the run goes on without saving it"
            )
        else:
            self._warned.discard(path)

    def _make_directories(self) -> None:
        if not self._directory.is_dir():
            self._directory.mkdir(parents=True, exist_ok=True)
            # Only in a directory we created: one the user made may be meant
            # to be committed (a shared regression corpus, say).
            gitignore = self._directory / ".gitignore"
            if not gitignore.exists():
                _write_atomically(gitignore, _GITIGNORE.encode())
        (self._directory / _SUBDIRECTORY).mkdir(exist_ok=True)


FailureDatabase.__module__ = "moonpool.sim"


def _read(path: Path, key: str) -> list[_Entry]:
    data = path.read_bytes()
    try:
        version = msgspec.json.decode(data, type=_Header).version
    except msgspec.DecodeError as exc:
        raise _Unusable(f"not a moonpool database file: {exc}") from None
    if version != _VERSION:
        raise _Unusable(f"unsupported version {version}, this moonpool reads {_VERSION}")
    try:
        document = msgspec.json.decode(data, type=_File)
    except msgspec.DecodeError as exc:
        raise _Unusable(f"wrongly shaped: {exc}") from None
    if document.key != key:
        raise _Unusable(f"it holds the seeds of {document.key!r}, not of {key!r}")
    seen: set[int] = set()
    entries: list[_Entry] = []
    for entry in document.seeds:
        if entry.seed not in seen:  # a hand-edited file may repeat one
            seen.add(entry.seed)
            entries.append(entry)
    return entries


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new, never half."""
    # A unique name per writer, so two concurrent runs never share a temporary
    # file; os.open with 0o666 (not mkstemp's 0o600) so the umask decides.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # including Ctrl-C: leave no temporary file behind
        temporary.unlink(missing_ok=True)
        raise


def _warn(message: str) -> None:
    # Point the warning at the first caller outside this module (the runner),
    # however deep in the database's own helpers it was raised.
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, MoonpoolDatabaseWarning, stacklevel=level)


def _shorten(error: str) -> str:
    line = " ".join(error.split())
    return line if len(line) <= _ERROR_LENGTH else line[: _ERROR_LENGTH - 1] + "…"


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"a failure database key is a non-empty str, got {key!r}")
    try:
        key.encode()
    except UnicodeEncodeError:
        raise ValueError(f"a failure database key must be valid UTF-8 text, got {key!r}") from None


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seeds are non-negative integers, got {seed!r}")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")

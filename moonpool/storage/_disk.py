"""The disk of one simulated process: what is durable, what is not, and what a crash keeps.

This is the pure model behind ``SimStorage`` -- no trio, no clock, no faults
but the crash's -- in the spirit of FoundationDB's ``AsyncFileNonDurable``:

* each file (an *inode*, :class:`Inode`) keeps two images: ``durable``, its
  bytes as of its last ``sync``, and ``current``, what processes read; and the
  list of writes and truncates since that sync (``pending``), in order;
* the store keeps two name tables the same way: ``names`` (what ``list``
  shows) and ``durable_names`` (as of the last ``storage.sync()``), and the
  creates, removes and renames since (``journal``), in order.

A *crash* rebuilds both from their durable images: each pending write is kept,
lost or torn (a prefix kept, cut at a sector boundary of the file), each
pending truncate kept or lost, each independently -- a disk may reorder writes
that no ``fsync`` ordered -- and then replayed in order on the durable bytes,
so a lost write leaves whatever was there before it.  Synced bytes cannot
change: nothing but a pending op is ever replayed over them.  (Upstream
moonpool's issue #242 lost durable bytes when a torn write grew past a synced
tail sector; replaying on the durable image rules that out by construction.)
The journal keeps a prefix: the newest unsynced namespace changes are undone
first, as a journaling file system would.

Decisions come from a ``random.Random`` the caller keys by what it decides (one
per crash), and each fault goes through ``admit`` -- the run's fault plan may
refuse it, and a refused fault is simply not one: the write is kept.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, final

from moonpool.storage._provider import SECTOR

__all__ = ["CrashOutcome", "Disk", "Inode"]

#: Unsynced ops an inode holds before the oldest is written back (see ``_dirty``).
MAX_PENDING_OPS = 4096
#: Unsynced namespace changes a disk holds before the oldest is committed (ext4
#: commits its journal every few seconds; this bounds what a crash may undo, and
#: the memory of the files that renames replaced).
MAX_JOURNAL = 256

Admit = Callable[[str, str, str], bool]
"""Whether a crash fault happens: (family, file name, text) -> bool."""

_Write = tuple[Literal["write"], int, bytes]
_Truncate = tuple[Literal["truncate"], int]
PendingOp = _Write | _Truncate


@final
class Inode:
    """One file's bytes: durable, current, and the unsynced ops between them."""

    __slots__ = ("current", "dropped", "durable", "pending")

    def __init__(self) -> None:
        self.durable = bytearray()
        self.current = bytearray()
        self.pending: list[PendingOp] = []
        #: A failed sync dropped writes that ``current`` still shows (see fail_sync).
        self.dropped = False

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return  # like pwrite: writing nothing past the end does not extend the file
        _apply_write(self.current, offset, data)
        self._dirty(("write", offset, bytes(data)))

    def truncate(self, size: int) -> None:
        _apply_truncate(self.current, size)
        self._dirty(("truncate", size))

    def _dirty(self, op: PendingOp) -> None:
        pending = self.pending
        pending.append(op)
        # The kernel writes dirty data back on its own, oldest first, and holds only
        # so much of it: past the bound, the oldest op becomes durable.  (This also
        # bounds the memory of a program that overwrites a block forever unsynced.)
        while len(pending) > MAX_PENDING_OPS:
            _apply(self.durable, pending.pop(0))

    def sync(self) -> int:
        """Make every write so far durable; returns how many ops it covered.

        The pending ops are replayed on the durable image -- not a copy of the
        current one -- so that a log synced after every append costs its appends,
        not its size, and writes lost to a failed sync stay lost.
        """
        covered = len(self.pending)
        for op in self.pending:
            _apply(self.durable, op)
        self.pending.clear()
        return covered

    def fail_sync(self) -> int:
        """A failed ``fsync``, as Linux fails it: the writes it covered are dropped.

        Their pages are marked clean without having reached the disk ("fsyncgate"):
        this process still reads them, a later sync does not write them, and a
        crash (or the cache evicting them) shows what the disk had.  Returns how
        many ops were dropped.
        """
        dropped = len(self.pending)
        self.pending.clear()
        self.dropped = self.dropped or dropped > 0
        return dropped

    def crash(self, rng: random.Random, admit: Admit, name: str, outcome: CrashOutcome) -> None:
        """Rebuild ``current`` from ``durable`` and a seeded fate for each pending op."""
        self.dropped, dropped = False, self.dropped
        if not self.pending:
            if dropped:  # what a failed sync dropped is gone with the cache
                self.current = bytearray(self.durable)
            return
        image = bytearray(self.durable)
        for op in self.pending:
            if op[0] == "truncate":
                size = op[1]
                if rng.random() < 0.5 and admit(
                    "lost_write", name, f"{name}: truncate to {size} lost"
                ):
                    outcome.lost += 1
                else:
                    _apply_truncate(image, size)
                    outcome.kept += 1
                continue
            _, offset, data = op
            fate, cut = _fate(rng, offset, len(data))
            if fate == "lost" and admit(
                "lost_write", name, f"{name}: write of {len(data)} bytes at {offset} lost"
            ):
                outcome.lost += 1
                continue
            if fate == "torn" and admit(
                "torn_write",
                name,
                f"{name}: write of {len(data)} bytes at {offset} torn after {cut} bytes",
            ):
                outcome.torn += 1
                _apply_write(image, offset, data[:cut])
                continue
            outcome.kept += 1
            _apply_write(image, offset, data)
        self.durable = image
        self.current = bytearray(image)
        self.pending.clear()


def _fate(rng: random.Random, offset: int, size: int) -> tuple[str, int]:
    """Kept, lost or torn (with the bytes kept), a third each; untearable: half and half.

    Both draws are made whatever the first says, so that the stream stays aligned
    (a fault plan refusing one fate moves no later one).
    """
    roll = rng.random()
    # The sector boundaries strictly inside the write: where it may be torn.
    first = (offset // SECTOR + 1) * SECTOR
    last = offset + size - 1
    boundaries = (last - first) // SECTOR + 1 if first <= last else 0
    pick = rng.randrange(boundaries) if boundaries else 0
    if not boundaries:
        return ("lost" if roll < 0.5 else "kept"), size
    if roll < 1 / 3:
        return "lost", 0
    if roll < 2 / 3:
        return "torn", first + pick * SECTOR - offset
    return "kept", size


def _apply(image: bytearray, op: PendingOp) -> None:
    if op[0] == "write":
        _apply_write(image, op[1], op[2])
    else:
        _apply_truncate(image, op[1])


def _apply_write(image: bytearray, offset: int, data: bytes) -> None:
    end = offset + len(data)
    if offset > len(image):
        image.extend(bytes(offset - len(image)))
    image[offset:end] = data


def _apply_truncate(image: bytearray, size: int) -> None:
    if size < len(image):
        del image[size:]
    else:
        image.extend(bytes(size - len(image)))


JournalEntry = tuple[str, str, str | None, Inode]
"""An unsynced namespace change: (kind, name, new name or None, inode)."""


def _replay_entry(names: dict[str, Inode], entry: JournalEntry) -> None:
    kind, name, new, inode = entry
    if kind == "create":
        names[name] = inode
    elif kind == "remove":
        del names[name]
    else:
        assert new is not None
        names[new] = names.pop(name)


def _missing(what: str, name: str) -> FileNotFoundError:
    return FileNotFoundError(
        errno.ENOENT, f"cannot {what} {name!r}: no such file in the store", name
    )


@dataclass
class CrashOutcome:
    """What one crash did to the unsynced state (for the timeline and tests)."""

    kept: int = 0
    lost: int = 0
    torn: int = 0
    undone: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not (self.kept or self.lost or self.torn or self.undone):
            return "nothing was unsynced"
        parts = [f"{self.kept} unsynced op(s) kept", f"{self.lost} lost", f"{self.torn} torn"]
        if self.undone:
            parts.append(f"undone: {', '.join(self.undone)}")
        return ", ".join(parts)


@final
class Disk:
    """The files of one process, across its reboots (see the module doc)."""

    def __init__(self) -> None:
        self.names: dict[str, Inode] = {}
        self.durable_names: dict[str, Inode] = {}
        self.journal: list[JournalEntry] = []
        self.crashes = 0
        self.wipes = 0

    # -- namespace -----------------------------------------------------------------

    def open(self, name: str) -> Inode:
        inode = self.names.get(name)
        if inode is None:
            inode = self.names[name] = Inode()
            self._journal(("create", name, None, inode))
        return inode

    def remove(self, name: str) -> None:
        inode = self.names.pop(name, None)
        if inode is None:
            raise _missing("remove", name)
        self._journal(("remove", name, None, inode))

    def rename(self, old: str, new: str) -> None:
        inode = self.names.get(old)
        if inode is None:
            raise _missing("rename", old)
        if old == new:
            return
        del self.names[old]
        self.names[new] = inode
        self._journal(("rename", old, new, inode))

    def _journal(self, entry: JournalEntry) -> None:
        journal = self.journal
        journal.append(entry)
        while len(journal) > MAX_JOURNAL:  # the file system commits the oldest
            _replay_entry(self.durable_names, journal.pop(0))

    def sync_names(self) -> int:
        """Make every namespace change so far durable; returns how many it covered."""
        covered = len(self.journal)
        if covered:
            self.durable_names = dict(self.names)
            self.journal.clear()
        return covered

    # -- what the machine does -------------------------------------------------------

    def crash(self, rng: random.Random, admit: Admit) -> CrashOutcome:
        """The machine lost power: keep a prefix of the journal, then fate each write."""
        self.crashes += 1
        outcome = CrashOutcome()
        # Each file's fates from a stream of its own: refusing one undo (a fault
        # plan) makes a file reachable or not, and must not move the others' fates.
        files = rng.getrandbits(64)
        journal = self.journal
        keep = rng.randint(0, len(journal)) if journal else 0
        # Undo from the newest; a refused undo keeps that change and every older one.
        for index in range(len(journal) - 1, keep - 1, -1):
            kind, name, new, _ = journal[index]
            what = f"{kind} {name}" + (f" -> {new}" if new is not None else "")
            if not admit(f"undone_{kind}", new or name, f"{what} undone"):
                keep = index + 1
                break
            outcome.undone.append(what)
        names = dict(self.durable_names)
        for entry in journal[:keep]:
            _replay_entry(names, entry)
        # Fate every inode that may still be reached, in name order (deterministic).
        for name in sorted(names):
            names[name].crash(random.Random(f"{files}/{name}"), admit, name, outcome)
        self.names = names
        self.durable_names = dict(names)
        self.journal = []
        return outcome

    def wipe(self) -> None:
        """The machine's disk was replaced: every file is gone, synced or not."""
        self.wipes += 1
        self.names = {}
        self.durable_names = {}
        self.journal = []

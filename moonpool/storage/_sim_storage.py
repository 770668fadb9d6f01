"""The simulated disk: a ``StorageProvider`` that crashes like a real one.

A :class:`SimStorage` is one *life* of one process's disk: the simulation
gives every boot of a process a fresh view of the same disk (its
:class:`~moonpool.storage._disk.Disk`), and ends the view when that boot
ends.  A graceful end loses nothing; a crash rebuilds the disk from what was
synced plus a seeded fate for each unsynced write (kept, lost or torn) and
namespace change (kept or undone) -- see :mod:`moonpool.storage._provider` for
the contract and :mod:`moonpool.storage._disk` for the model.  From the crash
on, every call through the dead view, or a file it opened, raises
:class:`~moonpool.storage.StorageDown`: a crashed process has no disk.

While the run is on, :class:`~moonpool.storage.StorageChaosConfig` adds the
faults of a disk that is up: latency, failed syncs, corrupted reads and
operations that never complete.  Every decision is drawn from a stream keyed by
the process and what it decides, and goes through the run's fault plan, so a
failing seed replays -- and shrinks -- like the network's faults.

Every operation takes effect when it returns: one cancelled, or cut short by a
crash, did not happen.  Used alone (outside a simulation) a ``SimStorage`` is
an in-memory store on trio, and :meth:`SimStorage.crash` shows what a crash
would keep.
"""

from __future__ import annotations

import errno
import random
from types import TracebackType
from typing import Self, final

import trio

from moonpool._ground._run import current_run, derive_random
from moonpool.storage._chaos import StorageChaosConfig
from moonpool.storage._disk import CrashOutcome, Disk, Inode
from moonpool.storage._provider import (
    FileClosedError,
    StorageDown,
    StorageError,
    SyncFailed,
    check_name,
    check_offset,
)

__all__ = ["MAX_FILE_SIZE", "SimFile", "SimStorage"]

MAX_FILE_SIZE = 1 << 30
"""The largest simulated file, in bytes (1 GiB): files live in memory, densely.  A
write beyond it raises ``StorageError`` with errno ``EFBIG``."""


class _Store:
    """One process's disk and the dice of its faults, shared by all its lives."""

    def __init__(self, host: str, seed: int, chaos: StorageChaosConfig) -> None:
        self.host = host
        self.seed = seed
        self.chaos = chaos
        self.disk = Disk()
        self.run = current_run()
        self.active = True  # False: chaos stopped (the network's stop_chaos, for a disk)
        self.fault_counts: dict[str, int] = {}
        self._streams: dict[str, random.Random] = {}

    def stream(self, kind: str) -> random.Random:
        stream = self._streams.get(kind)
        if stream is None:
            stream = self._streams[kind] = derive_random(self.seed, f"storage/{self.host}/{kind}")
        return stream

    @property
    def chaos_on(self) -> bool:
        return self.active and (self.run is None or self.run.chaos_active)

    def chance(self, kind: str, probability: float) -> random.Random | None:
        """The dice of ``kind`` if this operation draws that fault, else None."""
        if probability <= 0 or not self.chaos_on:
            return None
        stream = self.stream(kind)
        return stream if stream.random() < probability else None

    def admit(self, family: str, target: str, text: str) -> bool:
        """Whether a fault the dice chose happens (the run's fault plan may say no)."""
        run = self.run
        name = f"{family}/{self.host}:{_plan_safe(target)}"
        if run is not None and not run.admit_fault(name, family, f"{self.host}: {text}", self.host):
            return False
        self.count(family)
        return True

    def count(self, family: str) -> None:
        self.fault_counts[family] = self.fault_counts.get(family, 0) + 1
        if self.run is not None:
            self.run.faults[family] = self.run.faults.get(family, 0) + 1

    def note(self, text: str) -> None:
        if self.run is not None:
            self.run.note("storage", text, self.host)

    def delay(self, sync: bool) -> float:
        span = self.chaos.sync_latency if sync else self.chaos.latency
        if span is None:
            return 0.0
        self.count("storage_latency")
        return self.stream("latency").uniform(*span)


def _plan_safe(text: str) -> str:
    """``text`` fit for a fault name: a fault plan is split at commas and stripped."""
    return "".join(f"%{ord(c):02X}" if c in ",%#" or c.isspace() else c for c in text)


class _Life:
    """One boot's use of the disk: alive until the process exits or crashes."""

    __slots__ = ("alive", "ended_by", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self.alive = True
        self.ended_by = ""


@final
class SimStorage:
    """An in-memory disk with seeded faults and crash semantics; a ``StorageProvider``.

    In a simulation, ``ProcessContext.storage`` is one: a store per process,
    living across its reboots.  Alone, ``SimStorage()`` is a perfect disk
    (``chaos`` None) whose :meth:`crash`, :meth:`reboot` and :meth:`wipe` end this
    view and return the next boot's.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        chaos: StorageChaosConfig | None = None,
        host: str = "local",
        _store: _Store | None = None,
        _life: int = 0,
    ) -> None:
        if chaos is not None and not isinstance(chaos, StorageChaosConfig):
            raise TypeError(f"expected a StorageChaosConfig or None, got {chaos!r}")
        self._store = _store or _Store(host, seed, chaos or StorageChaosConfig.none())
        self._life = _Life(_life)

    def __repr__(self) -> str:
        state = "" if self._life.alive else f", {self._life.ended_by}"
        return f"<SimStorage host={self.host!r} life={self._life.number}{state}>"

    @property
    def host(self) -> str:
        return self._store.host

    @property
    def chaos(self) -> StorageChaosConfig:
        return self._store.chaos

    @property
    def fault_counts(self) -> dict[str, int]:
        """Storage faults injected so far on this disk, per family (crash fates too)."""
        return dict(self._store.fault_counts)

    @property
    def alive(self) -> bool:
        """False once this view's process has exited or crashed."""
        return self._life.alive

    # -- lives --------------------------------------------------------------------

    def end_life(self, *, crash: bool, wipe: bool = False) -> CrashOutcome | None:
        """End this view: what the runtime does when its process dies.

        ``crash`` rebuilds the disk as a power loss leaves it (see the module doc)
        and returns what it kept; ``wipe`` (with ``crash``) empties it instead.  A
        graceful end (``crash=False``) loses nothing.  Ending an ended view does
        nothing.
        """
        life = self._life
        if not life.alive:
            return None
        life.alive = False
        store = self._store
        outcome = None
        if not crash:
            life.ended_by = "exited"
        elif wipe:
            life.ended_by = "wiped"
            store.disk.wipe()
            store.note("disk wiped: every file is gone")
        else:
            life.ended_by = "crashed"
            rng = derive_random(store.seed, f"storage/{store.host}/crash/{store.disk.crashes}")
            outcome = store.disk.crash(rng, store.admit)
            store.note(f"crash: {outcome.describe()}")
            if store.run is not None:
                store.run.trace_text(f"storage-crash:{store.host}:{outcome.describe()}")
        return outcome

    def _next(self) -> SimStorage:
        return SimStorage(_store=self._store, _life=self._life.number + 1)

    def next_life(self) -> SimStorage:
        """A view for the next boot of this process (the runtime's; this one must be over)."""
        if self._life.alive:
            raise RuntimeError(f"{self!r} is still alive: end its life first")
        return self._next()

    def crash(self) -> SimStorage:
        """Crash this view's machine (see :meth:`end_life`); returns the next boot's view."""
        self.end_life(crash=True)
        return self._next()

    def reboot(self) -> SimStorage:
        """End this view gracefully (nothing is lost); returns the next boot's view."""
        self.end_life(crash=False)
        return self._next()

    def wipe(self) -> SimStorage:
        """Crash and empty the disk; returns the next boot's view."""
        self.end_life(crash=True, wipe=True)
        return self._next()

    def stop_chaos(self) -> None:
        """No more faults on this disk (latency stays); the runtime's is the run's phase."""
        self._store.active = False

    # -- what every operation does ---------------------------------------------------

    def check_alive(self, what: str) -> None:
        life = self._life
        if not life.alive:
            raise StorageDown(
                f"{self.host} cannot {what}: this process has {life.ended_by}, and its "
                f"storage (and every file it opened) is gone to it; the next boot gets "
                f"its own ProcessContext.storage"
            )

    async def io(self, op: str, target: str, *, sync: bool = False) -> None:
        """An operation's time on the disk: latency, or forever if it hangs.

        ``op`` names the operation (``write``), ``target`` the file or ``.`` (the
        store itself), for messages and fault names (``storage_hang/host:write:f``).
        """
        what = f"{op} {target}" if target != "." else f"{op} the store"
        self.check_alive(what)
        store = self._store
        if store.chance("hang", store.chaos.hang) is not None and store.admit(
            "storage_hang", f"{op}:{target}", f"{what} hangs"
        ):
            await trio.sleep_forever()
        delay = store.delay(sync)
        if delay > 0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        self.check_alive(what)  # it may have crashed meanwhile: then nothing happened

    # -- StorageProvider ------------------------------------------------------------

    async def open(self, name: str) -> SimFile:
        check_name(name)
        await self.io("open", name)
        inode = self._store.disk.open(name)
        return SimFile(self, name, inode)

    async def list(self) -> list[str]:
        await self.io("list", ".")
        return sorted(self._store.disk.names)

    async def exists(self, name: str) -> bool:
        check_name(name)
        await self.io("look up", name)
        return name in self._store.disk.names

    async def remove(self, name: str) -> None:
        check_name(name)
        await self.io("remove", name)
        self._store.disk.remove(name)

    async def rename(self, old: str, new: str) -> None:
        check_name(old)
        check_name(new)
        await self.io("rename", old)
        self._store.disk.rename(old, new)

    async def sync(self) -> None:
        await self.io("sync", ".", sync=True)
        store = self._store
        if store.chance("sync_failure", store.chaos.sync_failure) is not None and store.admit(
            "sync_failure", ".", "sync of the store failed"
        ):
            raise SyncFailed(
                f"sync of the store on {store.host} failed (simulated I/O error): its "
                f"{len(store.disk.journal)} unsynced create(s), remove(s) and rename(s) "
                f"are not durable; sync it again"
            )
        covered = self._store.disk.sync_names()
        if covered:
            self._store.note(f"store synced: {covered} namespace change(s) durable")


@final
class SimFile:
    """One open file of a :class:`SimStorage`; a ``StorageFile``."""

    __slots__ = ("_closed", "_inode", "_name", "_storage")

    def __init__(self, storage: SimStorage, name: str, inode: Inode) -> None:
        self._storage = storage
        self._name = name
        self._inode = inode
        self._closed = False

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<SimFile {self._name!r} of {self._storage.host!r}{state}>"

    @property
    def name(self) -> str:
        return self._name

    def _check(self, what: str) -> None:
        if self._closed:
            raise FileClosedError(
                f"cannot {what} {self._name!r}: the file is closed (open it again with "
                f"storage.open({self._name!r}))"
            )
        self._storage.check_alive(f"{what} {self._name}")

    async def _io(self, what: str, *, sync: bool = False) -> None:
        # Closed is checked before only: an operation under way when the file is
        # closed completes, as on a real file (aclose waits for it there).
        self._check(what)
        await self._storage.io(what, self._name, sync=sync)

    async def read(self, offset: int, size: int) -> bytes:
        check_offset("offset", offset)
        check_offset("size", size)
        await self._io("read")
        data = bytes(self._inode.current[offset : offset + size])
        store = self._storage._store
        dice = store.chance("read_corruption", store.chaos.read_corruption) if data else None
        if dice is not None:
            bit = dice.randrange(len(data) * 8)
            text = f"read of {self._name} at {offset}: bit {bit} flipped"
            if store.admit("read_corruption", self._name, text):
                flipped = bytearray(data)
                flipped[bit // 8] ^= 1 << (bit % 8)
                data = bytes(flipped)
        return data

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        check_offset("offset", offset)
        payload = _payload(data)
        self._check_size("write", offset + len(payload) if payload else 0)
        await self._io("write")
        self._inode.write(offset, payload)

    async def append(self, data: bytes | bytearray | memoryview) -> int:
        payload = _payload(data)
        await self._io("append")
        offset = len(self._inode.current)
        self._check_size("append", offset + len(payload))
        self._inode.write(offset, payload)
        return offset

    def _check_size(self, what: str, end: int) -> None:
        if end > MAX_FILE_SIZE:
            raise StorageError(
                errno.EFBIG,
                f"cannot {what} {self._name!r} up to byte {end}: a simulated file is kept "
                f"in memory, and may not grow past {MAX_FILE_SIZE} bytes",
            )

    async def size(self) -> int:
        self._check("size")
        await trio.lowlevel.checkpoint()
        self._check("size")
        return len(self._inode.current)

    async def truncate(self, size: int) -> None:
        check_offset("size", size)
        self._check_size("truncate", size)
        await self._io("truncate")
        self._inode.truncate(size)

    async def sync(self) -> None:
        await self._io("sync", sync=True)
        store = self._storage._store
        if store.chance("sync_failure", store.chaos.sync_failure) is not None and store.admit(
            "sync_failure", self._name, f"sync of {self._name} failed"
        ):
            dropped = self._inode.fail_sync()
            raise SyncFailed(
                f"sync of {self._name!r} on {store.host} failed (simulated I/O error): "
                f"its {dropped} unsynced write(s) were dropped, as Linux drops them -- "
                f"still readable here, they will never reach the disk: write them again "
                f"before the next sync, or treat the file as lost"
            )
        covered = self._inode.sync()
        if covered:
            store.note(f"synced {self._name}: {covered} write(s) durable")

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _payload(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")

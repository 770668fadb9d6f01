"""What processes and workloads see of the simulation they run in.

Both contexts are plain frozen dataclasses: the simulation builds them, and a
program running outside a simulation (on real TCP) builds them itself, so the
same process and workload code runs in both worlds.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, final

import anyio

from moonpool.storage._provider import StorageProvider
from moonpool.storage._unavailable import NO_STORAGE

if TYPE_CHECKING:
    from moonpool.net import NetworkProvider

__all__ = ["KillKind", "ProcessContext", "ProcessControl", "WorkloadContext"]

KillKind = Literal["crash", "reboot", "wipe"]
"""How a process dies: ``"crash"`` at once (its connections reset, nothing it does
afterwards reaches the network or its disk, and its unsynced writes may be lost
or torn), ``"reboot"`` gracefully (``shutdown`` is set, then it is killed if still
running after the grace period; its disk loses nothing), ``"wipe"`` like a crash
that also empties its disk (the machine was replaced)."""

KILL_KINDS: tuple[KillKind, ...] = ("crash", "reboot", "wipe")


class ProcessControl(Protocol):
    """What a workload may do to the processes (implemented by the simulation runtime)."""

    async def kill(self, name: str, kind: KillKind, restart_after: float | None) -> bool: ...

    async def restart(self, name: str) -> bool: ...

    def is_running(self, name: str) -> bool: ...

    def kills(self, name: str) -> dict[KillKind, int]: ...


@dataclass(frozen=True, eq=False, kw_only=True)
class _Context:
    """What processes and workloads both have (see the two contexts below)."""

    name: str
    address: str
    peers: Mapping[str, str]
    network: NetworkProvider
    random: random.Random
    shutdown: anyio.Event
    seed: int = 0
    state: MutableMapping[str, Any] = field(default_factory=dict)


@final
@dataclass(frozen=True, eq=False, kw_only=True)
class ProcessContext(_Context):
    """Handed to each boot of a process: who it is, who the others are, what it may use.

    A process is the code you ship (a server).  In simulation it may be killed
    at any time and is booted again -- by calling its function afresh, so every
    in-memory value is gone -- at the same ``address``; ``incarnation`` counts
    the boots (0 first).  ``shutdown`` is set when this boot must stop (a
    graceful reboot, or the end of the simulation) and the process must then
    return within the grace period.  ``random`` is this boot's seeded stream;
    ``state`` is one mapping per seed shared with every process and workload,
    for checks to compare notes -- not a disk (it survives crashes, and the
    code you ship has no such thing).

    ``storage`` is the process's disk: in simulation a ``SimStorage`` of its
    own that lives across its reboots (what was synced survives a crash; what
    was not may be lost or torn; a ``wipe`` empties it), outside one what you
    pass (a ``RealStorage``).  A context built without one raises on first use.
    """

    incarnation: int = 0
    storage: StorageProvider = field(default=NO_STORAGE, repr=False)


@final
@dataclass(frozen=True, eq=False, kw_only=True)
class WorkloadContext(_Context):
    """Handed to each workload: who it is, who the others are, and the run's resources.

    A workload is a test driver: it is never killed.  ``random`` is its own
    seeded stream -- use it, never the global ``random`` module, or the seed
    stops determining the run.  ``state`` is the mapping shared by everyone in
    this seed.  ``shutdown`` is set when the simulation ends, after every
    check (code shared with processes may wait on it); it is an ``anyio.Event``
    so that the same code runs outside the simulation, on trio or asyncio.

    :meth:`kill` and :meth:`restart` script process faults ("crash the leader
    after the first write"); they need a simulation.
    """

    _processes: ProcessControl | None = field(default=None, repr=False)

    async def kill(
        self, name: str, kind: KillKind = "crash", *, restart_after: float | None = None
    ) -> bool:
        """Kill process ``name`` now; False if it was not running.

        A ``"crash"`` or ``"wipe"`` returns at once; a ``"reboot"`` returns once the process
        is down (it returned, or the grace period ran out and it was killed).
        It stays down until :meth:`restart`, until ``restart_after`` simulated
        seconds have passed, or until the run phase ends -- whichever is first.
        A ``"wipe"`` is a crash that also empties the process's disk.  A ``"crash"``
        or ``"wipe"`` also cuts short a reboot under way.  Scripted kills are not
        held back by the attrition's ``max_dead`` (you asked for them), but they
        count towards it: attrition kills no one while ``max_dead`` are down.
        Note that a program blocked with no timer pending is deadlocked even if
        a ``restart_after`` is due: the runtime's own events never keep it alive.
        """
        if kind not in KILL_KINDS:
            raise ValueError(f"kind must be one of {KILL_KINDS}, got {kind!r}")
        if restart_after is not None and (
            isinstance(restart_after, bool) or not 0 <= restart_after < float("inf")
        ):
            raise ValueError(f"restart_after must be >= 0 seconds or None, got {restart_after!r}")
        return await self._control("kill").kill(name, kind, restart_after)

    async def restart(self, name: str) -> bool:
        """Boot process ``name`` again now if it is down; False if it was running."""
        return await self._control("restart").restart(name)

    def is_running(self, name: str) -> bool:
        """Whether process ``name`` is up (booted and not being killed)."""
        return self._control("is_running").is_running(name)

    def kills(self, name: str) -> dict[KillKind, int]:
        """How often process ``name`` was killed so far this seed, per kind (every kind).

        A test's model of what may be lost reads it: an acknowledged write on a
        process never ``wipe``-d since must still be there.
        """
        return self._control("kills").kills(name)

    def _control(self, what: str) -> ProcessControl:
        if self._processes is None:
            raise RuntimeError(
                f"WorkloadContext.{what}() needs a simulation: outside one there are no "
                f"simulated processes to control"
            )
        return self._processes

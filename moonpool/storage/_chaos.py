"""What faults a simulated disk injects while the run is on, and how often.

Crashes are not configured here: what a crash keeps of unsynced writes is the
disk's nature (see :mod:`moonpool.storage._disk`), and attrition decides when
processes crash.  This is the rest -- what goes wrong with a disk that is up:

``latency``          every operation takes a sampled time (``sync`` its own, longer;
                     counted as ``storage_latency``)
``sync_failure``     ``sync()`` raises ``SyncFailed``; its writes stay unsynced
``read_corruption``  a ``read`` returns data with a flipped bit (the disk keeps
                     the right bytes; off by default: turn it on to test checksums)
``storage_hang``     an operation never completes (off by default: with it on, an
                     I/O without a timeout becomes a reported deadlock)

Probabilities are per operation (``sync_failure`` per ``sync`` of a file or of
the store, ``read_corruption`` per ``read``, ``hang`` per operation that goes to
the disk: all but ``size()`` and ``aclose()``, which never wait).
"""

from __future__ import annotations

import math

import msgspec

__all__ = ["STORAGE_FAULT_FAMILIES", "StorageChaosConfig"]

STORAGE_FAULT_FAMILIES = (
    "storage_latency",
    "sync_failure",
    "read_corruption",
    "storage_hang",
    "lost_write",
    "torn_write",
    "undone_create",
    "undone_remove",
    "undone_rename",
)
"""The names under which storage faults are counted in a report's fault totals."""


def _check_range(name: str, value: tuple[float, float] | None) -> None:
    if value is None:
        return
    if not (isinstance(value, tuple) and len(value) == 2):
        raise ValueError(
            f"StorageChaosConfig.{name} is a (low, high) tuple of seconds, or None; got {value!r}"
        )
    low, high = value
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise ValueError(f"StorageChaosConfig.{name} needs numbers, got {value!r}")
    # Written so that NaN fails too; an infinite latency is a hang (use ``hang``).
    if not 0 <= low <= high < math.inf:
        raise ValueError(f"StorageChaosConfig.{name} needs finite 0 <= low <= high, got {value!r}")


class StorageChaosConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Disk fault injection settings for ``SimStorage`` (see ``set_storage_chaos``).

    ``latency`` is the uniform (low, high) range of an operation's duration in
    simulated seconds, ``sync_latency`` that of a ``sync`` (None: instant).
    The chaos stops with the run phase, like the network's: the settle and
    check phases see a slow but healthy disk.
    """

    latency: tuple[float, float] | None = None
    sync_latency: tuple[float, float] | None = None
    sync_failure: float = 0.0
    read_corruption: float = 0.0
    hang: float = 0.0

    def __post_init__(self) -> None:
        _check_range("latency", self.latency)
        _check_range("sync_latency", self.sync_latency)
        for name in ("sync_failure", "read_corruption", "hang"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(
                    f"StorageChaosConfig.{name} is a probability within [0, 1], got {value!r}"
                )

    @classmethod
    def none(cls) -> StorageChaosConfig:
        """A perfect disk: instant, never failing (crashes still lose unsynced writes)."""
        return cls()

    @classmethod
    def default(cls) -> StorageChaosConfig:
        """A real disk's trouble: latency, and a rare failed ``sync``."""
        return cls(latency=(0.00005, 0.001), sync_latency=(0.0005, 0.01), sync_failure=0.01)

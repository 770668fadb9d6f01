"""Storage providers: the simulated disk that crashes like a real one, and a real directory.

Same shape as :mod:`moonpool.net`: a small protocol (:class:`StorageProvider`,
:class:`StorageFile`), a simulated form with seeded faults (:class:`SimStorage`,
configured by :class:`StorageChaosConfig`) and a real one (:class:`RealStorage`),
held to one conformance suite, so server code written against the protocol runs
in simulation and on a real disk alike.  The durability contract is in
:mod:`moonpool.storage._provider`'s docstring, and in the README.
"""

from moonpool._ground._public import publish
from moonpool.storage._chaos import STORAGE_FAULT_FAMILIES, StorageChaosConfig
from moonpool.storage._provider import (
    SECTOR,
    FileClosedError,
    InvalidFileName,
    StorageDown,
    StorageError,
    StorageFile,
    StorageProvider,
    SyncFailed,
)
from moonpool.storage._real_storage import RealFile, RealStorage
from moonpool.storage._sim_storage import MAX_FILE_SIZE, SimFile, SimStorage

__all__ = [
    "MAX_FILE_SIZE",
    "SECTOR",
    "STORAGE_FAULT_FAMILIES",
    "FileClosedError",
    "InvalidFileName",
    "RealFile",
    "RealStorage",
    "SimFile",
    "SimStorage",
    "StorageChaosConfig",
    "StorageDown",
    "StorageError",
    "StorageFile",
    "StorageProvider",
    "SyncFailed",
]

# Tracebacks, reprs and the API reference show the public names
# (moonpool.storage.X), not the private modules the objects happen to live in.
publish(__name__, globals(), __all__)

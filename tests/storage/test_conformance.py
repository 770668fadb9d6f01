"""Every store against the one conformance suite (``tests/storage/conformance.py``).

Each provider in :data:`PROVIDERS` turns a fresh ``tmp_path`` into the
:data:`~tests.storage.conformance.Opener` of an empty place, and names the anyio
backends it runs on; each check then runs once per provider and backend.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moonpool.storage import RealStorage, SimStorage, StorageChaosConfig
from moonpool.storage._provider import StorageProvider
from tests.storage.conformance import CHECKS, Opener, check_storage_provider

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Provider:
    """A store under test: how to open one on a fresh place, and where it runs."""

    name: str
    opener: Callable[[Path], Opener]
    """Given an empty directory of its own, the opener of a fresh, empty place."""
    backends: frozenset[str]


SLOW = StorageChaosConfig(latency=(0.001, 0.01), sync_latency=(0.01, 0.05))


def sim_opener(chaos: StorageChaosConfig | None) -> Opener:
    """Reopening a ``SimStorage`` is its next life after a graceful reboot."""
    current: SimStorage | None = None

    async def open_store() -> StorageProvider:
        nonlocal current
        current = SimStorage(chaos=chaos) if current is None else current.reboot()
        return current

    return open_store


def real_opener(directory: Path) -> Opener:
    """Reopening a ``RealStorage`` is a new ``RealStorage`` on the same directory."""
    place = directory / "store"  # not yet there: the first operation creates it

    async def open_store() -> StorageProvider:
        return RealStorage(place)

    return open_store


PROVIDERS: tuple[Provider, ...] = (
    Provider("RealStorage", real_opener, frozenset({"trio", "asyncio"})),
    Provider("SimStorage", lambda _: sim_opener(None), frozenset({"trio"})),
    # A slow disk (in wall time here: outside a simulation trio's clock is real).
    Provider("SimStorage-slow", lambda _: sim_opener(SLOW), frozenset({"trio"})),
)


# Each provider on the backends it runs on (parametrizing ``anyio_backend`` directly
# overrides the conftest's fixture of that name).
ON_BACKENDS = pytest.mark.parametrize(
    ("provider", "anyio_backend"),
    [
        pytest.param(provider, backend, id=f"{provider.name}-{backend}")
        for provider in PROVIDERS
        for backend in sorted(provider.backends)
    ],
)


@ON_BACKENDS
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_conformance(
    provider: Provider, check: Callable[..., Any], anyio_backend: str, tmp_path: Path
) -> None:
    await check(provider.opener(tmp_path))


@ON_BACKENDS
async def test_check_storage_provider_runs_every_check(
    provider: Provider, anyio_backend: str, tmp_path: Path
) -> None:
    counter = itertools.count()

    def new_place() -> Opener:
        directory = tmp_path / f"place{next(counter)}"
        directory.mkdir()
        return provider.opener(directory)

    await check_storage_provider(new_place)
    assert next(counter) == len(CHECKS), "each check gets a place of its own"

"""What a workload sees of the simulation it runs in."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import anyio

if TYPE_CHECKING:
    from moonpool.net import NetworkProvider

__all__ = ["Workload", "WorkloadContext", "WorkloadSpec"]


@final
@dataclass(frozen=True, eq=False)
class WorkloadContext:
    """Handed to each workload: who it is, who the others are, and the run's resources.

    ``random`` is this workload's own seeded stream -- use it, never the global
    ``random`` module, or the seed stops determining the run.  ``shutdown`` is set
    when the first workload returns; long-running workloads (servers) should
    return promptly once it is set.  It is an ``anyio.Event`` so that the same
    workload can run outside the simulation, on trio or asyncio.
    """

    name: str
    address: str
    peers: Mapping[str, str]
    network: NetworkProvider
    random: random.Random
    shutdown: anyio.Event
    seed: int


Workload = Callable[[WorkloadContext], Awaitable[None]]


@final
@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    fn: Workload

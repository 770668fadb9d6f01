"""The deterministic simulation runtime.

Write workloads as ``async def workload(ctx: WorkloadContext)``, register them on
a :class:`SimulationBuilder` and ``run()`` it: each seed is a fresh ``trio.run``
on a mock clock with a seeded scheduler and a simulated network, and the same
seed always replays the same run.
"""

from moonpool.net._chaos import ChaosConfig, LatencyConfig
from moonpool.sim._assertions import (
    AssertionViolation,
    always,
    reachable,
    sometimes,
    unreachable,
)
from moonpool.sim._buggify import buggify, buggify_with_prob
from moonpool.sim._builder import (
    FixedCount,
    IterationControl,
    SimulationBuilder,
    TimeLimit,
    UntilAllSometimesReached,
)
from moonpool.sim._report import (
    AssertionSummary,
    FailureRecord,
    RunRecord,
    SimulationFailed,
    SimulationInterrupted,
    SimulationReport,
)
from moonpool.sim._state import in_simulation
from moonpool.sim._state import sim_random as random
from moonpool.sim._workload import Workload, WorkloadContext

__all__ = [
    "AssertionSummary",
    "AssertionViolation",
    "ChaosConfig",
    "FailureRecord",
    "FixedCount",
    "IterationControl",
    "LatencyConfig",
    "RunRecord",
    "SimulationBuilder",
    "SimulationFailed",
    "SimulationInterrupted",
    "SimulationReport",
    "TimeLimit",
    "UntilAllSometimesReached",
    "Workload",
    "WorkloadContext",
    "always",
    "buggify",
    "buggify_with_prob",
    "in_simulation",
    "random",
    "reachable",
    "sometimes",
    "unreachable",
]

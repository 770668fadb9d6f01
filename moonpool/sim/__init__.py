"""The deterministic simulation runtime.

Register **processes** (the system under test: ``async def server(ctx:
ProcessContext)``, killed and rebooted by attrition) and **workloads** (the test
drivers: a function or a class with ``setup``/``run``/``check``, never killed)
on a :class:`SimulationBuilder` and ``run()`` it: each seed is a fresh
``trio.run`` on a mock clock with a seeded scheduler and a simulated network,
and the same seed always replays the same run.
"""

from moonpool._ground._buggify import buggify, buggify_with_prob
from moonpool._ground._fault_plan import InjectedFault
from moonpool._ground._public import publish
from moonpool._ground._run import in_simulation
from moonpool._ground._run import sim_random as random
from moonpool._ground._timeline import TimelineEvent
from moonpool.net._chaos import ChaosConfig, LatencyConfig
from moonpool.sim._assertions import (
    AssertionViolation,
    always,
    reachable,
    sometimes,
    unreachable,
)
from moonpool.sim._attrition import Attrition
from moonpool.sim._builder import (
    FixedCount,
    IterationControl,
    SimulationBuilder,
    TimeLimit,
    UntilAllSometimesReached,
)
from moonpool.sim._context import KillKind, ProcessContext, WorkloadContext
from moonpool.sim._database import FailureDatabase, MoonpoolDatabaseWarning, SavedSeed
from moonpool.sim._guards import NondeterminismError, NondeterminismWarning, NondeterministicCall
from moonpool.sim._report import (
    AssertionSummary,
    FailureRecord,
    ProcessEvent,
    RunRecord,
    SimulationFailed,
    SimulationInterrupted,
    SimulationReport,
)
from moonpool.sim._shrink import ShrinkError, ShrunkPlan
from moonpool.sim._target import TargetError
from moonpool.sim._workers import WorkerSetupError
from moonpool.sim._workload import Process, Workload, WorkloadFunction

__all__ = [
    "Attrition",
    "AssertionSummary",
    "AssertionViolation",
    "ChaosConfig",
    "FailureDatabase",
    "FailureRecord",
    "FixedCount",
    "InjectedFault",
    "IterationControl",
    "KillKind",
    "LatencyConfig",
    "MoonpoolDatabaseWarning",
    "NondeterminismError",
    "NondeterminismWarning",
    "NondeterministicCall",
    "Process",
    "ProcessContext",
    "ProcessEvent",
    "RunRecord",
    "SavedSeed",
    "ShrinkError",
    "ShrunkPlan",
    "SimulationBuilder",
    "SimulationFailed",
    "SimulationInterrupted",
    "SimulationReport",
    "TargetError",
    "TimeLimit",
    "TimelineEvent",
    "UntilAllSometimesReached",
    "Workload",
    "WorkerSetupError",
    "WorkloadContext",
    "WorkloadFunction",
    "always",
    "buggify",
    "buggify_with_prob",
    "in_simulation",
    "random",
    "reachable",
    "sometimes",
    "unreachable",
]

# Tracebacks, reprs and the API reference show the public names
# (moonpool.sim.X), not the private modules the objects happen to live in.
publish(__name__, globals(), __all__)

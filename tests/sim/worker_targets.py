"""Simulations for the worker-pool tests, importable by worker processes as targets.

Each function builds a complete simulation (workers re-create it by calling
the function), under default network chaos and buggify.
"""

from __future__ import annotations

import os

import trio

from moonpool.sim import (
    ChaosConfig,
    FixedCount,
    SimulationBuilder,
    UntilAllSometimesReached,
    WorkloadContext,
    always,
    buggify,
    sometimes,
)

#: The seeds on which ``crashing`` kills its own process, and ``failing`` fails.
BAD_SEEDS = (101, 104)


async def _chatty(ctx: WorkloadContext) -> None:
    """A workload whose trace depends on the seed (timing, buggify, network chaos)."""
    for step in range(20):
        await trio.sleep(ctx.random.uniform(0.0, 0.1) + (0.05 if buggify() else 0.0))
        sometimes(step == 19 and ctx.random.random() < 0.5, "a seed ends on a coin flip")


def _builder(workload: object) -> SimulationBuilder:
    return (
        SimulationBuilder()
        .set_chaos(ChaosConfig.default())
        .enable_buggify()
        .register_workload("w", workload)  # type: ignore[arg-type]
        .set_iteration_control(FixedCount(10))
    )


def chatty() -> SimulationBuilder:
    return _builder(_chatty)


def until_covered() -> SimulationBuilder:
    """As many seeds as it takes to reach every sometimes site (no total known ahead)."""
    return _builder(_chatty).set_iteration_control(UntilAllSometimesReached(50))


async def _crashing(ctx: WorkloadContext) -> None:
    await _chatty(ctx)
    if ctx.seed in BAD_SEEDS:
        os._exit(3)  # what a segfaulting extension would do to the worker


def crashing() -> SimulationBuilder:
    return _builder(_crashing)


async def _failing(ctx: WorkloadContext) -> None:
    await _chatty(ctx)
    always(ctx.seed not in BAD_SEEDS, "this seed is not a bad one", seed=ctx.seed)


def failing() -> SimulationBuilder:
    return _builder(_failing)


async def _slow(ctx: WorkloadContext) -> None:
    """A seed that takes real time (for Ctrl-C tests): CPU work between its steps."""
    for _ in range(20):
        await trio.sleep(1.0)
        sum(i * i for i in range(100_000))  # a few milliseconds of work, no clock read


def slow() -> SimulationBuilder:
    return _builder(_slow).set_iteration_control(FixedCount(200))

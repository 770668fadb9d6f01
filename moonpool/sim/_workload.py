"""The two kinds of participant a simulation registers, and how each is called.

A **process** is the system under test: ``async def fn(ctx: ProcessContext)``,
called afresh at every boot, killed by attrition.  A **workload** is a test
driver, never killed: either an ``async def fn(ctx: WorkloadContext)`` (a run
phase only) or a class -- a zero-argument factory, one instance per workload and
seed -- with ``async run(self, ctx)`` and optional ``setup`` and ``check``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, final

from moonpool.sim._context import ProcessContext, WorkloadContext

__all__ = [
    "PHASES",
    "Phase",
    "Process",
    "ProcessSpec",
    "Workload",
    "WorkloadFunction",
    "WorkloadSpec",
    "phase_method",
]

Phase = Literal["setup", "run", "check"]
PHASES: tuple[Phase, ...] = ("setup", "run", "check")

Process = Callable[[ProcessContext], Awaitable[None]]
"""A process: called at every boot, runs until killed or told to shut down."""

WorkloadFunction = Callable[[WorkloadContext], Awaitable[None]]
"""A workload that has only a run phase."""


class Workload(Protocol):
    """A workload class's instances: ``run`` is required, ``setup``/``check`` optional.

    ``setup`` runs before the run phase (one workload after another), ``check``
    after it, once chaos has stopped and traffic settled (again one after
    another); both may call the processes.
    """

    async def run(self, ctx: WorkloadContext) -> None: ...


@final
@dataclass(frozen=True)
class ProcessSpec:
    name: str
    fn: Process


@final
@dataclass(frozen=True)
class WorkloadSpec:
    """One registered workload instance; ``factory`` is set for class workloads."""

    name: str
    fn: WorkloadFunction | None = None
    factory: Callable[[], Any] | None = None

    @classmethod
    def of(cls, name: str, workload: object) -> WorkloadSpec:
        if inspect.isclass(workload):
            run = getattr(workload, "run", None)
            if not callable(run):
                raise TypeError(
                    f"workload {name!r}: class {workload.__name__} needs an "
                    f"'async def run(self, ctx)' method"
                )
            for phase in PHASES:
                method = getattr(workload, phase, None)
                if method is not None and not inspect.iscoroutinefunction(method):
                    raise TypeError(
                        f"workload {name!r}: {workload.__name__}.{phase} must be an "
                        f"'async def {phase}(self, ctx)' method"
                    )
            return cls(name, factory=workload)
        plain = inspect.isfunction(workload) and not inspect.iscoroutinefunction(workload)
        if not callable(workload) or plain:
            raise TypeError(
                f"workload {name!r}: expected an async function or a class with an async "
                f"run(self, ctx) method, got {workload!r}"
            )
        return cls(name, fn=workload)

    def instantiate(self) -> object:
        """The object whose phases run this seed (a fresh instance for class workloads)."""
        return self.factory() if self.factory is not None else self.fn


def phase_method(spec: WorkloadSpec, instance: object, phase: Phase) -> WorkloadFunction | None:
    """The coroutine function for ``phase`` of ``instance``, or None if it has none."""
    if spec.factory is None:
        return spec.fn if phase == "run" else None
    method: WorkloadFunction | None = getattr(instance, phase, None)
    return method

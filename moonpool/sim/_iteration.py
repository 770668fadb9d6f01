"""One simulation iteration: a fresh ``trio.run`` driven entirely by one seed.

The run uses trio's ``MockClock`` in autojump mode (time jumps straight to the next
deadline whenever every task is blocked, so a simulated hour takes milliseconds)
and trio's scheduler seeded from the run seed.  An :class:`_Supervisor`
instrument watches the run loop and ends the iteration -- with a message naming
who is stuck and where -- on any of:

* a workload raising (its traceback is kept);
* an ``always``/``unreachable`` violation;
* deadlock: no task runnable and no timer pending, so nothing can ever happen;
* a workload not returning within the shutdown grace period;
* the simulated-time budget or the wall-clock budget running out.

None of these waits: each is detected on the turn of the run loop where it
becomes true.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import inf
from typing import TYPE_CHECKING, Any, final

import anyio
import trio

from moonpool.sim._interrupt import CtrlC
from moonpool.sim._logs import captured_logs
from moonpool.sim._report import FailureRecord, RunRecord
from moonpool.sim._state import (
    _FNV_PRIME,
    _MASK64,
    SimRun,
    derive_random,
    reset_current_run,
    set_current_run,
)
from moonpool.sim._trio_internals import RunnerProbe, current_runner_probe, seeded_scheduler
from moonpool.sim._workload import WorkloadContext, WorkloadSpec

if TYPE_CHECKING:
    import trio.testing

    from moonpool.net import ChaosConfig, NetworkProvider

__all__ = ["IterationConfig", "IterationResult", "NetworkFactory", "run_iteration"]

DEFAULT_PORT = 4500


NetworkFactory = Callable[[int, "ChaosConfig", SimRun], "NetworkProvider"]
"""Builds an iteration's network from (seed, chaos config, run state)."""


@final
@dataclass(frozen=True)
class IterationConfig:
    workloads: Sequence[WorkloadSpec]
    chaos: ChaosConfig
    buggify: bool
    shutdown_grace: float
    sim_time_budget: float
    wall_time_budget: float
    network_factory: NetworkFactory | None = None


@final
@dataclass(frozen=True)
class IterationResult:
    record: RunRecord
    failure: FailureRecord | None
    run: SimRun


def _describe_waiting_tasks(
    root: trio.lowlevel.Task | None, index: dict[trio.lowlevel.Task, int]
) -> str:
    """Where every task under ``root`` is blocked, for deadlock and shutdown reports."""
    lines: list[str] = []
    if root is None:
        return "  (no tasks)"
    stack = [root]
    leaves: list[trio.lowlevel.Task] = []
    while stack:
        task = stack.pop()
        children = [child for nursery in task.child_nurseries for child in nursery.child_tasks]
        if children:
            stack.extend(children)
        else:
            leaves.append(task)
    for task in sorted(leaves, key=lambda t: index.get(t, -1)):
        frames = [f for f, _ in task.iter_await_frames() if "/trio/" not in f.f_code.co_filename]
        if frames:
            frame = frames[-1]
            where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        else:
            where = "inside trio"
        lines.append(f"  task {task.name!r} waits at {where}")
    return "\n".join(lines) if lines else "  (no tasks)"


class _Supervisor(trio.abc.Instrument):
    """Run-loop instrument: trace hash, failure detection and the iteration's end."""

    def __init__(self, run: SimRun, config: IterationConfig, clock: trio.testing.MockClock) -> None:
        self.run = run
        self.config = config
        self.clock = clock
        self.failure: tuple[str, str, str] | None = None  # kind, message, traceback
        self.failure_time = 0.0
        self.cancel_scope: trio.CancelScope | None = None
        self.shutdown: anyio.Event | None = None
        self.grace_deadline = inf
        self.shutdown_reason = ""
        self.running: dict[str, trio.lowlevel.Task] = {}
        self.root_task: trio.lowlevel.Task | None = None
        self._task_index: dict[trio.lowlevel.Task, int] = {}
        self.ctrl_c = CtrlC()  # replaced by the run's, which the SIGINT handler uses
        self.interrupted = False
        self._probe: RunnerProbe | None = None
        self._turns = 0
        self._last_time = 0.0
        self._wall_deadline = time.perf_counter() + config.wall_time_budget

    # -- trio.abc.Instrument hooks ------------------------------------------------

    def before_run(self) -> None:
        self._probe = current_runner_probe()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self._task_index[task] = len(self._task_index)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.run.trace(~self._task_index.get(task, -1))

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        # The hottest hook of a simulation: SimRun.trace inlined (FNV-1a step).
        run = self.run
        run.events += 1
        run.trace_hash = ((run.trace_hash ^ self._task_index[task]) * _FNV_PRIME) & _MASK64

    def before_io_wait(self, timeout: float) -> None:
        probe = self._probe
        assert probe is not None
        self._turns += 1
        now = self.clock.current_time()
        if now != self._last_time:
            # Time is part of the trace: a run that does the same steps at other
            # times (say, sleeps computed from the wall clock) is a different run.
            self._last_time = now
            self.run.trace(hash(now))  # float hashes are not salted by PYTHONHASHSEED
        if self._turns & 0xFF == 0 and time.perf_counter() > self._wall_deadline:
            self.fail(
                "wall_time_budget",
                f"iteration exceeded its wall-clock budget of {self.config.wall_time_budget}s "
                f"(sim time {self.clock.current_time():.3f}s); a workload may be spinning "
                f"without sleeping.\n{_describe_waiting_tasks(self.root_task, self._task_index)}",
            )
            return
        if (
            not self.running  # all workloads returned: only teardown is left
            or self.failure is not None
            or probe.has_runnable_tasks()
            or probe.has_idle_waiters()
        ):
            return
        next_deadline = probe.next_deadline()
        if next_deadline == inf:
            after = f" after shutdown ({self.shutdown_reason})" if self.shutdown_reason else ""
            self.fail(
                "deadlock",
                f"deadlock at sim time {now:.3f}s{after}: every task is blocked and no timer "
                f"is pending, so nothing can ever wake them.\n"
                f"{_describe_waiting_tasks(self.root_task, self._task_index)}",
            )
        elif next_deadline > self.grace_deadline:
            names = ", ".join(sorted(self.running)) or "?"
            self.fail(
                "shutdown_timeout",
                f"workload(s) {names} did not return within the {self.config.shutdown_grace}s "
                f"shutdown grace period ({self.shutdown_reason}); a long-running workload "
                f"must return once ctx.shutdown is set.\n"
                f"{_describe_waiting_tasks(self.root_task, self._task_index)}",
            )
        elif next_deadline > self.config.sim_time_budget:
            self.fail(
                "sim_time_budget",
                f"simulated time budget of {self.config.sim_time_budget}s exhausted: the next "
                f"timer is at {next_deadline:.3f}s and workloads "
                f"{', '.join(sorted(self.running))} are still running",
            )

    # -- iteration control --------------------------------------------------------

    def fail(self, kind: str, message: str, tb: str = "") -> None:
        """Record the first failure and cancel everything; later ones are consequences."""
        if self.failure is not None:
            return
        self.failure = (kind, message, tb or message)
        self.failure_time = self.clock.current_time()
        self.run.trace_text(f"failure:{kind}")
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def interrupt(self) -> None:
        """Ctrl-C asked to stop this seed (called from the run loop, see ``CtrlC``)."""
        self.interrupted = True
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    async def run_workload(self, spec: WorkloadSpec, ctx: WorkloadContext) -> None:
        self.running[spec.name] = trio.lowlevel.current_task()
        try:
            await spec.fn(ctx)
        except Exception as exc:
            if self.run.assertion_failures:
                # A violation is the root cause even when a task group wrapped it.
                violation = self.run.assertion_failures[0]
                self.fail(
                    "assertion", f"workload {spec.name!r}: {violation}", traceback.format_exc()
                )
            else:
                self.fail(
                    "workload_error",
                    f"workload {spec.name!r} raised {type(exc).__name__}: {exc}",
                    traceback.format_exc(),
                )
        finally:
            del self.running[spec.name]
            self.run.trace_text(f"returned:{spec.name}")
            if self.shutdown is not None and not self.shutdown.is_set():
                now = trio.current_time()
                self.shutdown_reason = f"set when {spec.name!r} returned at {now:.3f}s"
                self.grace_deadline = now + self.config.shutdown_grace
                self.shutdown.set()


async def _root(supervisor: _Supervisor) -> None:
    run, config = supervisor.run, supervisor.config
    network: Any
    if config.network_factory is None:
        from moonpool.net._sim_network import SimNetwork

        network = SimNetwork(seed=run.seed, chaos=config.chaos, host=config.workloads[0].name)
    else:
        network = config.network_factory(run.seed, config.chaos, run)
    addresses = {spec.name: f"{spec.name}:{DEFAULT_PORT}" for spec in config.workloads}
    shutdown = anyio.Event()
    supervisor.shutdown = shutdown
    supervisor.root_task = trio.lowlevel.current_task()
    with supervisor.ctrl_c.cancellable_seed(supervisor.interrupt):
        async with trio.open_nursery() as nursery:
            supervisor.cancel_scope = nursery.cancel_scope
            for spec in config.workloads:
                host_network = (
                    network.for_host(spec.name) if hasattr(network, "for_host") else network
                )
                ctx = WorkloadContext(
                    name=spec.name,
                    address=addresses[spec.name],
                    peers={name: addr for name, addr in addresses.items() if name != spec.name},
                    network=host_network,
                    random=derive_random(run.seed, f"workload/{spec.name}"),
                    shutdown=shutdown,
                    seed=run.seed,
                )
                nursery.start_soon(supervisor.run_workload, spec, ctx, name=spec.name)
    for family, count in getattr(network, "fault_counts", {}).items():
        run.faults[family] = run.faults.get(family, 0) + count


def run_iteration(
    seed: int,
    config: IterationConfig,
    replay_hint: Callable[[int], str],
    ctrl_c: CtrlC | None = None,
) -> IterationResult:
    """Run one seed to completion and say how it went.  Never raises for workload failures.

    Raises ``KeyboardInterrupt`` when Ctrl-C cut the seed short (``ctrl_c`` says
    how: see :mod:`moonpool.sim._interrupt`): its outcome means nothing then.
    """
    # Imported here, not at module level: trio.testing imports pytest when it is
    # installed, and `import moonpool.transport` for real networks should not.
    import trio.testing

    run = SimRun(seed=seed, buggify_enabled=config.buggify)
    clock = trio.testing.MockClock(autojump_threshold=0)
    supervisor = _Supervisor(run, config, clock)
    if ctrl_c is not None:
        supervisor.ctrl_c = ctrl_c
    token = set_current_run(run)
    started = time.perf_counter()
    try:
        with seeded_scheduler(seed), captured_logs() as log_lines:
            trio.run(
                _root,
                supervisor,
                clock=clock,
                instruments=[supervisor],
                strict_exception_groups=True,
            )
    except BaseException as exc:  # anything escaping trio.run is a runtime failure
        if _is_ctrl_c(exc):
            # The user stopping the run (wrapped by a task group, or by trio when it
            # landed in trio's own code), not a failure of this seed.
            raise KeyboardInterrupt from exc
        supervisor.cancel_scope = None  # the run is over: nothing left to cancel
        supervisor.fail("runtime_error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
    finally:
        reset_current_run(token)
    if supervisor.interrupted:
        raise KeyboardInterrupt(f"Ctrl-C cancelled seed {seed}")
    wall = time.perf_counter() - started
    if supervisor.failure is None and run.assertion_failures:
        supervisor.failure = ("assertion", run.assertion_failures[0], run.assertion_failures[0])
    sim_time = clock.current_time()
    record = RunRecord(
        seed=seed,
        ok=supervisor.failure is None,
        sim_time=sim_time,
        wall_time=wall,
        events=run.events,
        trace_hash=f"{run.trace_hash:016x}",
        faults=dict(sorted(run.faults.items())),
    )
    failure = None
    if supervisor.failure is not None:
        kind, message, tb = supervisor.failure
        if log_lines:
            tb = f"{tb.rstrip()}\n\nLast log lines of this seed (sim time):\n" + "\n".join(
                log_lines
            )
        failure = FailureRecord(
            seed=seed,
            kind=kind,
            error=message.splitlines()[0] if message else kind,
            traceback=tb if tb.startswith(message) else f"{message}\n{tb}",
            sim_time=supervisor.failure_time or sim_time,
            replay=replay_hint(seed),
        )
    return IterationResult(record=record, failure=failure, run=run)


def _is_ctrl_c(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, trio.TrioInternalError) and isinstance(exc.__cause__, KeyboardInterrupt)

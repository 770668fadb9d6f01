"""One simulation iteration: a fresh ``trio.run`` driven entirely by one seed.

The run uses trio's ``MockClock`` (time jumps straight to the next deadline or
network arrival whenever every task is blocked -- the supervisor moves it -- so
a simulated hour takes milliseconds) and trio's scheduler seeded from the run
seed.  One seed's life, all in simulated time (FoundationDB's and upstream
moonpool's, in trio terms):

1. every process boots; each workload's ``setup`` runs, one after another;
2. **run**: every workload's ``run`` concurrently, under network chaos, buggify
   and attrition;
3. once every ``run`` has returned: chaos stops (partitions heal, clogs clear,
   buggify stops firing), processes that are down boot again, and traffic
   settles for ``settle_time``;
4. **check**: each workload's ``check``, one after another;
5. every process gets ``ctx.shutdown`` and must return within the grace period.

The :class:`~moonpool.sim._supervisor.Supervisor` instrument ends the seed on
the first failure.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import anyio
import trio

from moonpool._ground._run import (
    AssertionRecord,
    SimRun,
    derive_random,
    reset_current_run,
    set_current_run,
)
from moonpool._ground._timeline import TimelineEvent, set_current_host
from moonpool.sim._attrition import Attrition
from moonpool.sim._context import WorkloadContext
from moonpool.sim._exceptions import (
    describe_exception,
    split_cancellation,
    user_traceback,
    violation_in,
)
from moonpool.sim._guards import NondeterministicCall, determinism_guards
from moonpool.sim._interrupt import CtrlC
from moonpool.sim._logs import captured_logs
from moonpool.sim._processes import Processes
from moonpool.sim._report import FailureRecord, RunRecord
from moonpool.sim._supervisor import Supervisor
from moonpool.sim._trio_internals import seeded_scheduler, sim_clock
from moonpool.sim._workload import Phase, ProcessSpec, WorkloadSpec, phase_method

if TYPE_CHECKING:
    from moonpool.net import ChaosConfig, NetworkProvider
    from moonpool.storage import StorageChaosConfig

__all__ = ["IterationConfig", "IterationResult", "NetworkFactory", "SeedOutcome", "run_iteration"]

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
    processes: Sequence[ProcessSpec] = ()
    attrition: Attrition | None = None
    settle_time: float = 5.0
    network_factory: NetworkFactory | None = None
    #: Keep the seed's whole timeline (else only its tail, for a failure).
    record_timeline: bool = False
    #: Only these faults may happen (a shrink's replay); None: every fault.
    fault_plan: frozenset[str] | None = None
    #: A nondeterministic call from user code fails the seed (else it is reported).
    strict_determinism: bool = False
    #: The disks' faults while the run is on (None: a perfect disk, crashes aside).
    storage_chaos: StorageChaosConfig | None = None


@final
@dataclass(frozen=True)
class SeedOutcome:
    """What the report needs of one seed: small and picklable, so that a worker
    process (or a Dask worker) can send it back."""

    record: RunRecord
    failure: FailureRecord | None
    kills: dict[str, int]
    assertions: dict[tuple[str, str], AssertionRecord]
    #: The ids of the faults that happened (a fault plan's entries that came up).
    fault_ids: tuple[str, ...]


@final
@dataclass(frozen=True)
class IterationResult:
    record: RunRecord
    failure: FailureRecord | None
    run: SimRun
    kills: dict[str, int]

    def outcome(self) -> SeedOutcome:
        return SeedOutcome(
            record=self.record,
            failure=self.failure,
            kills=self.kills,
            assertions=self.run.assertions,
            fault_ids=tuple(fault.id for fault in self.run.fault_log),
        )


class _Lifecycle:
    """The five phases of one seed (see the module doc), inside its ``trio.run``."""

    def __init__(self, supervisor: Supervisor, config: IterationConfig) -> None:
        self.supervisor = supervisor
        self.config = config
        self.run = supervisor.run
        self.network: Any = None
        self.processes: Processes | None = None

    def _make_network(self) -> Any:
        config, run = self.config, self.run
        if config.network_factory is not None:
            return config.network_factory(run.seed, config.chaos, run)
        from moonpool.net._sim_network import SimNetwork

        first = (config.processes or config.workloads)[0].name
        return SimNetwork(seed=run.seed, chaos=config.chaos, host=first)

    async def main(self) -> None:
        supervisor = self.supervisor
        supervisor.root_task = trio.lowlevel.current_task()
        try:
            with supervisor.ctrl_c.cancellable_seed(supervisor.interrupt):
                await self._lifecycle()
        except BaseException as exc:
            # Whatever escapes the lifecycle is the runtime's problem or a bad
            # configuration (a network factory, a workload class that cannot be
            # built): say what it was, not "deadlock" while trio tears down.
            rest, _ = split_cancellation(exc)
            if rest is not None:
                supervisor.fail(
                    "runtime_error",
                    f"the simulation runtime raised {describe_exception(rest)}",
                    "".join(traceback.format_exception(rest)),
                )
            raise
        finally:
            supervisor.finished = True
            network = self.network
            for family, count in getattr(network, "fault_counts", {}).items():
                self.run.faults[family] = self.run.faults.get(family, 0) + count

    async def _lifecycle(self) -> None:
        supervisor, config, run = self.supervisor, self.config, self.run
        self.network = network = self._make_network()
        needed = ("for_host", "stop_chaos", "end_life")
        if config.processes and not all(hasattr(network, name) for name in needed):
            raise TypeError(
                f"processes need a simulated network with for_host(), end_life() and "
                f"stop_chaos() (a SimNetwork); the network factory made {network!r}"
            )
        names = [spec.name for spec in config.processes] + [spec.name for spec in config.workloads]
        addresses = {name: f"{name}:{DEFAULT_PORT}" for name in names}
        state: dict[str, Any] = {}
        workload_shutdown = anyio.Event()
        async with trio.open_nursery() as nursery:
            supervisor.cancel_scope = nursery.cancel_scope
            nursery.start_soon(supervisor.agenda.run, name="moonpool agenda")
            processes = Processes(
                list(config.processes),
                run=run,
                network=network,
                addresses=addresses,
                state=state,
                agenda=supervisor.agenda,
                failures=supervisor,
                grace=config.shutdown_grace,
                storage_chaos=config.storage_chaos,
            )
            self.processes = processes
            supervisor.still_running = processes.still_running

            def more_context() -> list[str]:
                lines = processes.describe_down()
                waiting = workload_shutdown.statistics().tasks_waiting
                if waiting and supervisor.phase != "shutdown":
                    lines.append(
                        f"  hint: {waiting} task(s) of workloads wait for ctx.shutdown, which "
                        f"is set only after every check; a server that runs until shutdown "
                        f"is a process (register_process), not a workload"
                    )
                return lines

            supervisor.more_context = more_context
            workloads = []
            for spec in config.workloads:
                ctx = WorkloadContext(
                    name=spec.name,
                    address=addresses[spec.name],
                    peers={n: a for n, a in addresses.items() if n != spec.name},
                    network=network.for_host(spec.name)
                    if hasattr(network, "for_host")
                    else network,
                    random=derive_random(run.seed, f"workload/{spec.name}"),
                    shutdown=workload_shutdown,
                    seed=run.seed,
                    state=state,
                    _processes=processes,
                )
                try:
                    instance = spec.instantiate()
                except Exception as exc:
                    supervisor.fail(
                        "workload_error",
                        f"workload {spec.name!r}: creating it raised {describe_exception(exc)}",
                        user_traceback(exc),
                    )
                    return
                workloads.append((spec, instance, ctx))
            processes.boot_all(nursery)

            self._enter("setup")
            for spec, instance, ctx in workloads:
                await self._phase(spec, instance, ctx, "setup")

            self._enter("run")
            processes.start_attrition(config.attrition)
            async with trio.open_nursery() as running:
                for spec, instance, ctx in workloads:
                    running.start_soon(self._phase, spec, instance, ctx, "run", name=spec.name)
            if supervisor.failure is not None:
                return
            processes.end_run_phase()
            run.chaos_active = False
            if hasattr(network, "stop_chaos"):
                network.stop_chaos()
            run.trace_text("chaos stopped")

            self._enter("settle")
            await trio.sleep(config.settle_time)
            # A reboot still in its grace period ends within it; checks see every
            # process up (or the grace expiry kills and reboots it).
            with trio.move_on_after(config.shutdown_grace + 1.0):
                await processes.wait_all_up()

            self._enter("check")
            for spec, instance, ctx in workloads:
                await self._phase(spec, instance, ctx, "check")

            self._enter("shutdown")
            workload_shutdown.set()
            processes.shut_down_all()
            supervisor.grace_deadline = trio.current_time() + config.shutdown_grace
            while processes.live:  # every incarnation, killed ones still unwinding too
                await processes.live[0].done.wait()
            nursery.cancel_scope.cancel()  # the agenda task

    def _enter(self, phase: str) -> None:
        self.supervisor.phase = phase
        self.run.note("phase", phase, "")

    async def _phase(
        self, spec: WorkloadSpec, instance: object, ctx: WorkloadContext, phase: Phase
    ) -> None:
        supervisor = self.supervisor
        await trio.lowlevel.checkpoint()  # a failure cancelled the seed: no more user code
        method = phase_method(spec, instance, phase)
        if method is None or supervisor.failure is not None:
            return
        task = trio.lowlevel.current_task()
        set_current_host(spec.name)  # for the timeline: this task and those it starts
        supervisor.role_started(task, f"workload {spec.name!r} ({phase})")
        try:
            await method(ctx)
        except BaseException as exc:
            error, cancellation = split_cancellation(exc)
            if error is not None:
                where = f"workload {spec.name!r} ({phase})"
                violation = violation_in(error)
                if violation is not None:
                    supervisor.fail("assertion", f"{where}: {violation}", user_traceback(exc))
                else:
                    supervisor.fail(
                        "workload_error",
                        f"{where} raised {describe_exception(error)}",
                        user_traceback(exc),
                    )
            if cancellation is not None:
                raise cancellation from None
        finally:
            supervisor.role_ended(task)
            self.run.trace_text(f"returned:{spec.name}:{phase}")


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
    run = SimRun(
        seed=seed,
        buggify_enabled=config.buggify,
        record_timeline=config.record_timeline,
        fault_plan=config.fault_plan,
    )
    clock = sim_clock()
    supervisor = Supervisor(
        run,
        clock,
        sim_time_budget=config.sim_time_budget,
        wall_time_budget=config.wall_time_budget,
        shutdown_grace=config.shutdown_grace,
    )
    if ctrl_c is not None:
        supervisor.ctrl_c = ctrl_c
    lifecycle = _Lifecycle(supervisor, config)
    token = set_current_run(run)
    started = time.perf_counter()
    try:
        calls: dict[tuple[str, str], NondeterministicCall] = {}

        def nondeterministic(call: NondeterministicCall) -> None:
            if (call.what, call.site) not in calls:
                calls[call.what, call.site] = call
                run.note("determinism", call.describe())

        guards = determinism_guards(nondeterministic, strict=config.strict_determinism)
        with seeded_scheduler(seed), captured_logs(run), guards:
            trio.run(
                lifecycle.main,
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
        supervisor.fail("runtime_error", describe_exception(exc), traceback.format_exc())
    finally:
        reset_current_run(token)
    if supervisor.abandoned and supervisor.failure is not None:
        kind, message, tb = supervisor.failure
        note = (
            f"\n(the seed's teardown got stuck after this failure: {supervisor.abandoned} "
            f"task(s) kept running or waiting although cancelled -- a shielded wait, or a "
            f"finally block that never ends -- and were abandoned)"
        )
        supervisor.failure = (kind, message, tb.rstrip() + note)
    if supervisor.interrupted:
        raise KeyboardInterrupt(f"Ctrl-C cancelled seed {seed}")
    wall = time.perf_counter() - started
    # Failures the program swallowed (an ``except Exception`` around the call) fail
    # the seed all the same: in strict mode a nondeterministic call, and always a
    # violated assertion.  No failure was noted, so the timeline is still open.
    late: tuple[str, str] | None = None
    if config.strict_determinism and calls:
        late = ("nondeterminism", f"strict determinism: {next(iter(calls.values())).describe()}")
    elif run.assertion_failures:
        late = ("assertion", run.assertion_failures[0])
    if supervisor.failure is None and late is not None:
        kind, message = late
        supervisor.failure = (kind, message, message)
        run.timeline.add("failure", f"[{kind}] {message}", "", clock.current_time())
    sim_time = clock.current_time()
    processes = lifecycle.processes
    record = RunRecord(
        seed=seed,
        ok=supervisor.failure is None,
        sim_time=sim_time,
        wall_time=wall,
        events=run.events,
        trace_hash=f"{run.trace_hash:016x}",
        faults=dict(sorted(run.faults.items())),
        observed=dict(sorted(run.observed.items())),
        process_events=tuple(processes.events) if processes is not None else (),
        timeline=tuple(run.timeline) if run.timeline.complete else (),
        injected=tuple(run.fault_log) if run.timeline.complete else (),
        nondeterministic=tuple(call.describe() for call in calls.values()),
    )
    failure = None
    if supervisor.failure is not None:
        kind, message, tb = supervisor.failure
        tail = run.timeline.tail()
        if tail:
            tb = f"{tb.rstrip()}\n\n{_describe_tail(tail, run.timeline.count)}"
        failure = FailureRecord(
            seed=seed,
            kind=kind,
            error=message.splitlines()[0] if message else kind,
            traceback=tb if tb.startswith(message) else f"{message}\n{tb}",
            sim_time=supervisor.failure_time or sim_time,
            replay=replay_hint(seed),
            details=dict(run.violation_details) if kind == "assertion" else {},
            timeline_tail=tail,
        )
    kills = (
        {name: host.kills for name, host in processes.hosts.items()}
        if processes is not None
        else {}
    )
    return IterationResult(record=record, failure=failure, run=run, kills=kills)


def _describe_tail(tail: tuple[TimelineEvent, ...], total: int) -> str:
    head = (
        f"Timeline of this seed, its last {len(tail)} of {total} events (sim time, host, kind):"
        if total > len(tail)
        else f"Timeline of this seed ({total} events: sim time, host, kind):"
    )
    return "\n".join([head, *(str(event) for event in tail)])


def _is_ctrl_c(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, trio.TrioInternalError) and isinstance(exc.__cause__, KeyboardInterrupt)

"""Processes inside one seed: boots, kills, restarts, and the attrition that drives them.

Every boot of a process is an *incarnation*: a fresh call of its function with
a fresh context (new ``random``, new ``shutdown``, ``incarnation`` + 1) and a new
life on the network, at the same address.  Killing an incarnation:

* ``crash``: its network life ends first -- connections reset for the other
  side, listeners closed, every later network call fails -- and then its cancel
  scope is cancelled.  Its ``finally`` blocks still run (trio has no other way
  to stop a task), but whatever they send reaches nobody, and whatever they
  raise is ignored: a crashed process has no say.
* ``reboot``: ``ctx.shutdown`` is set; the process may finish what it is doing
  and return.  If it has not returned when the grace period ends, it is killed
  like a crash, but its disk loses nothing (a killed process, not a power loss).
* ``wipe``: a crash that also empties the process's disk.

Each process has one disk (a ``SimStorage`` per incarnation, over the same
disk): a crash rebuilds it from what was synced, a graceful end loses nothing.

A process returning on its own (shutdown not set) or raising is a failure of
the seed: a server whose accept loop died would be down forever in production.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

import anyio
import trio

from moonpool._ground._run import SimRun, derive_random
from moonpool._ground._timeline import set_current_host
from moonpool.sim._agenda import Agenda
from moonpool.sim._attrition import Attrition, AttritionDraws
from moonpool.sim._context import KILL_KINDS, KillKind, ProcessContext
from moonpool.sim._exceptions import (
    describe_exception,
    split_cancellation,
    user_traceback,
    violation_in,
)
from moonpool.sim._report import ProcessEvent
from moonpool.sim._workload import ProcessSpec
from moonpool.storage._chaos import StorageChaosConfig
from moonpool.storage._sim_storage import SimStorage

__all__ = ["ProcessHost", "Processes", "SimulatedNetwork"]


class SimulatedNetwork(Protocol):
    """What the runtime needs of a network to run processes (``SimNetwork`` has it)."""

    def for_host(self, host: str) -> Any: ...  # a view with end_life(crash=...)

    def stop_chaos(self) -> None: ...


class Failures(Protocol):
    def fail(self, kind: str, message: str, tb: str = "") -> None: ...

    def role_started(self, task: trio.lowlevel.Task, label: str) -> None: ...

    def role_ended(self, task: trio.lowlevel.Task) -> None: ...


class _Incarnation:
    __slots__ = ("context", "crashed", "done", "down", "network", "scope", "storage")

    def __init__(self, context: ProcessContext, network: Any, storage: SimStorage) -> None:
        self.context = context
        self.network = network
        self.storage = storage
        self.scope = trio.CancelScope()
        self.crashed = False
        self.down = trio.Event()  # set when killed or returned
        self.done = trio.Event()  # set when its task has finished (finally blocks too)


class ProcessHost:
    """One registered process and its successive incarnations."""

    def __init__(self, spec: ProcessSpec, owner: Processes) -> None:
        self.spec = spec
        self.name = spec.name
        self._owner = owner
        self.incarnations = 0
        self.current: _Incarnation | None = None
        self.state = "down"  # "up", "stopping" (graceful kill in progress) or "down"
        self.restart_entry: Any = None
        self.grace_entry: Any = None
        # Seconds from going down to the next boot (None: until asked, or the run ends).
        self.pending_restart: float | None = None
        self.kills = 0
        self.kinds: dict[KillKind, int] = {}
        self.down_since = 0.0
        # The disk, across incarnations: the view of the latest boot.
        self.storage = SimStorage(seed=owner.run.seed, chaos=owner.storage_chaos, host=spec.name)

    @property
    def up(self) -> bool:
        return self.state == "up"

    def boot(self) -> None:
        owner = self._owner
        number = self.incarnations
        self.incarnations += 1
        network = owner.network.for_host(self.name)
        if number:
            self.storage = self.storage.next_life()
        context = ProcessContext(
            name=self.name,
            address=owner.addresses[self.name],
            peers={n: a for n, a in owner.addresses.items() if n != self.name},
            network=network,
            random=derive_random(owner.run.seed, f"process/{self.name}/{number}"),
            shutdown=anyio.Event(),
            seed=owner.run.seed,
            state=owner.state,
            incarnation=number,
            storage=self.storage,
        )
        incarnation = _Incarnation(context, network, self.storage)
        self.current = incarnation
        self.state = "up"
        owner.live.append(incarnation)
        owner.nursery.start_soon(self._live, incarnation, name=f"{self.name}#{number}")

    async def _live(self, incarnation: _Incarnation) -> None:
        owner, context = self._owner, incarnation.context
        task = trio.lowlevel.current_task()
        set_current_host(self.name)  # for the timeline: this task and those it starts
        owner.run.note("process", f"boot (incarnation {context.incarnation})")
        owner.failures.role_started(
            task, f"process {self.name!r} (incarnation {context.incarnation})"
        )
        try:
            with incarnation.scope:
                await self.spec.fn(context)
            if not incarnation.crashed and not context.shutdown.is_set():
                now = trio.current_time()
                owner.failures.fail(
                    "process_exited",
                    f"process {self.name!r} (incarnation {context.incarnation}) returned at "
                    f"{now:.3f}s although ctx.shutdown was not set: a process runs until it "
                    f"is told to stop (a server whose loop ended is down for good)",
                )
        except BaseException as exc:
            error, cancellation = split_cancellation(exc)
            if error is not None and not incarnation.crashed:
                where = f"process {self.name!r} (incarnation {context.incarnation})"
                violation = violation_in(error)
                if violation is not None:
                    owner.failures.fail("assertion", f"{where}: {violation}", user_traceback(exc))
                else:
                    owner.failures.fail(
                        "process_error",
                        f"{where} raised {describe_exception(error)}",
                        user_traceback(exc),
                    )
            if cancellation is not None:
                raise cancellation from None
        finally:
            owner.failures.role_ended(task)
            incarnation.network.end_life(crash=incarnation.crashed)
            incarnation.storage.end_life(crash=incarnation.crashed)
            incarnation.done.set()
            owner.live.remove(incarnation)
            if self.current is incarnation:
                self._went_down()

    def _went_down(self) -> None:
        if self.current is not None:
            self.current.down.set()
        self.current = None
        self.state = "down"
        self.down_since = trio.current_time()
        self._owner.agenda.cancel(self.grace_entry)
        self.grace_entry = None
        self._owner.process_down(self)

    def crash(self, *, wipe: bool = False, power_loss: bool = True) -> None:
        incarnation = self.current
        if incarnation is None:
            return
        incarnation.crashed = True
        incarnation.network.end_life(crash=True)
        incarnation.storage.end_life(crash=power_loss or wipe, wipe=wipe)
        incarnation.scope.cancel()
        # Down from this instant, even while its finally blocks unwind.
        self._went_down()

    def reboot(self, grace: float) -> None:
        incarnation = self.current
        if incarnation is None or self.state != "up":
            return
        self.state = "stopping"
        incarnation.context.shutdown.set()
        self.grace_entry = self._owner.agenda.at(
            trio.current_time() + grace, self._grace_over, commits=True
        )

    def _grace_over(self) -> None:
        self.grace_entry = None
        if self.state == "stopping":
            self._owner.record(self, "grace_expired", fault=False)
            # Killed, not a power loss: the operating system keeps its writes.
            self.crash(power_loss=False)


class Processes:
    """Every process of one seed; what ``WorkloadContext.kill``/``restart`` call."""

    def __init__(
        self,
        specs: list[ProcessSpec],
        *,
        run: SimRun,
        network: SimulatedNetwork,
        addresses: Mapping[str, str],
        state: MutableMapping[str, Any],
        agenda: Agenda,
        failures: Failures,
        grace: float,
        storage_chaos: StorageChaosConfig | None = None,
    ) -> None:
        self.run = run
        self.storage_chaos = storage_chaos or StorageChaosConfig.none()
        self.network = network
        self.addresses = addresses
        self.state = state
        self.agenda = agenda
        self.failures = failures
        self.grace = grace
        self.hosts = {spec.name: ProcessHost(spec, self) for spec in specs}
        self.events: list[ProcessEvent] = []
        self.nursery: trio.Nursery
        self.phase = "setup"  # "setup", "run", "after" (restart at once), "shutdown"
        self.live: list[_Incarnation] = []  # incarnations whose task has not finished
        self._all_up = trio.Event()
        self._attrition: AttritionDraws | None = None
        self._next_kill: Any = None

    # -- lifecycle, driven by the iteration -------------------------------------------

    def boot_all(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        for host in self.hosts.values():
            self._boot(host)

    def start_attrition(self, config: Attrition | None) -> None:
        self.phase = "run"
        if config is not None and self.hosts:
            self._attrition = AttritionDraws(self.run.seed, config)
            self._schedule_kill()

    def end_run_phase(self) -> None:
        """No more attrition; every process that is down boots now."""
        self.phase = "after"
        self.agenda.cancel(self._next_kill)
        self._next_kill = None
        if self._ending:
            return
        for host in self.hosts.values():
            if host.state == "down":
                self.agenda.cancel(host.restart_entry)
                host.restart_entry = None
                self._boot(host)

    async def wait_all_up(self) -> None:
        """Return once no process is down or being rebooted."""
        while any(not host.up for host in self.hosts.values()):
            self._all_up = trio.Event()
            await self._all_up.wait()

    def shut_down_all(self) -> None:
        """Tell every process to stop for good (``live`` empties as each returns)."""
        self.phase = "shutdown"
        for host in self.hosts.values():
            self.agenda.cancel(host.restart_entry)
            self.agenda.cancel(host.grace_entry)  # the final grace period applies now
            incarnation = host.current
            if incarnation is not None:
                host.state = "stopping"
                incarnation.context.shutdown.set()

    def still_running(self) -> list[str]:
        """Processes whose task has not finished, with the incarnation when it was killed."""
        names = []
        for incarnation in self.live:
            context = incarnation.context
            killed = " (killed, still unwinding)" if incarnation.crashed else ""
            names.append(f"{context.name}#{context.incarnation}{killed}")
        return names

    def describe_down(self) -> list[str]:
        """A line per process that is down, for hang and budget reports."""
        lines: list[str] = []
        if self.phase == "shutdown":
            return lines  # down now means done
        for name, host in self.hosts.items():
            if host.state != "down":
                continue
            entry = host.restart_entry
            when = (
                f"its restart is due at {entry.time:.3f}s"
                if entry is not None and not entry.cancelled
                else "it stays down until restarted"
            )
            lines.append(f"  process {name!r} is down since {host.down_since:.3f}s; {when}")
        return lines

    # -- kills and restarts --------------------------------------------------------------

    def record(self, host: ProcessHost, event: str, *, fault: bool = True) -> None:
        now = trio.current_time()
        self.events.append(ProcessEvent(now, host.name, event))
        if fault:
            self.run.faults[event] = self.run.faults.get(event, 0) + 1
            self.run.trace_text(f"fault:{event}:{host.name}")
        else:
            self.run.trace_text(f"{event}:{host.name}")
        self.run.note("process", event.replace("_", " "), host.name)

    def _boot(self, host: ProcessHost) -> None:
        if host.incarnations:
            self.record(host, "restart")
        host.boot()
        if all(other.up for other in self.hosts.values()):
            self._all_up.set()

    def _kill(self, host: ProcessHost, kind: KillKind, restart_after: float | None) -> None:
        host.kills += 1
        host.kinds[kind] = host.kinds.get(kind, 0) + 1
        self.record(host, kind)
        host.restart_entry = None
        host.pending_restart = restart_after
        if kind == "reboot":
            host.reboot(self.grace)
        else:
            host.crash(wipe=kind == "wipe")

    def process_down(self, host: ProcessHost) -> None:
        """An incarnation ended (killed, or returned): schedule its next boot."""
        delay, host.pending_restart = host.pending_restart, None
        if self._ending:
            return  # the seed is ending (a failure, Ctrl-C): nothing boots any more
        if self.phase == "after":
            self._boot(host)  # chaos is over: every process comes back now
        elif self.phase in ("setup", "run") and delay is not None:
            host.restart_entry = self.agenda.at(
                trio.current_time() + delay, lambda: self._restart_due(host)
            )

    def _restart_due(self, host: ProcessHost) -> None:
        host.restart_entry = None
        if host.state == "down" and self.phase != "shutdown" and not self._ending:
            self._boot(host)

    @property
    def _ending(self) -> bool:
        return self.nursery.cancel_scope.cancel_called

    def _schedule_kill(self) -> None:
        draws = self._attrition
        assert draws is not None
        self._next_kill = self.agenda.at(
            trio.current_time() + draws.next_gap(), self._attrition_kill
        )

    def _attrition_kill(self) -> None:
        draws = self._attrition
        assert draws is not None
        number = draws.kills
        plan = draws.plan()
        dead = sum(1 for host in self.hosts.values() if not host.up)
        candidates = [name for name, host in self.hosts.items() if host.up]
        if candidates and dead < draws.config.max_dead:
            victim = plan.victim(candidates)
            text = f"attrition: {plan.kind} {victim}, back after {plan.recovery:.3f}s"
            # Named by the kill's number, which the kill times alone decide: a
            # suppressed kill leaves the others' names (and draws) where they were.
            if self.run.admit_fault("attrition", plan.kind, text, victim, ordinal=number):
                self._kill(self.hosts[victim], plan.kind, plan.recovery)
        self._schedule_kill()

    # -- ProcessControl (scripted faults from workloads) ------------------------------------

    def _host(self, name: str) -> ProcessHost:
        host = self.hosts.get(name)
        if host is None:
            known = ", ".join(sorted(self.hosts)) or "none registered"
            raise ValueError(f"no process named {name!r} (processes: {known})")
        return host

    async def kill(self, name: str, kind: KillKind, restart_after: float | None) -> bool:
        host = self._host(name)
        await trio.lowlevel.checkpoint()
        incarnation = host.current
        if incarnation is None or (host.state == "stopping" and kind == "reboot"):
            return False  # down already, or a reboot already under way
        if host.state == "stopping":  # a crash or wipe cuts a graceful reboot short
            host.kills += 1
            host.kinds[kind] = host.kinds.get(kind, 0) + 1
            self.record(host, kind)
            if restart_after is not None:
                host.pending_restart = restart_after
            host.crash(wipe=kind == "wipe")
            return True
        self._kill(host, kind, restart_after)
        if kind == "reboot":
            await incarnation.down.wait()
        return True

    async def restart(self, name: str) -> bool:
        host = self._host(name)
        await trio.lowlevel.checkpoint()
        if host.state != "down":
            return False
        self.agenda.cancel(host.restart_entry)
        host.restart_entry = None
        self._boot(host)
        return True

    def is_running(self, name: str) -> bool:
        return self._host(name).up

    def kills(self, name: str) -> dict[KillKind, int]:
        kinds = self._host(name).kinds
        return {kind: kinds.get(kind, 0) for kind in KILL_KINDS}

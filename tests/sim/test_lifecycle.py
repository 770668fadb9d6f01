"""Processes and workloads: the lifecycle of a seed, attrition, crash semantics, scripted kills.

Every simulation here runs with default network chaos and buggify, and, where
processes exist, attrition.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any

import anyio
import anyio.abc
import pytest
import trio

from moonpool.sim import (
    Attrition,
    ChaosConfig,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    SimulationReport,
    WorkloadContext,
    always,
    sometimes,
)
from moonpool.transport import ClientTransport, ServerTransport, TransportError


def chaos_builder(seeds: int = 20, base_seed: int = 7) -> SimulationBuilder:
    return (
        SimulationBuilder()
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_iteration_control(FixedCount(seeds))
        .set_base_seed(base_seed)
    )


async def idle_process(ctx: ProcessContext) -> None:
    """A process that only waits to be told to stop, noting each boot."""
    ctx.state.setdefault("boots", []).append((ctx.name, ctx.incarnation))
    await ctx.shutdown.wait()
    ctx.state.setdefault("log", []).append(("shutdown", ctx.name, trio.current_time()))


# -- the lifecycle -----------------------------------------------------------------------


class Recorder:
    """Logs each phase's start and end, with a pause so overlap would show."""

    async def setup(self, ctx: WorkloadContext) -> None:
        await self._phase(ctx, "setup")

    async def run(self, ctx: WorkloadContext) -> None:
        await self._phase(ctx, "run")

    async def check(self, ctx: WorkloadContext) -> None:
        await self._phase(ctx, "check")
        always(ctx.state is ctx.state["first_state"], "one state mapping per seed")

    async def _phase(self, ctx: WorkloadContext, phase: str) -> None:
        log = ctx.state.setdefault("log", [])
        ctx.state.setdefault("first_state", ctx.state)
        log.append((f"{phase} start", ctx.name, trio.current_time()))
        await trio.sleep(1.0)
        log.append((f"{phase} end", ctx.name, trio.current_time()))


def test_lifecycle_order_setup_run_settle_check_shutdown() -> None:
    logs: list[list[tuple[str, str, float]]] = []

    class LastWord:
        async def check(self, ctx: WorkloadContext) -> None:
            logs.append(ctx.state["log"])

        async def run(self, ctx: WorkloadContext) -> None:
            pass

    async def state_keeper(ctx: ProcessContext) -> None:
        await idle_process(ctx)
        logs[-1].append(("process state", ctx.name, float(ctx.state is logs[-1][0][-1])))

    report = (
        chaos_builder(seeds=10)
        .set_attrition(Attrition(max_dead=1, interval=0.5))
        .set_settle_time(2.0)
        .register_process("server", idle_process)
        .register_workload("a", Recorder)
        .register_workload("b", Recorder)
        .register_workload("zlast", LastWord)
        .run()
    )
    report.assert_success()
    assert len(logs) == 10
    for log in logs:
        times = {(event, name): t for event, name, t in log}
        # setup: one after another, in registration order.
        assert times[("setup start", "b")] >= times[("setup end", "a")]
        # run: concurrently, both starting when the last setup ended.
        assert times[("run start", "a")] == times[("run start", "b")] == times[("setup end", "b")]
        # check: after every run and the settle time, one after another.
        runs_over = max(times[("run end", "a")], times[("run end", "b")])
        assert times[("check start", "a")] == pytest.approx(runs_over + 2.0)
        assert times[("check start", "b")] >= times[("check end", "a")]
        # Reboots happen in the run phase; otherwise processes are told to stop
        # only after the last check.
        shutdowns = [t for event, _, t in log if event == "shutdown"]
        final = [t for t in shutdowns if not times[("run start", "a")] <= t <= runs_over]
        assert final and min(final) >= times[("check end", "b")]


def test_state_is_shared_by_processes_and_workloads_of_a_seed_only() -> None:
    seen: list[int] = []

    async def writer(ctx: ProcessContext) -> None:
        ctx.state["from process"] = ctx.seed
        await ctx.shutdown.wait()

    async def reader(ctx: WorkloadContext) -> None:
        await trio.sleep(0.1)
        seen.append(ctx.state.get("from process", -1))
        always(ctx.state.get("from process") == ctx.seed, "the process's note is there")

    report = (
        chaos_builder(seeds=5)
        .set_attrition(Attrition(max_dead=1, interval=10.0))
        .register_process("server", writer)
        .register_workload("client", reader)
        .run()
    )
    report.assert_success()
    assert seen == [run.seed for run in report.runs]


def test_incarnation_counts_boots_at_the_same_address() -> None:
    boots: list[list[tuple[str, int, str]]] = []

    async def noting(ctx: ProcessContext) -> None:
        ctx.state.setdefault("boots", []).append((ctx.name, ctx.incarnation, ctx.address))
        await ctx.shutdown.wait()

    class Collect:
        async def run(self, ctx: WorkloadContext) -> None:
            await trio.sleep(10)

        async def check(self, ctx: WorkloadContext) -> None:
            boots.append(list(ctx.state["boots"]))

    report = (
        chaos_builder(seeds=10)
        .set_attrition(Attrition(max_dead=1, interval=1.0))
        .register_process("server", noting, count=2)
        .register_workload("collect", Collect)
        .run()
    )
    report.assert_success()
    for run, seen in zip(report.runs, boots, strict=True):
        for name in ("server-0", "server-1"):
            mine = [(inc, address) for who, inc, address in seen if who == name]
            restarts = sum(
                1 for e in run.process_events if e.process == name and e.event == "restart"
            )
            assert [inc for inc, _ in mine] == list(range(restarts + 1))
            assert {address for _, address in mine} == {f"{name}:4500"}
    assert sum(len(seen) for seen in boots) > 30, "attrition rebooted the processes often"


# -- attrition -----------------------------------------------------------------------------


def max_down_at_once(report: SimulationReport) -> int:
    worst = 0
    for run in report.runs:
        down: set[str] = set()
        for event in run.process_events:
            if event.event in ("crash", "reboot"):
                assert event.process not in down, f"{event.process} killed while down"
                down.add(event.process)
            elif event.event == "restart":
                down.discard(event.process)
            worst = max(worst, len(down))
    return worst


@pytest.mark.parametrize("max_dead", [1, 2])
def test_max_dead_is_never_exceeded(max_dead: int) -> None:
    class Wait:
        async def run(self, ctx: WorkloadContext) -> None:
            await trio.sleep(30)

    report = (
        chaos_builder(seeds=15)
        .set_attrition(Attrition(max_dead=max_dead, interval=0.2, recovery=(0.5, 3.0)))
        .register_process("server", idle_process, count=4)
        .register_workload("wait", Wait)
        .run()
    )
    report.assert_success()
    assert max_down_at_once(report) == max_dead  # reached, never exceeded
    assert report.fault_totals["crash"] > 20 and report.fault_totals["reboot"] > 20
    # Every kill is followed by a restart: nobody stays down past the run phase.
    assert (
        report.fault_totals["restart"]
        == report.fault_totals["crash"] + report.fault_totals["reboot"]
    )


def test_attrition_only_in_the_run_phase_and_only_processes() -> None:
    class Slow:
        async def setup(self, ctx: WorkloadContext) -> None:
            await trio.sleep(20)

        async def run(self, ctx: WorkloadContext) -> None:
            ctx.state["run"] = (trio.current_time(), None)
            await trio.sleep(5)
            ctx.state["run"] = (ctx.state["run"][0], trio.current_time())

        async def check(self, ctx: WorkloadContext) -> None:
            await trio.sleep(20)
            windows.append(ctx.state["run"])

    windows: list[tuple[float, float]] = []
    report = (
        chaos_builder(seeds=10)
        .set_attrition(Attrition(max_dead=1, interval=0.3))
        .register_process("server", idle_process)
        .register_workload("slow", Slow)
        .run()
    )
    report.assert_success()
    for run, (start, end) in zip(report.runs, windows, strict=True):
        kills = [e.time for e in run.process_events if e.event in ("crash", "reboot")]
        assert kills and all(start <= t <= end for t in kills)
        # Whoever was down when the run phase ended came back at that instant.
        restarts = [e.time for e in run.process_events if e.event == "restart"]
        assert all(t <= end for t in restarts)


def test_swarm_varies_attrition_per_seed() -> None:
    class Wait:
        async def run(self, ctx: WorkloadContext) -> None:
            await trio.sleep(20)

    report = (
        chaos_builder(seeds=40)
        .set_chaos(ChaosConfig.swarm_default())
        .set_attrition(Attrition(max_dead=2, interval=1.0))
        .register_process("server", idle_process, count=3)
        .register_workload("wait", Wait)
        .run()
    )
    report.assert_success()
    kinds = [
        frozenset(e.event for e in run.process_events if e.event != "restart")
        for run in report.runs
    ]
    assert {frozenset({"crash"}), frozenset({"reboot"}), frozenset({"crash", "reboot"})} <= set(
        kinds
    )


def test_a_process_never_killed_is_named_in_the_report() -> None:
    class Brief:
        async def run(self, ctx: WorkloadContext) -> None:
            await trio.sleep(0.5)

    report = (
        chaos_builder(seeds=3)
        .set_attrition(Attrition(max_dead=1, interval=1000.0))
        .register_process("server", idle_process, count=2)
        .register_workload("brief", Brief)
        .run()
    )
    report.assert_success()
    assert report.kills == {"server-0": 0, "server-1": 0}
    assert report.never_killed == ["server-0", "server-1"]
    assert "never killed in 3 seeds: server-0, server-1" in str(report)
    assert '"never_killed":["server-0","server-1"]' in report.to_json()


def test_attrition_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_dead"):
        Attrition(max_dead=0)
    with pytest.raises(ValueError, match="interval"):
        Attrition(interval=0)
    with pytest.raises(ValueError, match="interval"):
        Attrition(interval=float("nan"))
    with pytest.raises(ValueError, match="weight > 0"):
        Attrition(crash=0, reboot=0)
    with pytest.raises(ValueError, match="recovery"):
        Attrition(recovery=(3.0, 1.0))
    with pytest.raises(TypeError, match="Attrition"):
        SimulationBuilder().set_attrition(3.0)  # type: ignore[arg-type]


# -- crash versus reboot -------------------------------------------------------------------


async def last_words(ctx: ProcessContext) -> None:
    """Says hello to the sink, then, in its finally block, goodbye -- shielded."""
    stream: anyio.abc.ByteStream | None = None
    try:
        while stream is None and not ctx.shutdown.is_set():
            try:
                stream = await ctx.network.connect(ctx.peers["sink"])
            except OSError:
                await trio.sleep(0.05)
        if stream is not None:
            await stream.send(f"hello {ctx.incarnation};".encode())
        await ctx.shutdown.wait()
    finally:
        with trio.CancelScope(shield=True):
            try:
                if stream is not None:
                    await stream.send(f"bye {ctx.incarnation};".encode())
                    await stream.aclose()
                # A new connection from a dying process must not get through either.
                late = await ctx.network.connect(ctx.peers["sink"])
                await late.send(f"late {ctx.incarnation};".encode())
                await late.aclose()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                ctx.state["blocked"] = ctx.state.get("blocked", 0) + 1


def sink_that_kills(kind: str) -> type:
    class Sink:
        """Listens for the process; kills it (scripted) once it has said hello."""

        async def setup(self, ctx: WorkloadContext) -> None:
            self.listener = await ctx.network.listen(ctx.address)
            self.heard: list[str] = []
            self.endings: list[str] = []

        async def _read(self, stream: anyio.abc.ByteStream, hello: trio.Event) -> None:
            async with stream:
                data = b""
                try:
                    while True:
                        data += await stream.receive()
                        *complete, _ = data.split(b";")
                        data = data[data.rfind(b";") + 1 :]
                        self.heard.extend(m.decode() for m in complete)
                        if any(m.startswith("hello") for m in self.heard):
                            hello.set()
                except anyio.EndOfStream:
                    self.endings.append("end of stream")
                except anyio.BrokenResourceError:
                    self.endings.append("reset")

        async def run(self, ctx: WorkloadContext) -> None:
            hello = trio.Event()
            async with self.listener, trio.open_nursery() as nursery:

                async def accept_all() -> None:
                    while True:
                        nursery.start_soon(self._read, await self.listener.accept(), hello)

                nursery.start_soon(accept_all)
                with trio.move_on_after(30):
                    await hello.wait()
                if hello.is_set():
                    assert await ctx.kill("server", kind)  # type: ignore[arg-type]
                    assert not ctx.is_running("server")
                await trio.sleep(5)  # room for anything the dying process sends
                nursery.cancel_scope.cancel()
            ctx.state.setdefault("results", []).append((list(self.heard), list(self.endings)))

    return Sink


@pytest.mark.parametrize("kind", ["crash", "reboot"])
def test_after_a_crash_nothing_from_finally_arrives_after_a_reboot_it_may(kind: str) -> None:
    results: list[tuple[list[str], list[str], int]] = []

    class Report:
        async def run(self, ctx: WorkloadContext) -> None:
            pass

        async def check(self, ctx: WorkloadContext) -> None:
            for heard, endings in ctx.state.get("results", []):
                results.append((heard, endings, ctx.state.get("blocked", 0)))

    report = (
        chaos_builder(seeds=30)
        # Attrition on, but rare: this test scripts its own kill.
        .set_attrition(Attrition(max_dead=1, interval=1000.0))
        .register_process("server", last_words)
        .register_workload("sink", sink_that_kills(kind))
        .register_workload("report", Report)
        .run()
    )
    report.assert_success()
    heard_hello = [r for r in results if any(m.startswith("hello") for m in r[0])]
    assert len(heard_hello) >= 20, results
    if kind == "crash":
        for heard, endings, blocked in heard_hello:
            assert not any(m.startswith(("bye", "late")) for m in heard), heard
            assert "end of stream" not in endings  # a reset, never a clean close
            assert blocked >= 1  # the finally block's send or connect failed
    else:
        byes = [r for r in heard_hello if any(m.startswith("bye") for m in r[0])]
        lates = [r for r in heard_hello if any(m.startswith("late") for m in r[0])]
        assert len(byes) >= len(heard_hello) // 2, "a rebooted process's goodbye gets through"
        assert lates, "and so may a new connection from its finally block"
    for run in report.runs:
        assert [e.event for e in run.process_events][:1] in ([kind], [])


# -- scripted kills ------------------------------------------------------------------------


def test_scripted_kill_and_restart_and_misuse() -> None:
    outcomes: list[list[object]] = []

    class Script:
        async def run(self, ctx: WorkloadContext) -> None:
            seen: list[object] = []
            await trio.sleep(0.1)
            seen.append(await ctx.kill("server", "crash"))  # True: it was up
            seen.append(ctx.is_running("server"))  # False
            seen.append(await ctx.kill("server", "crash"))  # False: already down
            await trio.sleep(3)
            seen.append(ctx.is_running("server"))  # still down: no restart_after given
            seen.append(await ctx.restart("server"))  # True
            seen.append(await ctx.restart("server"))  # False: running
            seen.append(await ctx.kill("server", "reboot", restart_after=1.0))  # True
            seen.append(ctx.is_running("server"))  # False right after a reboot
            await trio.sleep(1.5)
            seen.append(ctx.is_running("server"))  # True: restarted after 1 s
            for bad in (
                lambda: ctx.kill("nobody"),
                lambda: ctx.kill("server", "explode"),  # type: ignore[arg-type]
                lambda: ctx.kill("server", restart_after=-1),
                lambda: ctx.restart("nobody"),
            ):
                try:
                    await bad()
                except ValueError as exc:
                    seen.append(type(exc).__name__)
            outcomes.append(seen)

    report = (
        chaos_builder(seeds=5)
        .set_attrition(Attrition(max_dead=1, interval=1000.0))
        .register_process("server", idle_process)
        .register_workload("script", Script)
        .run()
    )
    report.assert_success()
    expected = [True, False, False, False, True, False, True, False, True] + ["ValueError"] * 4
    assert outcomes == [expected] * 5
    for run in report.runs:
        assert [e.event for e in run.process_events] == ["crash", "restart", "reboot", "restart"]


@pytest.mark.trio
async def test_kill_outside_a_simulation_says_it_needs_one() -> None:
    ctx = WorkloadContext(
        name="w",
        address="w:1",
        peers={},
        network=None,  # type: ignore[arg-type]
        random=__import__("random").Random(0),
        shutdown=anyio.Event(),
    )
    with pytest.raises(RuntimeError, match=r"kill\(\) needs a simulation"):
        await ctx.kill("server")


# -- failures of processes -----------------------------------------------------------------


def _single_failure(builder: SimulationBuilder) -> Any:
    report = builder.set_iteration_control(FixedCount(1)).run()
    assert len(report.failures) == 1
    return report.failures[0]


class Waits:
    async def run(self, ctx: WorkloadContext) -> None:
        await trio.sleep(5)


def test_a_process_returning_on_its_own_fails_the_seed() -> None:
    async def quits(ctx: ProcessContext) -> None:
        await trio.sleep(1)

    failure = _single_failure(
        chaos_builder()
        .set_attrition(Attrition(interval=1000.0))
        .register_process("server", quits)
        .register_workload("w", Waits)
    )
    assert failure.kind == "process_exited"
    assert "process 'server' (incarnation 0) returned at 1.000s" in failure.error


def test_a_process_error_names_the_real_exception_inside_its_task_group() -> None:
    async def breaks(ctx: ProcessContext) -> None:
        async with trio.open_nursery() as nursery:

            async def part() -> None:
                await trio.sleep(0.5)
                raise ValueError("bad config")

            nursery.start_soon(part)
            await ctx.shutdown.wait()

    failure = _single_failure(
        chaos_builder()
        .set_attrition(Attrition(interval=1000.0))
        .register_process("server", breaks)
        .register_workload("w", Waits)
    )
    assert failure.kind == "process_error"
    assert failure.error == "process 'server' (incarnation 0) raised ValueError: bad config"
    assert "in part" in failure.traceback


def test_a_crashed_process_may_raise_on_its_way_down_without_failing_the_seed() -> None:
    async def noisy(ctx: ProcessContext) -> None:
        try:
            await ctx.shutdown.wait()
        finally:
            raise RuntimeError("cleanup after a crash")

    class CrashIt:
        async def run(self, ctx: WorkloadContext) -> None:
            await ctx.kill("server", "crash", restart_after=0.5)
            await trio.sleep(1)

    report = (
        chaos_builder(seeds=3)
        .set_attrition(Attrition(interval=1000.0))
        .register_process("server", noisy)
        .register_workload("crash", CrashIt)
        .run()
    )
    # The crash's exception is ignored; the final, graceful shutdown's is not.
    assert [f.kind for f in report.failures] == ["process_error"] * 3
    assert all("incarnation 1" in f.error for f in report.failures)


def test_workload_blocked_inside_a_transport_is_reported_at_its_own_line() -> None:
    async def server(ctx: ProcessContext) -> None:
        async with ServerTransport.bind(ctx.network, ctx.address):
            await ctx.shutdown.wait()

    async def stuck_client(ctx: WorkloadContext) -> None:
        async with ClientTransport(ctx.network):
            await trio.Event().wait()  # forgot to set it

    failure = _single_failure(
        chaos_builder()
        .set_attrition(Attrition(interval=0.5))
        .register_process("server", server)
        .register_workload("client", stuck_client)
    )
    assert failure.kind == "deadlock"
    lines = failure.traceback.splitlines()
    [client] = [line for line in lines if "workload 'client' (run)" in line]
    assert "test_lifecycle.py" in client and "in test_workload_blocked" in client
    [process] = [line for line in lines if "process 'server'" in line]
    assert "in test_workload_blocked_inside_a_transport" in process
    assert not any("site-packages" in line for line in lines), failure.traceback


def test_sim_time_budget_failure_lists_where_everyone_waits() -> None:
    async def slow(ctx: WorkloadContext) -> None:
        await trio.sleep(500)

    failure = _single_failure(
        chaos_builder()
        .set_time_budget(100)
        .set_attrition(Attrition(interval=5.0))
        .register_process("server", idle_process)
        .register_workload("slow", slow)
    )
    assert failure.kind == "sim_time_budget"
    assert "workload 'slow' (run) waits at" in failure.traceback
    # The process is either waiting (and says where) or down (and says until when).
    assert ("process 'server' (incarnation" in failure.traceback) or (
        "process 'server' is down since" in failure.traceback
    ), failure.traceback


# -- a bug only attrition finds ------------------------------------------------------------


def ticket_server(*, survives_reboot: bool) -> Any:
    """Hands out tickets that must be unique for the whole run.

    The planted bug: the counter lives in memory only, so a rebooted server hands
    out tickets 0, 1, 2... again.  The fix puts the incarnation in the ticket.
    """

    async def serve(ctx: ProcessContext) -> None:
        counter = itertools.count()
        async with ServerTransport.bind(ctx.network, ctx.address) as server:
            async with anyio.create_task_group() as group:

                async def stop() -> None:
                    await ctx.shutdown.wait()
                    await server.aclose()

                group.start_soon(stop)
                async for request in server:
                    ticket = (
                        f"{ctx.incarnation}.{next(counter)}"
                        if survives_reboot
                        else (f"{next(counter)}")
                    )
                    with contextlib.suppress(TransportError):
                        server.send_reply(request, ticket.encode())

    return serve


class TicketClient:
    async def run(self, ctx: WorkloadContext) -> None:
        tickets = ctx.state.setdefault("tickets", [])
        async with ClientTransport(ctx.network) as client:
            for _ in range(15):
                with trio.fail_after(60):
                    while True:
                        try:
                            reply = await client.get_reply(ctx.peers["tickets"], b"one")
                            break
                        except TransportError:
                            await trio.sleep(0.1)
                tickets.append(reply)
                await trio.sleep(0.3)

    async def check(self, ctx: WorkloadContext) -> None:
        tickets = ctx.state["tickets"]
        sometimes(len(tickets) == 30, "both clients got all their tickets")
        always(len(set(tickets)) == len(tickets), "no ticket is handed out twice")


def ticket_simulation(*, survives_reboot: bool, attrition: bool) -> SimulationBuilder:
    return (
        chaos_builder(seeds=40, base_seed=99)
        .set_attrition(Attrition(max_dead=1, interval=2.0) if attrition else None)
        .register_process("tickets", ticket_server(survives_reboot=survives_reboot))
        .register_workload("client", TicketClient, count=2)
    )


def test_planted_bug_only_attrition_finds_replays_by_seed() -> None:
    # Without attrition, network chaos alone never reboots the server: the bug hides.
    chaos_only = ticket_simulation(survives_reboot=False, attrition=False).run()
    chaos_only.assert_success()
    # With attrition the simulation catches it...
    caught = ticket_simulation(survives_reboot=False, attrition=True).run()
    assert caught.failures, "attrition must expose the reused tickets"
    assert all(f.kind == "assertion" for f in caught.failures)
    assert all("no ticket is handed out twice" in f.error for f in caught.failures)
    # ...and each failing seed replays exactly: same failure, same trace.
    first = caught.failures[0]
    replay = ticket_simulation(survives_reboot=False, attrition=True).set_seeds([first.seed]).run()
    assert [f.error for f in replay.failures] == [first.error]
    original = next(run for run in caught.runs if run.seed == first.seed)
    assert replay.runs[0].trace_hash == original.trace_hash
    assert replay.runs[0].process_events == original.process_events
    # The fixed server passes the same seeds, attrition and all.
    ticket_simulation(survives_reboot=True, attrition=True).run().assert_success()


# -- found by review: each of these failed before its fix --------------------------------


def test_a_teardown_stuck_behind_a_shield_is_abandoned_not_waited_for() -> None:
    async def deaf_forever(ctx: WorkloadContext) -> None:
        try:
            await trio.sleep(1)
            raise ValueError("the real failure")
        finally:
            with trio.CancelScope(shield=True):
                await trio.Event().wait()  # never set: the teardown can't finish

    async def retries_in_finally(ctx: ProcessContext) -> None:
        try:
            await ctx.shutdown.wait()
        finally:
            with trio.CancelScope(shield=True):
                while True:  # deregistering from a dead network, forever
                    with contextlib.suppress(OSError):
                        await ctx.network.connect("registry:1")
                    await trio.sleep(1)

    class CrashThenFail:
        async def run(self, ctx: WorkloadContext) -> None:
            await ctx.kill("server", "crash")
            await trio.sleep(1)
            raise RuntimeError("fail while the crashed process still unwinds")

    started = time.perf_counter()
    deaf = _single_failure(chaos_builder().register_workload("w", deaf_forever))
    retrying = _single_failure(
        chaos_builder()
        .set_attrition(Attrition(interval=1000.0))
        .register_process("server", retries_in_finally)
        .register_workload("w", CrashThenFail)
    )
    assert time.perf_counter() - started < 10
    # The ValueError never got out of its finally block: the workload is stuck there.
    assert deaf.kind == "deadlock"
    assert "in test_a_teardown_stuck_behind_a_shield_is_abandoned_not_waited_for" in (
        deaf.traceback
    )
    assert retrying.kind == "workload_error" and "RuntimeError" in retrying.error
    for failure in (deaf, retrying):
        assert "teardown got stuck" in failure.traceback and "abandoned" in failure.traceback


def test_errors_outside_the_phases_are_named_not_called_deadlocks() -> None:
    class Unbuildable:
        def __init__(self) -> None:
            raise KeyError("no config")

        async def run(self, ctx: WorkloadContext) -> None:
            pass

    bad_class = _single_failure(chaos_builder().register_workload("w", Unbuildable))
    assert bad_class.kind == "workload_error"
    assert "workload 'w': creating it raised KeyError: 'no config'" in bad_class.error

    def broken_factory(seed: int, chaos: ChaosConfig, run: object) -> Any:
        raise OSError("no network today")

    bad_network = _single_failure(
        chaos_builder().set_network_factory(broken_factory).register_workload("w", Waits)
    )
    assert bad_network.kind == "runtime_error"
    assert "OSError: no network today" in bad_network.error

    not_sim = _single_failure(
        chaos_builder()
        .set_network_factory(lambda seed, chaos, run: object())  # type: ignore[arg-type,return-value]
        .set_attrition(Attrition())
        .register_process("server", idle_process)
        .register_workload("w", Waits)
    )
    assert not_sim.kind == "runtime_error"
    assert "processes need a simulated network" in not_sim.error

    async def exits(ctx: WorkloadContext) -> None:
        raise SystemExit(3)

    system_exit = _single_failure(chaos_builder().register_workload("w", exits))
    assert system_exit.kind == "workload_error" and "SystemExit" in system_exit.error


def test_a_deadlock_is_reported_at_once_however_many_kills_are_pending() -> None:
    async def stuck(ctx: WorkloadContext) -> None:
        await trio.sleep(1)
        await trio.Event().wait()

    started = time.perf_counter()
    report = (
        chaos_builder(seeds=3)
        .set_attrition(Attrition(max_dead=5, interval=0.2, recovery=(1.0, 10.0)))
        .register_process("server", idle_process, count=10)
        .register_workload("stuck", stuck)
        .run()
    )
    assert time.perf_counter() - started < 5
    assert [f.kind for f in report.failures] == ["deadlock"] * 3
    assert all(f.sim_time == pytest.approx(1.0) for f in report.failures)


def test_a_later_phase_or_workload_never_starts_after_a_failure() -> None:
    started: list[str] = []

    class Breaks:
        async def setup(self, ctx: WorkloadContext) -> None:
            started.append(f"{ctx.name} setup")
            raise ValueError("setup failed")

        async def run(self, ctx: WorkloadContext) -> None:
            started.append(f"{ctx.name} run")

    report = (
        chaos_builder(seeds=1)
        .set_attrition(Attrition(interval=1000.0))
        .register_process("server", idle_process)
        .register_workload("a", Breaks)
        .register_workload("b", Breaks)
        .run()
    )
    assert started == ["a setup"]
    assert report.runs[0].process_events == ()


def test_shutdown_timeout_names_only_the_processes_still_running() -> None:
    async def deaf(ctx: ProcessContext) -> None:
        while True:  # noqa: ASYNC110 - deliberately deaf to ctx.shutdown
            await trio.sleep(1)

    failure = _single_failure(
        chaos_builder()
        .set_attrition(Attrition(interval=1000.0))
        .set_shutdown_grace(3)
        .register_process("a-deaf", deaf)
        .register_process("b-good", idle_process)
        .register_workload("w", Waits)
    )
    assert failure.kind == "shutdown_timeout"
    assert "process(es) a-deaf#0 did not finish" in failure.error


def test_a_dead_process_cannot_reach_the_network_through_a_new_view() -> None:
    outcomes: list[str] = []

    async def sneaky(ctx: ProcessContext) -> None:
        try:
            await ctx.shutdown.wait()
        finally:
            try:
                ctx.network.for_host(ctx.name)  # type: ignore[attr-defined]
                outcomes.append("got a view")
            except OSError:
                outcomes.append("refused")

    class CrashIt:
        async def run(self, ctx: WorkloadContext) -> None:
            await ctx.kill("server", "crash", restart_after=0.1)
            await trio.sleep(1)

    chaos_builder(seeds=2).set_attrition(Attrition(interval=1000.0)).register_process(
        "server", sneaky
    ).register_workload("w", CrashIt).run().assert_success()
    # The crashed incarnation is refused; the last one, shut down gracefully, is not.
    assert outcomes == ["refused", "got a view"] * 2


def test_budgets_and_grace_reject_nan_and_infinity() -> None:
    builder = SimulationBuilder()
    for setter in (
        builder.set_shutdown_grace,
        builder.set_time_budget,
        builder.set_wall_time_budget,
    ):
        for bad in (float("nan"), float("inf"), 0, -1):
            with pytest.raises(ValueError, match="finite number of seconds"):
                setter(bad)
    with pytest.raises(ValueError, match=r">= 0\.001"):
        Attrition(interval=1e-6)


def test_registration_rejects_what_cannot_run() -> None:
    builder = SimulationBuilder()

    def not_async(ctx: WorkloadContext) -> None:
        pass

    class SyncRun:
        def run(self, ctx: WorkloadContext) -> None:
            pass

    class NoRun:
        async def check(self, ctx: WorkloadContext) -> None:
            pass

    with pytest.raises(TypeError, match="async function"):
        builder.register_process("p", not_async)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async function"):
        builder.register_workload("w", not_async)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"'async def run\(self, ctx\)'"):
        builder.register_workload("w", SyncRun)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"needs an 'async def run"):
        builder.register_workload("w", NoRun)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count must be an integer"):
        builder.register_workload("w", Waits, count=True)
    with pytest.raises(ValueError, match="letters, digits"):
        builder.register_workload("two words", Waits)


def test_a_connect_held_by_a_partition_goes_through_when_chaos_stops() -> None:
    times: list[float] = []

    async def dialer(ctx: ProcessContext) -> None:
        await trio.sleep(0.1)  # after the setup below cut this host off
        while ctx.incarnation == 0 and not ctx.shutdown.is_set():
            try:
                async with await ctx.network.connect(ctx.peers["sink"]):
                    times.append(trio.current_time())
                    break
            except OSError:
                await trio.sleep(0.05)
        await ctx.shutdown.wait()

    class Sink:
        async def setup(self, ctx: WorkloadContext) -> None:
            self.listener = await ctx.network.listen(ctx.address)
            ctx.network.isolate("dialer", 100.0)  # type: ignore[attr-defined]

        async def run(self, ctx: WorkloadContext) -> None:
            await trio.sleep(0.5)  # the run phase ends here; the cut would last 100 s

        async def check(self, ctx: WorkloadContext) -> None:
            await self.listener.aclose()

    (
        chaos_builder(seeds=5)
        .set_chaos(ChaosConfig.default().without(["connect_failure", "partition"]))
        .set_attrition(Attrition(interval=1000.0))
        .register_process("dialer", dialer)
        .register_workload("sink", Sink)
        .run()
        .assert_success()
    )
    # Each connect completed just after the run phase ended at 0.5 s, not at the
    # connect timeout (10 s) nor when the cut would have healed (100 s).
    assert len(times) == 5 and all(0.5 <= t < 0.6 for t in times), times


# -- found by the second review -----------------------------------------------------------


def test_a_teardown_spinning_inside_a_shield_is_abandoned_deterministically() -> None:
    async def spins(ctx: WorkloadContext) -> None:
        try:
            await trio.sleep(1)
            raise ValueError("the real failure")
        finally:
            with trio.CancelScope(shield=True):
                while True:
                    await trio.lowlevel.checkpoint()

    def once() -> Any:
        return _single_failure(
            chaos_builder().set_wall_time_budget(1).register_workload("w", spins)
        )

    started = time.perf_counter()
    first, second = once(), once()
    assert time.perf_counter() - started < 5
    # Reported as the wall-clock budget (the loop never yields to time) or, ...
    for failure in (first, second):
        assert "teardown got stuck" in failure.traceback
    # ...whatever the machine's speed, the same seed ends the same way.
    assert (first.kind, first.error) == (second.kind, second.error)


def test_a_scripted_reboot_of_a_deaf_process_waits_out_its_grace() -> None:
    async def deaf_first_boot(ctx: ProcessContext) -> None:
        if ctx.incarnation == 0:
            await trio.Event().wait()  # ignores shutdown; no timer anywhere
        await ctx.shutdown.wait()

    class Reboot:
        async def run(self, ctx: WorkloadContext) -> None:
            started = trio.current_time()
            assert await ctx.kill("server", "reboot", restart_after=0.5)
            ctx.state["waited"] = trio.current_time() - started

        async def check(self, ctx: WorkloadContext) -> None:
            always(ctx.state["waited"] == pytest.approx(10.0), "killed when the grace ran out")

    report = (
        chaos_builder(seeds=3)
        .set_shutdown_grace(10)
        .set_attrition(Attrition(interval=1000.0))
        .register_process("server", deaf_first_boot)
        .register_workload("reboot", Reboot)
        .run()
    )
    report.assert_success()
    for run in report.runs:
        assert [e.event for e in run.process_events] == ["reboot", "grace_expired", "restart"]
    assert report.kills == {"server": 3}


def test_views_a_process_made_die_with_it() -> None:
    heard: list[bytes] = []

    async def through_subview(ctx: ProcessContext) -> None:
        view = ctx.network.for_host(ctx.name)  # type: ignore[attr-defined]
        stream = None
        while stream is None and not ctx.shutdown.is_set():
            try:
                stream = await view.connect(ctx.peers["sink"])
            except OSError:
                await trio.sleep(0.05)
        try:
            await ctx.shutdown.wait()
        finally:
            with (
                trio.CancelScope(shield=True),
                contextlib.suppress(OSError, anyio.BrokenResourceError),
            ):
                if stream is not None and ctx.incarnation == 0:
                    await stream.send(b"from beyond")
                late = await view.connect(ctx.peers["sink"])
                await late.send(b"late")

    class Sink:
        async def setup(self, ctx: WorkloadContext) -> None:
            self.listener = await ctx.network.listen(ctx.address)

        async def run(self, ctx: WorkloadContext) -> None:
            async with self.listener, trio.open_nursery() as nursery:

                async def read(stream: anyio.abc.ByteStream) -> None:
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                        while True:
                            heard.append(await stream.receive())

                async def accept() -> None:
                    while True:
                        nursery.start_soon(read, await self.listener.accept())

                nursery.start_soon(accept)
                await trio.sleep(1)
                await ctx.kill("server", "crash", restart_after=0.1)
                await trio.sleep(2)
                nursery.cancel_scope.cancel()

    chaos_builder(seeds=3).set_chaos(ChaosConfig.default().without(["reset"])).set_attrition(
        Attrition(interval=1000.0)
    ).register_process("server", through_subview).register_workload("sink", Sink).run()
    assert b"from beyond" not in b"".join(heard)
    assert b"late" not in b"".join(heard)


def test_a_partition_asked_for_after_chaos_still_holds_connects() -> None:
    taken: list[float] = []

    class Check:
        async def run(self, ctx: WorkloadContext) -> None:
            pass

        async def check(self, ctx: WorkloadContext) -> None:
            ctx.network.isolate("server", 30.0)  # type: ignore[attr-defined]
            started = trio.current_time()
            with contextlib.suppress(OSError):
                async with await ctx.network.connect(ctx.peers["server"]):
                    pass
            taken.append(trio.current_time() - started)

    async def server(ctx: ProcessContext) -> None:
        async with await ctx.network.listen(ctx.address):
            await ctx.shutdown.wait()

    chaos_builder(seeds=3).set_attrition(Attrition(interval=1000.0)).register_process(
        "server", server
    ).register_workload("check", Check).run().assert_success()
    # Held until the connect timed out (10 s), not let through at once.
    assert taken == [pytest.approx(10.0)] * 3

"""Guards the private trio details the runtime relies on (see _trio_internals.py).

If this file fails after a trio upgrade, do not widen the trio pin in
pyproject.toml until moonpool/sim/_trio_internals.py is adapted.
"""

from __future__ import annotations

import pytest
import trio
import trio._core._run as trio_run
import trio.testing

from moonpool.sim._trio_internals import (
    current_runner_probe,
    force_abort,
    seeded_scheduler,
    sim_clock,
)


def _batch_order(seed: int) -> list[int]:
    order: list[int] = []

    async def main() -> None:
        async def member(i: int) -> None:
            await trio.sleep(1)
            order.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(member, i)

    with seeded_scheduler(seed):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return order


def test_private_names_exist() -> None:
    assert isinstance(trio_run._ALLOW_DETERMINISTIC_SCHEDULING, bool)
    assert hasattr(trio_run._r, "shuffle")


def test_seeded_scheduler_orders_ready_tasks_by_seed() -> None:
    assert _batch_order(1) == _batch_order(1)
    assert len({tuple(_batch_order(seed)) for seed in range(6)}) > 1


def test_seeded_scheduler_restores_trio_state() -> None:
    flag = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    state = trio_run._r.getstate()
    _batch_order(3)
    assert flag == trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    assert trio_run._r.getstate() == state


def test_runner_probe_sees_run_queue_and_deadlines() -> None:
    seen: dict[str, object] = {}

    async def main() -> None:
        probe = current_runner_probe()
        seen["deadline_idle"] = probe.next_deadline()
        with trio.move_on_after(5):
            seen["deadline_scoped"] = probe.next_deadline() - trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep, 0)
                seen["runnable"] = probe.has_runnable_tasks()
        seen["idle_waiters"] = probe.has_idle_waiters()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen["deadline_idle"] == float("inf")
    assert seen["deadline_scoped"] == 5
    assert seen["runnable"] is True
    assert seen["idle_waiters"] is False


def test_force_abort_reaches_a_task_blocked_inside_a_shield() -> None:
    class Stop(BaseException):
        pass

    seen: list[str] = []

    async def main() -> None:
        outer = trio.CancelScope()

        async def stuck() -> None:
            with outer, trio.CancelScope(shield=True):
                try:
                    await trio.Event().wait()
                except Stop:
                    seen.append("stopped")
                    raise

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck)
            await trio.testing.wait_all_tasks_blocked()
            [task] = nursery.child_tasks
            outer.cancel()  # the shield holds
            await trio.testing.wait_all_tasks_blocked()
            assert seen == []
            assert force_abort(task, Stop)
            assert not force_abort(task, Stop)  # runnable now: nothing to abort

    with pytest.raises(BaseExceptionGroup) as info:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert info.value.subgroup(Stop) is not None
    assert seen == ["stopped"]


def test_sim_clock_reads_the_time_mock_clock_would() -> None:
    """sim_clock's fast current_time is MockClock's own, bit for bit, after any jumps."""
    fast, reference = sim_clock(), trio.testing.MockClock(autojump_threshold=0)
    for seconds in (0.0, 0.015560225314033772, 1e-9, 3.5, 0.1, 1234.5678):
        fast.jump(seconds)
        reference.jump(seconds)
        assert fast.current_time() == reference.current_time()
    assert fast.current_time() == fast._virtual_base  # the private name it reads

    moments: list[float] = []

    async def main() -> None:
        await trio.sleep(2.5)
        moments.append(trio.current_time())

    trio.run(main, clock=sim_clock())  # autojump still works: no wall time waited
    assert moments == [2.5]

"""examples/multi_server.py: the simulation passes, and the same replicas serve real TCP."""

from __future__ import annotations

import pytest

from moonpool.sim import FixedCount
from tests.examples import load_example


def test_the_simulation_answers_every_request_through_attrition() -> None:
    example = load_example("multi_server")
    report = example.simulation().set_iteration_control(FixedCount(20)).run()
    report.assert_success()
    assert report.kills is not None and all(report.kills.values())


@pytest.mark.real_network
@pytest.mark.anyio
async def test_on_real_tcp_every_replica_gets_an_even_share() -> None:
    example = load_example("multi_server")
    rate, served = await example.run_real(600, 8)
    assert rate > 0 and sum(served.values()) == 600
    assert len(served) == 3 and max(served.values()) / min(served.values()) <= 1.3, served

"""Seeds on a Dask cluster: a real ``distributed.LocalCluster`` of worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moonpool.sim import FixedCount
from moonpool.sim._target import load_target
from tests.sim.test_workers import PING_PONG, TARGETS, _per_seed

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    # A task that killed its worker is retried once (not three times): the test of
    # crashing seeds waits for fewer worker restarts.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


def test_per_seed_results_on_a_local_cluster_are_those_of_one_process(client: object) -> None:
    target = f"{PING_PONG}:simulation"

    def builder():  # type: ignore[no-untyped-def]
        built = load_target(target).set_target(target).set_database(None)
        return built.set_base_seed(17).set_iteration_control(FixedCount(9))

    here = builder().run()
    there = builder().run(executor=client)
    assert _per_seed(there) == _per_seed(here)
    assert there.fault_totals == here.fault_totals


def test_a_seed_that_kills_its_dask_worker_is_reported_alone(client: object) -> None:
    target = f"{TARGETS}:crashing"
    seeds = [100, 101, 102, 103, 104, 105]
    report = load_target(target).set_target(target).set_database(None).set_seeds(seeds)
    result = report.run(executor=client)
    assert [r.seed for r in result.runs] == seeds
    crashed = sorted(f.seed for f in result.failures)
    assert crashed == [101, 104]
    assert all(f.kind == "worker_crashed" for f in result.failures)
    assert all(r.ok for r in result.runs if r.seed not in crashed)


def test_workers_and_executor_are_one_or_the_other(client: object) -> None:
    builder = load_target(f"{TARGETS}:chatty").set_target(f"{TARGETS}:chatty")
    with pytest.raises(ValueError, match="workers= or executor=, not both"):
        builder.run(workers=2, executor=client)
    assert Path(TARGETS).is_file()


def test_the_cli_runs_on_a_cluster_given_its_scheduler_address(client: object) -> None:
    import json
    import subprocess
    import sys

    address = client.scheduler.address  # type: ignore[attr-defined]
    args = ["examples/ping_pong.py", "--iterations", "6", "--base-seed", "4", "--json"]
    root = Path(PING_PONG).parents[1]

    def cli(*more: str) -> list[tuple[int, str]]:
        completed = subprocess.run(
            [sys.executable, "-m", "moonpool", "run", *args, "--no-database", *more],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert completed.returncode == 0, completed.stderr[-2000:]
        return [(r["seed"], r["trace_hash"]) for r in json.loads(completed.stdout)["runs"]]

    assert cli("--dask", address) == cli()

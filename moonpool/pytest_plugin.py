"""moonpool's pytest plugin (registered through the ``pytest11`` entry point).

* ``--moonpool-seed N[,M…]`` replays those seeds in every simulation the selected
  tests run (``SimulationBuilder.run`` reads it), so a failure reported by CI is
  reproduced with the exact command printed in the report.
* ``--moonpool-iterations N`` changes how many seeds each simulation runs.
* ``sim_network``: a :class:`~moonpool.net.SimNetwork` with default chaos for
  single-seed component tests under pytest-trio (use it with ``autojump_clock``).
* A failing simulation test gets a "moonpool" report section listing the failing
  seeds and the command that replays each.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Generator

import pytest

from moonpool._ground._run import stable_hash
from moonpool.net import ChaosConfig, SimNetwork
from moonpool.sim import SimulationFailed, _builder

OPTION_SEED = "--moonpool-seed"
OPTION_ITERATIONS = "--moonpool-iterations"
SECTION = "moonpool"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("moonpool", "moonpool deterministic simulation")
    group.addoption(
        OPTION_SEED,
        dest="moonpool_seed",
        default=None,
        metavar="SEED[,SEED...]",
        help="replay these seeds in every simulation (and seed the sim_network fixture)",
    )
    group.addoption(
        OPTION_ITERATIONS,
        dest="moonpool_iterations",
        type=int,
        default=None,
        metavar="N",
        help="run N seeds in each simulation instead of the test's own count",
    )


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("moonpool_seed")
    iterations = config.getoption("moonpool_iterations")
    if seed is not None:
        try:
            [int(part) for part in seed.split(",")]
        except ValueError:
            raise pytest.UsageError(
                f"{OPTION_SEED} takes integers separated by commas, got {seed!r}"
            ) from None
        os.environ[_builder.ENV_SEED] = seed
    if iterations is not None:
        if iterations < 1:
            raise pytest.UsageError(f"{OPTION_ITERATIONS} must be >= 1, got {iterations}")
        os.environ[_builder.ENV_ITERATIONS] = str(iterations)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    saved = _builder.replay_template
    _builder.replay_template = f"pytest {shlex.quote(item.nodeid)} {OPTION_SEED} {{seed}}"
    try:
        yield
    finally:
        _builder.replay_template = saved


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if call.excinfo is not None and isinstance(call.excinfo.value, SimulationFailed):
        simulation = call.excinfo.value.report
        lines = [f"{len(simulation.failures)} failing seed(s) of {simulation.iterations}:"]
        for failure in simulation.failures:
            lines.append(f"  seed {failure.seed} [{failure.kind}] {failure.error}")
            lines.append(f"    replay: {failure.replay}")
        for summary in simulation.missed_assertions:
            lines.append(f"  MISS {summary.kind}({summary.message!r})")
        report.sections.append((SECTION, "\n".join(lines)))
    return report


@pytest.fixture
def moonpool_seed(request: pytest.FixtureRequest) -> int:
    """The seed for single-seed component tests: ``--moonpool-seed`` or one per test."""
    option = request.config.getoption("moonpool_seed")
    if option is not None:
        return int(str(option).split(",")[0])
    return stable_hash(request.node.nodeid) & 0xFFFFFFFF


@pytest.fixture
def sim_network(moonpool_seed: int) -> SimNetwork:
    """A simulated network with ``ChaosConfig.default()`` faults, seeded per test."""
    return SimNetwork(seed=moonpool_seed, chaos=ChaosConfig.default(), host="test")

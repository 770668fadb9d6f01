"""moonpool's pytest plugin (registered through the ``pytest11`` entry point).

* ``--moonpool-seed N[,M…]`` replays those seeds in every simulation the selected
  tests run (``SimulationBuilder.run`` reads it), so a failure reported by CI is
  reproduced with the exact command printed in the report.
* ``--moonpool-iterations N`` runs exactly N seeds in each simulation.
* ``--moonpool-timeline`` keeps each seed's whole timeline and shows the failing
  seed's in the report; ``--moonpool-shrink`` shrinks the first failing seed's
  faults; ``--moonpool-fault-plan PLAN`` replays with only those faults.
* ``--moonpool-workers N|auto`` runs each simulation's seeds in N worker
  processes -- those whose builder has a target (``set_target``); the others
  run in the test's process, with a warning.
* ``--moonpool-database DIR|off``: where failing seeds are saved and replayed
  first (default ``.moonpool/`` under the current directory).  Each test is its
  own key (its node id).
* ``sim_network``: a :class:`~moonpool.net.SimNetwork` with default chaos for
  single-seed component tests under pytest-trio (use it with ``autojump_clock``).
* With ``-v``, each simulation a test ran gets one line (seeds, failures, time).
* A failing simulation test gets a "moonpool" report section with what its
  failure message does not already say: the shrunk fault plan, the failing
  seed's timeline, and how to get them.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Generator

import pytest

from moonpool._ground._fault_plan import parse_fault_plan
from moonpool._ground._run import stable_hash
from moonpool._ground._timeline import format_timeline
from moonpool.net import ChaosConfig, SimNetwork
from moonpool.sim import SimulationFailed, SimulationReport, _builder
from moonpool.sim._workers import worker_count

OPTION_SEED = "--moonpool-seed"
OPTION_ITERATIONS = "--moonpool-iterations"
OPTION_FAULT_PLAN = "--moonpool-fault-plan"
OPTION_TIMELINE = "--moonpool-timeline"
OPTION_SHRINK = "--moonpool-shrink"
OPTION_SHRINK_TIME = "--moonpool-shrink-time"
OPTION_DATABASE = "--moonpool-database"
OPTION_WORKERS = "--moonpool-workers"
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
        help="run exactly N seeds in each simulation instead of the test's own count",
    )
    group.addoption(
        OPTION_FAULT_PLAN,
        dest="moonpool_fault_plan",
        default=None,
        metavar="PLAN",
        help="allow only these faults (as a shrink prints them)",
    )
    group.addoption(
        OPTION_TIMELINE,
        dest="moonpool_timeline",
        action="store_true",
        help="keep each seed's timeline and show the failing seed's",
    )
    group.addoption(
        OPTION_SHRINK,
        dest="moonpool_shrink",
        action="store_true",
        help="shrink the first failing seed's faults (see --moonpool-shrink-time)",
    )
    group.addoption(
        OPTION_SHRINK_TIME,
        dest="moonpool_shrink_time",
        type=float,
        default=_builder.SHRINK_TIME_LIMIT,
        metavar="SECONDS",
        help=f"wall seconds a shrink may take (default {_builder.SHRINK_TIME_LIMIT:g})",
    )
    group.addoption(
        OPTION_DATABASE,
        dest="moonpool_database",
        default=None,
        metavar="DIR|off",
        help="failure database directory (default .moonpool), or off",
    )
    group.addoption(
        OPTION_WORKERS,
        dest="moonpool_workers",
        default=None,
        metavar="N|auto",
        help="run each simulation's seeds in N worker processes (those with a target)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_SimulationLines(config), "moonpool-simulation-lines")
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
    plan = config.getoption("moonpool_fault_plan")
    if plan is not None:
        try:
            parse_fault_plan(plan)
        except ValueError as exc:
            raise pytest.UsageError(f"{OPTION_FAULT_PLAN}: {exc}") from None
        os.environ[_builder.ENV_FAULT_PLAN] = plan
    if config.getoption("moonpool_timeline"):
        os.environ[_builder.ENV_TIMELINE] = "1"
    if config.getoption("moonpool_shrink"):
        seconds = config.getoption("moonpool_shrink_time")
        if not seconds > 0:
            raise pytest.UsageError(f"{OPTION_SHRINK_TIME} takes a number of seconds > 0")
        os.environ[_builder.ENV_SHRINK] = str(seconds)
    database = config.getoption("moonpool_database")
    if database is not None:
        os.environ[_builder.ENV_DATABASE] = database
    workers = config.getoption("moonpool_workers")
    if workers is not None:
        try:
            worker_count(workers)
        except ValueError:
            raise pytest.UsageError(f"{OPTION_WORKERS} takes a number >= 1 or 'auto'") from None
        os.environ[_builder.ENV_WORKERS] = workers


_SUMMARIES = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    saved = _builder.replay_template, _builder.plan_replay_template, _builder.default_name
    command = f"pytest {shlex.quote(item.nodeid)} {OPTION_SEED} {{seed}}"
    _builder.replay_template = command
    _builder.plan_replay_template = f"{command} {OPTION_FAULT_PLAN} {{plan}}"
    _builder.default_name = item.nodeid
    summaries = item.stash.setdefault(_SUMMARIES, [])

    def summarise(report: SimulationReport) -> None:
        summaries.append(
            f"{report.iterations} seeds, {len(report.failures)} failed, "
            f"{report.wall_time:.2f}s ({report.stopped_because})"
        )

    _builder.report_listeners.append(summarise)
    try:
        yield
    finally:
        _builder.report_listeners.remove(summarise)
        _builder.replay_template, _builder.plan_replay_template, _builder.default_name = saved


class _SimulationLines:
    """With ``-v``: one line per simulation a test ran, after the test's status.

    Written when the report is logged, outside output capture (a line written by
    a teardown hook would be captured and lost).
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" or self.config.get_verbosity() < 1:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        for key, summary in report.user_properties:
            if key == "moonpool":
                reporter.write_line(f"    moonpool: {summary}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if call.when == "call":
        for summary in item.stash.get(_SUMMARIES, []):
            report.user_properties.append(("moonpool", summary))  # junitxml shows them too
    if call.excinfo is not None and isinstance(call.excinfo.value, SimulationFailed):
        report.sections.append((SECTION, _section(item, call.excinfo.value)))
    return report


def _section(item: pytest.Item, failed: SimulationFailed) -> str:
    """What the failure message (which lists the failing seeds) leaves out."""
    simulation = failed.report
    lines: list[str] = []
    if simulation.shrunk is not None:
        lines.append(str(simulation.shrunk))
    if simulation.shrink_note:
        lines.append(f"shrink: {simulation.shrink_note}")
    if simulation.failures:
        first = simulation.failures[0]
        timeline = next(
            (run.timeline for run in simulation.runs if run.seed == first.seed and run.timeline),
            None,
        )
        if timeline:
            lines.append(f"timeline of seed {first.seed}:")
            lines.append(format_timeline(timeline))
        command = f"pytest {shlex.quote(item.nodeid)} {OPTION_SEED} {first.seed}"
        if timeline is None:
            lines.append(f"the whole timeline of seed {first.seed}: {command} {OPTION_TIMELINE}")
        if simulation.shrunk is None:
            lines.append(f"the faults that matter: {command} {OPTION_SHRINK}")
    return "\n".join(lines)


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

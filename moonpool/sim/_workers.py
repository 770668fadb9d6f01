"""Where seeds run: in this process, or in a pool of worker processes.

A seed depends on nothing but its number and the simulation's settings, so
seeds may run anywhere, in any order, and give the same results.  A
:class:`WorkerPool` starts N processes (``spawn``: nothing of the parent's
threads or event loops is inherited), each of which re-creates the simulation
from its target (:mod:`moonpool.sim._target`) with the parent's settings
(:class:`WorkerJob`), then runs the batches of seeds it is sent, sending each
seed's outcome back as soon as it is known.  The parent keeps two batches
queued per worker (none sits idle between batches), sizes batches to about a
tenth of a second of work (a message per batch, not per seed; small enough
that a stop or a Ctrl-C wastes little), and never sends more seeds than a
``FixedCount`` asks for.

A worker that dies -- a segfault in an extension, ``os._exit`` in the code
under test -- costs the seed it was running a ``worker_crashed`` failure (the
parent knows which: outcomes arrive one by one); its other seeds go to a new
worker.  Workers ignore SIGINT: Ctrl-C is the parent's to handle, and it stops
them.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
import types
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, final

from moonpool.sim._iteration import SeedOutcome
from moonpool.sim._report import FailureRecord, RunRecord
from moonpool.sim._target import TargetError, load_target

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from moonpool.sim._builder import SimulationBuilder
    from moonpool.sim._interrupt import CtrlC

__all__ = [
    "LocalSeeds",
    "SeedSource",
    "WorkerJob",
    "WorkerPool",
    "crashed_outcome",
    "worker_count",
]

#: The wall time a batch of seeds should take (see the module doc).
BATCH_SECONDS = 0.1
MAX_BATCH = 64
#: Batches queued per worker: one running, one ready to start.
QUEUED_PER_WORKER = 2
#: How long a worker may take to start (import the target, build the simulation).
START_TIMEOUT = 120.0

Outcomes = Iterator[tuple[int, SeedOutcome]]
"""Each seed's outcome, with its position in the seed stream, as seeds finish."""


class SeedSource(Protocol):
    """Runs seeds from a stream; ``limit``: at most that many (None: until stopped)."""

    def outcomes(
        self, seeds: Iterator[int], limit: int | None, ctrl_c: CtrlC
    ) -> AbstractContextManager[Outcomes]: ...


@final
class LocalSeeds:
    """Every seed in this process, one after the other."""

    def __init__(self, builder: SimulationBuilder) -> None:
        self._builder = builder

    @contextmanager
    def outcomes(
        self, seeds: Iterator[int], limit: int | None, ctrl_c: CtrlC
    ) -> Iterator[Outcomes]:
        def run() -> Outcomes:
            for index, seed in enumerate(seeds):
                if limit is not None and index >= limit:
                    return
                yield index, self._builder.run_seed(seed, ctrl_c)

        yield run()


@final
@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs to re-create the parent's simulation (all picklable)."""

    target: str
    #: The builder's data settings (chaos, attrition, budgets, ...), by attribute.
    settings: dict[str, Any]
    #: The registered code, by name and qualified name: the target must build it.
    code: tuple[str, ...]

    def build(self) -> SimulationBuilder:
        builder = load_target(self.target)
        built = builder.code_signature()
        if built != self.code:
            raise TargetError(
                f"the target {self.target} builds a different simulation from the one being "
                f"run: it registers {list(built)}, the builder registers {list(self.code)}. "
                f"Workers re-create the simulation from its target, so register processes "
                f"and workloads in the target function, not after calling it"
            )
        builder.apply_settings(self.settings)
        return builder


def crashed_outcome(seed: int, message: str, replay: str) -> SeedOutcome:
    """The outcome of a seed whose worker died under it."""
    error = f"the worker process running seed {seed} died: {message}"
    failure = FailureRecord(
        seed=seed,
        kind="worker_crashed",
        error=error,
        traceback=(
            f"{error}\nThe seed's code killed its process (os._exit, a signal, a crash in "
            f"an extension module) or the machine ran out of memory; replay it alone to see "
            f"how: {replay}"
        ),
        sim_time=0.0,
        replay=replay,
    )
    record = RunRecord(seed=seed, ok=False, sim_time=0.0, wall_time=0.0, events=0, trace_hash="")
    return SeedOutcome(record=record, failure=failure, kills={}, assertions={}, fault_ids=())


# -- the worker's side ---------------------------------------------------------------------


def worker_main(connection: Connection, job: WorkerJob) -> None:
    """A worker process: build the simulation, then run the seeds it is sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's
    try:
        builder = job.build()
    except BaseException as exc:
        text = "".join(traceback.format_exception(exc))
        connection.send(("setup_failed", f"{type(exc).__name__}: {exc}", text))
        return
    connection.send(("ready",))
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return  # the parent is gone
        if message is None:
            return
        batch, seeds = message
        for seed in seeds:
            connection.send(("outcome", batch, builder.run_seed(seed)))


# -- the parent's side ---------------------------------------------------------------------


class Dispatch:
    """The seeds still to send: those a dead worker left first, then the stream's."""

    def __init__(self, seeds: Iterator[int], limit: int | None) -> None:
        self._seeds = seeds
        self._limit = limit
        self.sent = 0  # positions handed out from the stream
        self.retry: deque[tuple[int, int]] = deque()

    def take(self, size: int) -> list[tuple[int, int]]:
        """Up to ``size`` (position, seed) pairs; empty once there are no more."""
        batch: list[tuple[int, int]] = []
        while self.retry and len(batch) < size:
            batch.append(self.retry.popleft())
        while len(batch) < size and (self._limit is None or self.sent < self._limit):
            seed = next(self._seeds, None)
            if seed is None:
                break
            batch.append((self.sent, seed))
            self.sent += 1
        return batch


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    connection: Connection
    ready: bool = False
    #: Batches sent and not finished: (batch number, [(position, seed), ...]).
    queued: deque[tuple[int, list[tuple[int, int]]]] = field(default_factory=deque)


class WorkerSetupError(RuntimeError):
    """A worker could not re-create the simulation (its target failed to build it)."""


@final
class WorkerPool:
    """``workers`` processes running seeds for the parent (see the module doc)."""

    def __init__(self, job: WorkerJob, workers: int, replay_hint: Any) -> None:
        self._job = job
        self._count = workers
        self._replay = replay_hint
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._batches = 0
        self._batch_size = 1  # until the first outcomes say how long a seed takes
        self._seed_time: float | None = None

    def _start_worker(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main, args=(child, self._job), name="moonpool-worker", daemon=True
        )
        with _main_module_hidden():
            process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.append(worker)
        return worker

    def _stop_all(self) -> None:
        for worker in self._workers:
            with suppress(OSError):
                worker.connection.send(None)
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(1.0)
            worker.connection.close()
        self._workers.clear()

    @contextmanager
    def outcomes(
        self, seeds: Iterator[int], limit: int | None, ctrl_c: CtrlC
    ) -> Iterator[Outcomes]:
        try:
            for _ in range(self._count):
                self._start_worker()
            yield self._run(seeds, limit, ctrl_c)
        finally:
            self._stop_all()

    def _feed(self, worker: _Worker, dispatch: Dispatch) -> None:
        while worker.ready and len(worker.queued) < QUEUED_PER_WORKER:
            batch = dispatch.take(self._batch_size)
            if not batch:
                return
            try:
                worker.connection.send((self._batches + 1, [seed for _, seed in batch]))
            except OSError:  # it died just now: the seeds were never its
                dispatch.retry.extendleft(reversed(batch))
                return
            self._batches += 1
            worker.queued.append((self._batches, batch))

    def _learn(self, outcome: SeedOutcome) -> None:
        """Size batches from the first seed's own wall time (not the workers' start-up)."""
        if self._seed_time is None:
            self._seed_time = max(outcome.record.wall_time, 1e-6)
            self._batch_size = max(1, min(MAX_BATCH, int(BATCH_SECONDS / self._seed_time)))

    def _run(self, seeds: Iterator[int], limit: int | None, ctrl_c: CtrlC) -> Outcomes:
        dispatch = Dispatch(seeds, limit)
        boot_deadline = time.monotonic() + START_TIMEOUT
        while True:
            if ctrl_c.stop_requested:
                raise KeyboardInterrupt
            for worker in self._workers:
                self._feed(worker, dispatch)
            busy = [w for w in self._workers if w.queued or not w.ready]
            if not busy:
                return  # every seed asked for has its outcome
            if not any(w.ready for w in self._workers) and time.monotonic() > boot_deadline:
                raise WorkerSetupError(
                    f"no worker process started within {START_TIMEOUT:.0f}s (importing "
                    f"{self._job.target})"
                )
            waiting: dict[Any, _Worker] = {w.connection: w for w in busy}
            waiting.update({w.process.sentinel: w for w in busy})
            for ready in multiprocessing.connection.wait(list(waiting), timeout=0.2):
                worker = waiting[ready]
                if worker not in self._workers:
                    continue  # replaced already (its pipe and sentinel both woke)
                try:
                    while worker.connection.poll():
                        message = worker.connection.recv()
                        outcome = self._receive(worker, message)
                        if outcome is not None:
                            self._learn(outcome[1])
                            yield outcome
                except (EOFError, OSError):
                    pass
                if not worker.process.is_alive() and worker in self._workers:
                    crashed = self._replace(worker, dispatch)
                    if crashed is not None:
                        yield crashed

    def _receive(self, worker: _Worker, message: tuple[Any, ...]) -> tuple[int, SeedOutcome] | None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            return None
        if kind == "setup_failed":
            _, summary, text = message
            raise WorkerSetupError(
                f"a worker process could not re-create the simulation from "
                f"{self._job.target}: {summary}\n{text}"
            )
        _, batch_number, outcome = message
        number, batch = worker.queued[0]
        assert number == batch_number, (number, batch_number)
        index, seed = batch.pop(0)
        assert seed == outcome.record.seed
        if not batch:
            worker.queued.popleft()
        return index, outcome

    def _replace(self, worker: _Worker, dispatch: Dispatch) -> tuple[int, SeedOutcome] | None:
        """A worker died: its running seed failed, its other seeds go to a new worker."""
        self._workers.remove(worker)
        code = worker.process.exitcode
        worker.connection.close()
        if not worker.ready:
            raise WorkerSetupError(
                f"a worker process died while re-creating the simulation from "
                f"{self._job.target} (exit code {code})"
            )
        pending = [item for _, batch in worker.queued for item in batch]
        self._start_worker()
        if not pending:
            return None
        (index, seed), rest = pending[0], pending[1:]
        dispatch.retry.extendleft(reversed(rest))
        how = f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"
        return index, crashed_outcome(seed, how, self._replay(seed))


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a process without it re-running the parent's ``__main__``.

    ``spawn`` imports the parent's main module in the child, so a script calling
    ``run(workers=2)`` without an ``if __name__ == "__main__":`` guard would start
    workers forever (and pytest's would be imported for nothing).  A worker
    needs only the target: for the start, ``__main__`` is a blank module.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def worker_count(value: object) -> int:
    """How many workers ``value`` asks for: an int >= 1, ``"auto"`` (one per CPU), or
    either as text (``--workers``, ``MOONPOOL_WORKERS``); ``ValueError`` otherwise.

    The one reading of a worker count, for ``run(workers=)``, the CLI, the pytest
    option and the environment alike.
    """
    if value == "auto":
        return cpu_count()
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"workers must be an int >= 1 or 'auto', got {value!r}")
    return value


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

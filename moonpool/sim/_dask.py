"""Seeds on a Dask cluster: ``run(executor=client)`` with a ``distributed.Client``.

Each task is a batch of seeds (:func:`run_batch`): the Dask worker re-creates
the simulation from its target (once per worker process: the builder is
cached), runs the seeds and returns their outcomes.  Batches are sized to about
a second of work -- Dask's own cost per task is milliseconds, so smaller
batches would spend a visible share on scheduling -- and two per worker thread
are kept in flight.  Results are the same as in one process: a seed depends on
its number and the settings only.

A task whose worker died (Dask retries it elsewhere, then gives up with
``KilledWorker``) has its seeds run again, one task each and alone on the
cluster (Dask also fails the tasks that were only queued on the dead worker);
the seed that kills a worker then is reported as ``worker_crashed``.

The workers must be able to import the target: a ``package.module:function``
installed on every worker, or a ``path/to/file.py:function`` at the same path
on every machine (a shared file system, or the same checkout), and ``moonpool``
itself.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, final

from moonpool.sim._iteration import SeedOutcome
from moonpool.sim._workers import (
    Dispatch,
    Outcomes,
    WorkerJob,
    WorkerSetupError,
    crashed_outcome,
)

if TYPE_CHECKING:
    from moonpool.sim._builder import SimulationBuilder
    from moonpool.sim._interrupt import CtrlC

__all__ = ["DaskSeeds", "run_batch"]

BATCH_SECONDS = 1.0
MAX_BATCH = 256
QUEUED_PER_THREAD = 2

_built: dict[str, SimulationBuilder] = {}


def run_batch(job: WorkerJob, seeds: list[int]) -> list[SeedOutcome]:
    """A Dask task: these seeds of the job's simulation, in this worker."""
    key = hashlib.sha256(pickle.dumps(job)).hexdigest()
    builder = _built.get(key)
    if builder is None:
        builder = _built[key] = job.build()
    return [builder.run_seed(seed) for seed in seeds]


@final
class DaskSeeds:
    """Runs batches of seeds as tasks of a ``distributed.Client``."""

    def __init__(self, client: Any, job: WorkerJob, replay_hint: Callable[[int], str]) -> None:
        try:
            import distributed
        except ImportError:  # pragma: no cover - the extra is not installed
            raise ImportError(
                "run(executor=...) needs Dask distributed: pip install 'moonpool[dask]'"
            ) from None
        if not isinstance(client, distributed.Client):
            raise TypeError(f"executor must be a distributed.Client, got {client!r}")
        self._client = client
        self._job = job
        self._replay = replay_hint
        self._batch_size = 1  # until the first batch says how long a seed takes

    def _threads(self) -> int:
        workers = self._client.scheduler_info().get("workers", {})
        return max(1, sum(int(info.get("nthreads", 1)) for info in workers.values()))

    @contextmanager
    def outcomes(
        self, seeds: Iterator[int], limit: int | None, ctrl_c: CtrlC
    ) -> Iterator[Outcomes]:
        in_flight: dict[Any, list[tuple[int, int]]] = {}
        try:
            yield self._run(Dispatch(seeds, limit), in_flight, ctrl_c)
        finally:
            if in_flight:
                self._client.cancel(list(in_flight))  # type: ignore[no-untyped-call]

    def _submit(
        self, in_flight: dict[Any, list[tuple[int, int]]], batch: list[tuple[int, int]]
    ) -> Any:
        future = self._client.submit(run_batch, self._job, [seed for _, seed in batch], pure=False)
        in_flight[future] = batch
        return future

    def _run(
        self, dispatch: Dispatch, in_flight: dict[Any, list[tuple[int, int]]], ctrl_c: CtrlC
    ) -> Outcomes:
        import distributed

        learned = False
        # Seeds of tasks that died with a worker.  Dask also fails the tasks that
        # were only queued on the dead worker, so each suspect runs again alone on
        # the cluster, once nothing else is in flight: one killed then is the culprit.
        suspects: deque[tuple[int, int]] = deque()
        alone: Any = None
        queued = QUEUED_PER_THREAD * self._threads()
        while True:
            if ctrl_c.stop_requested:
                raise KeyboardInterrupt
            if suspects:
                if not in_flight:
                    alone = self._submit(in_flight, [suspects.popleft()])
            else:
                while len(in_flight) < queued:
                    batch = dispatch.take(self._batch_size)
                    if not batch:
                        break
                    self._submit(in_flight, batch)
            if not in_flight:
                return
            try:  # in short waits, so that a Ctrl-C is seen
                done, _ = distributed.wait(  # type: ignore[no-untyped-call]
                    list(in_flight), timeout=0.2, return_when="FIRST_COMPLETED"
                )
            except TimeoutError:
                continue
            for future in done:
                batch = in_flight.pop(future)
                try:
                    outcomes = future.result()
                except distributed.KilledWorker:
                    if future is alone:
                        index, seed = batch[0]
                        how = "it killed the Dask worker that ran it alone (KilledWorker)"
                        yield index, crashed_outcome(seed, how, self._replay(seed))
                    else:
                        suspects.extend(batch)
                    continue
                except Exception as exc:
                    raise WorkerSetupError(
                        f"a Dask task of {self._job.target} failed: {type(exc).__name__}: {exc}"
                    ) from exc
                if not learned:  # from the seeds' own wall time, not the task's round trip
                    learned = True
                    per_seed = max(sum(o.record.wall_time for o in outcomes) / len(batch), 1e-6)
                    self._batch_size = max(1, min(MAX_BATCH, int(BATCH_SECONDS / per_seed)))
                for (index, _), outcome in zip(batch, outcomes, strict=True):
                    yield index, outcome

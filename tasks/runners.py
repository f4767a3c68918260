"""Where independent work runs: Prefect's task runners, chosen by ``runner:`` in platform.yaml.

Two fan-outs use them: the retrain's three families (:func:`task_runner`, in the flow) and a
forecaster's per-service fits (:func:`runner_map`, a ``map`` the training task hands to the
family). Both go through Prefect's own runners, so every unit of work is a task run in the UI
with Prefect's retries and context, and the same code runs on threads, a process pool or a
Dask cluster (prefect-dask).

Prefect issue #15442: Dask keeps a finished task's result on the worker that ran it while a
future refers to it, and recomputes the task when that worker dies. :func:`settle` takes each
result as it arrives and releases the Dask future at once, so a worker lost later in the run
cannot make a finished family train (or publish) again.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from core.config import RunnerConfig
from core.settings import PROJECT_ROOT, exported

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Mapper = Callable[[Callable[[T], R], Iterable[T]], Iterable[R]]
"""What the builtin ``map`` is: apply a function to each item, results in the items' order."""


def _project_first() -> None:
    """Put the project's root first on ``sys.path``, for the processes a runner starts.

    Pool processes and LocalCluster workers start with this process's ``sys.path``.
    ``mlflow.pyfunc.load_model`` prepends a loaded model's code directory (a partial copy of
    ``core/`` holding only what the model imports) and never removes it, so after a notebook or
    a test loaded a champion, a child would import that ``core`` and miss ``core.config``.
    """
    root = str(PROJECT_ROOT)
    if sys.path[:1] != [root]:
        sys.path[:] = [root, *(p for p in sys.path if p != root)]


def task_runner(cfg: RunnerConfig) -> TaskRunner[Any]:
    """A fresh, unstarted Prefect task runner for ``cfg`` (use it as a context manager)."""
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    if cfg.kind == "process":
        return ProcessPoolTaskRunner(max_workers=cfg.max_workers)
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    # One thread per worker process: the model code holds the GIL, so threads would not add
    # cores; processes also let a lost worker be replaced by the nanny.
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.max_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


@contextmanager
def _children_ready() -> Iterator[None]:
    """While a runner starts processes, give them this process's project and Prefect API.

    The project first on ``sys.path`` (:func:`_project_first`). And with no
    ``PREFECT_API_URL`` (the embedded default), the flow's API is a temporary server this
    process started: a pool process or LocalCluster worker does not know it, so each started a
    temporary server of its own (15-30 s here, per process) and recorded its task runs there,
    where nobody saw them. The URL is exported for the runner's life only, since the temporary
    server stops with the flow's process.
    """
    from prefect.settings import PREFECT_API_URL

    _project_first()
    if PREFECT_API_URL.value():
        yield
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    with exported("PREFECT_API_URL", url):
        yield


@contextmanager
def running(cfg: RunnerConfig) -> Iterator[TaskRunner[Any]]:
    """:func:`task_runner` for ``cfg``, started; processes it starts are ready for the work."""
    with nullcontext() if cfg.kind == "threads" else _children_ready(), task_runner(cfg) as runner:
        yield runner


def release(future: PrefectFuture[Any]) -> None:
    """Drop a finished Dask future's hold on its result (no-op for other runners' futures)."""
    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is not None and hasattr(wrapped, "release"):
        wrapped.release()


def settle(futures: list[PrefectFuture[Any]]) -> Iterator[PrefectFuture[Any]]:
    """Yield each future once it is final, releasing its Dask result first (issue #15442).

    The caller reads ``future.state``: the final state stays on the Prefect future after the
    Dask future is released.
    """
    for future in as_completed(futures):
        future.wait()
        release(future)
        yield future


@task(name="fan-out-part", cache_policy=NO_CACHE)
def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


@contextmanager
def _nested_runner(cfg: RunnerConfig) -> Iterator[TaskRunner[Any]]:
    """A runner for work submitted from inside a task: on a Dask worker, the same cluster."""
    if cfg.kind != "dask":
        with running(cfg) as runner:
            yield runner
        return
    import distributed
    from prefect_dask import DaskTaskRunner

    try:
        worker = distributed.get_worker()
    except ValueError:  # not on a Dask worker (a notebook, a test): a cluster of its own
        with running(cfg) as runner:
            yield runner
        return
    with DaskTaskRunner(address=worker.scheduler.address) as runner:
        # Give this worker's thread back to the cluster while the parts run (Dask's own
        # "tasks launching tasks" rule): otherwise a busy cluster waits on itself.
        distributed.secede()
        try:
            yield runner
        finally:
            distributed.rejoin()


PARTS_PER_WORKER = 4
"""Tasks per worker that a fan-out is cut into. Each task costs a Prefect task run (state
changes through the API) and, off the flow's process, the pickling of its items and results:
about 0.25 s a task on a process pool here. So 100 services run as 8 tasks, not 100; four per
worker still even out parts of unequal cost."""


class _Batch:
    """Apply ``fn`` to each item of one batch (a picklable callable, for any runner)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, items: list[Any]) -> list[Any]:
        return [self.fn(item) for item in items]


def runner_map(cfg: RunnerConfig) -> Mapper[Any, Any]:
    """A ``map`` that runs the calls as Prefect tasks on the configured runner.

    The items are dealt round-robin into at most ``max_workers *`` :data:`PARTS_PER_WORKER`
    batches, one task each. Results come back in the items' order; the first part that failed
    raises its error after every part has finished (nothing is left running). One item, or one
    worker, runs inline.
    """

    def mapper(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        todo = list(items)
        if len(todo) < 2 or cfg.max_workers < 2:
            return [fn(item) for item in todo]
        n = min(len(todo), cfg.max_workers * PARTS_PER_WORKER)
        batches = [todo[i::n] for i in range(n)]
        with _nested_runner(cfg) as runner:
            futures = [runner.submit(_apply, {"fn": _Batch(fn), "item": b}) for b in batches]
            for _ in settle(futures):
                pass
            done = [future.result() for future in futures]
        results: list[Any] = [None] * len(todo)
        for i, batch in enumerate(done):
            results[i::n] = batch
        return results

    return mapper

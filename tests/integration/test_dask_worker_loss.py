"""A Dask worker lost mid-run: finished models are not trained again, nothing is published twice.

Prefect issue #15442: Dask recomputes a finished task whose result lived on a worker that died,
as long as a future still refers to it. The retrain releases each model's Dask future as soon
as its outcome is in (``tasks.runners.settle``). Here a real ``LocalCluster`` (two worker
processes) runs the retrain; once the abuse detector is published and the forecaster is still
training, the worker that is not running the forecaster is killed (SIGKILL). The run must end
with each model published once, and the abuse detector's subflow must have run once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.pointer import promotion_history, read_latest
from adapters.source import seed_source
from adapters.store import store_from_settings
from adapters.versions import list_versions
from core.settings import load_settings
from flows.retrain import retrain
from tests.fixtures.home import SMALL_SOURCE, isolated_env, project_configs
from tests.flows.test_runners import MODELS, runner_config

pytestmark = pytest.mark.integration


def subflow_runs(name: str, since: datetime) -> int:
    """How many flow runs named ``name`` started after ``since``."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterStartTime,
    )

    async def count() -> int:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[name]),
                    start_time=FlowRunFilterStartTime(after_=since),
                )
            )
        return len(runs)

    return asyncio.run(count())


def kill_spare_worker(client: Any, settings: Any, done: threading.Event) -> list[str]:
    """Once the abuse detector is published, SIGKILL a worker not running the forecaster."""
    store = store_from_settings(settings)
    killed: list[str] = []
    deadline = time.monotonic() + 600
    while not done.is_set() and time.monotonic() < deadline:
        if read_latest(store, "abuse_detector"):
            # prefect-dask's keys name its wrapper, not the task: the forecaster's worker is the
            # one processing anything; a worker processing nothing is the spare.
            busy = {w for w, keys in client.processing().items() if keys}
            spare = [w for w in client.scheduler_info()["workers"] if w not in busy]
            if busy and spare:
                pid = client.run(os.getpid, workers=[spare[0]])[spare[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(spare[0])
                return killed
        time.sleep(0.2)
    return killed


def test_a_lost_worker_reruns_nothing_finished(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client, LocalCluster

    isolated_env(monkeypatch, tmp_path / "home")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        project_configs(
            monkeypatch, tmp_path / "configs", runner_config("dask", cluster.scheduler_address)
        )
        settings = load_settings()
        seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
        since = datetime.now(UTC)
        done = threading.Event()
        killed: list[str] = []
        watcher = threading.Thread(
            target=lambda: killed.extend(kill_spare_worker(client, settings, done))
        )
        watcher.start()
        try:
            state = retrain(models=MODELS, reason="worker loss", return_state=True)
        finally:
            done.set()
            watcher.join()
        # Give a recomputation (the bug) time to show itself before counting.
        time.sleep(3)
        assert killed, "the forecaster finished before a worker could be killed"

        store = store_from_settings(settings)
        summary = state.result(raise_on_failure=False)
        statuses = {o["model"]: o["status"] for o in summary["models"]}
        assert statuses["abuse_detector"] == "promoted", summary
        for model in MODELS:
            assert [v["version"] for v in list_versions(store, model)] == ["v1"] or (
                statuses[model] == "failed" and not list_versions(store, model)
            ), (model, statuses)
            assert len(promotion_history(store, model)) == (statuses[model] == "promoted")
        assert subflow_runs("retrain-abuse_detector", since) == 1

        # A rerun publishes nothing new for a model whose data it already used.
        again = retrain(models=MODELS, reason="rerun", return_state=True)
        outcome: dict[str, Any] = {
            o["model"]: o for o in again.result(raise_on_failure=False)["models"]
        }
        assert outcome["abuse_detector"]["status"] == "skipped"
        assert [v["version"] for v in list_versions(store, "abuse_detector")] == ["v1"]
        assert len(promotion_history(store, "abuse_detector")) == 1

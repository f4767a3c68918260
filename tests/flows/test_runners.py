"""The retrain under each task runner of ``runner:`` (threads, a process pool, Dask).

One retrain per runner on the small source, each with two of the three families, chosen so
that every family runs under two runners (the forecaster's services fan out over the threads);
what each run publishes must be the same bytes. The Dask run is also
the worker-loss test (Prefect issue #15442): a worker that ran a finished model is killed while
the other model still trains, and the finished model must not run, train or publish again.
The runs fill one module-scoped record; the last tests compare it.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.package import write_contents
from adapters.pointer import promotion_history, read_latest
from adapters.registry import experiment_name
from adapters.source import seed_source
from adapters.store import store_from_settings
from adapters.versions import list_versions, read_version_manifest
from core.config import RunnerConfig, load_model_configs
from core.families import get_family
from core.families.traffic_forecaster import TrafficForecaster
from core.settings import PROJECT_ROOT, Settings, load_settings
from core.synth import generate
from flows.retrain import retrain
from tasks.runners import runner_map
from tests.fixtures.home import SMALL_SOURCE, isolated_env, project_configs

FAMILIES = ["abuse_detector", "limit_optimiser", "traffic_forecaster"]
MODELS_BY_RUNNER = {
    "threads": ["limit_optimiser", "traffic_forecaster"],
    # Not the forecaster: its services' nested process pool re-imports the stack in each
    # process (over two minutes of CI here); bench_scale.py measures that fan-out instead.
    "process": ["abuse_detector", "limit_optimiser"],
    "dask": ["abuse_detector", "traffic_forecaster"],
}
PLACEHOLDER = "tcp://scheduler-not-started:8786"


def runner_config(kind: str, dask_address: str = "", max_workers: int = 2) -> dict[str, Any]:
    """The ``configs/`` edits: the runner's kind and workers, one cheap Prophet per service."""
    return {
        "platform.yaml": {
            "kind: threads ": f"kind: {kind} ",
            "max_workers: 2 ": f"max_workers: {max_workers} ",
            'dask_address: ""': f'dask_address: "{dask_address}"',
        },
        "models/traffic_forecaster.yaml": {
            # One Prophet per service: the fan-out's parts pickle a fitted Prophet back.
            "candidates: [seasonal_naive, holt_winters, recent_weeks, daily_adjusted, top_two, "
            "prophet]": "candidates: [prophet]",
            "backtest_folds: 3": "backtest_folds: 0",
            "daily_order: 20": "daily_order: 4",
            "weekly_order: 20": "weekly_order: 3",
            # The cheap forecaster must publish: these runs compare bytes, not accuracy.
            "relative_mae: {direction: lower, floor: 1.0": "relative_mae: {direction: lower, floor: 9",  # noqa: E501
            "smape: {direction: lower, floor: 0.30": "smape: {direction: lower, floor: 2",
        },
    }


def published(settings: Settings, model: str) -> dict[str, Any]:
    """What the store holds of ``model``: versions, history, and the v1 files' sha256.

    ``metrics.json`` is left out: it holds the run's MLflow ids and the gate's time.
    """
    store = store_from_settings(settings)
    versions = list_versions(store, model)
    manifest = read_version_manifest(store, model, "v1") if versions else {}
    files = manifest.get("files", {})
    return {
        "versions": [v["version"] for v in versions],
        "history": len(promotion_history(store, model)),
        "sha256": {name: meta["sha256"] for name, meta in files.items() if name != "metrics.json"},
        "contents": manifest.get("lineage", {}).get("model_contents_sha256"),
    }


@pytest.fixture(scope="module")
def by_runner() -> dict[str, dict[str, Any]]:
    """Runner -> model -> what it published; filled by the runs, compared by the last tests."""
    return {}


def start_home(monkeypatch: pytest.MonkeyPatch, tmp: Path, edits: dict[str, Any]) -> Settings:
    """An isolated home with the edited configs and the small source seeded."""
    isolated_env(monkeypatch, tmp / "home")
    project_configs(monkeypatch, tmp / "configs", edits)
    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
    return settings


def record_promoted(state: Any, settings: Settings, models: list[str]) -> dict[str, Any]:
    """Check every model was promoted once as ``v1``; return what each published."""
    assert state.is_completed(), state.message
    statuses = {o["model"]: o["status"] for o in state.result()["models"]}
    assert statuses == dict.fromkeys(models, "promoted")
    found = {m: published(settings, m) for m in models}
    for model in models:
        assert found[model]["versions"] == ["v1"], model
        assert found[model]["history"] == 1, model
        assert found[model]["contents"], model
    return found


@pytest.mark.parametrize("kind", ["threads", "process"])
def test_retrain_under_runner(
    kind: str, by_runner: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = MODELS_BY_RUNNER[kind]
    settings = start_home(monkeypatch, tmp_path, runner_config(kind))
    # What mlflow.pyfunc.load_model leaves behind (a notebook that loaded the champion, or an
    # earlier test): the model's code directory, a partial copy of core/, first on sys.path.
    shipped = tmp_path / "mlflow-model-code"
    (shipped / "core").mkdir(parents=True)
    (shipped / "core" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(shipped))
    state = retrain(models=models, reason=f"runner {kind}", return_state=True)
    by_runner[kind] = record_promoted(state, settings, models)


# --- Dask: a lost worker (Prefect issue #15442) ---------------------------------------------


def flow_runs_named(name: str, since: datetime) -> int:
    """How many flow runs named ``name`` started after ``since`` (the Prefect API's count)."""
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


def training_runs(settings: Settings, model: str) -> int:
    """How many MLflow training runs ``model``'s experiment holds."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name(model))
    assert experiment is not None, model
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.runName = '{model}-train'"
    )
    return len(runs)


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    """Poll ``check`` every 0.1 s for up to ``seconds``; whether it came true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def kill_a_finished_models_worker(
    client: Any, settings: Settings, models: list[str], since: datetime, done: threading.Event
) -> dict[str, Any]:
    """Once one model is finished and the other still trains, SIGKILL the finished one's worker.

    Each model's ``run-model`` task runs alone on one single-threaded worker (the forecaster
    does not fan out: one worker in the runner config), so the finished model's worker is the
    one that has executed a task and now processes none; before the fix it still held the
    finished task's result. See :func:`kill_while_paused` for what happens then.
    """
    store = store_from_settings(settings)
    while not done.is_set():
        finished = [m for m in models if read_latest(store, m)]
        processing = client.processing()
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        idle = [w for w, keys in processing.items() if not keys and executed.get(w, 0) >= 1]
        busy = [w for w, keys in processing.items() if keys]
        if len(finished) == 1 and len(idle) == 1 and len(busy) == 1:
            return kill_while_paused(client, idle[0], busy[0], finished[0], since)
        time.sleep(0.1)
    return {}


def kill_while_paused(
    client: Any, victim: str, busy: str, finished: str, since: datetime
) -> dict[str, Any]:
    """SIGKILL ``victim`` while ``busy`` (the model still training) is paused by SIGSTOP.

    The pause lasts until the cluster has replaced the lost worker and had a second to
    reschedule what it lost, so the run cannot end first and hide a recomputation; if something
    was rescheduled (the bug), it lasts until ``finished``'s subflow shows up a second time.
    """
    workers = len(client.scheduler_info()["workers"])
    pids = client.run(os.getpid)
    os.kill(pids[busy], signal.SIGSTOP)
    try:
        os.kill(pids[victim], signal.SIGKILL)
        wait_for(lambda: victim not in client.scheduler_info()["workers"], 30)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == workers, 30)
        time.sleep(1.0)  # the scheduler reassigns a lost result it still needs at once
        again = [w for w, keys in client.processing().items() if keys and w != busy]
        if again:  # let the recomputation reach the Prefect API before the run ends
            wait_for(lambda: flow_runs_named(f"retrain-{finished}", since) > 1, 120)
    finally:
        os.kill(pids[busy], signal.SIGCONT)
    return {"model": finished, "killed": victim, "rescheduled": again}


@pytest.mark.integration
def test_dask_a_lost_worker_reruns_nothing_finished(
    by_runner: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client, LocalCluster

    models = MODELS_BY_RUNNER["dask"]
    # The home and configs first: the workers inherit this environment when they start.
    settings = start_home(monkeypatch, tmp_path, runner_config("dask", PLACEHOLDER, 1))
    with (
        LocalCluster(
            n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        platform_yaml = settings.config_dir / "platform.yaml"
        platform_yaml.write_text(
            platform_yaml.read_text().replace(PLACEHOLDER, cluster.scheduler_address)
        )
        since = datetime.now(UTC)
        done = threading.Event()
        report: dict[str, Any] = {}
        # The watcher reads the Prefect API too: it runs in this thread's settings context.
        watch = contextvars.copy_context()
        watcher = threading.Thread(
            target=watch.run,
            args=(
                lambda: report.update(
                    kill_a_finished_models_worker(client, settings, models, since, done)
                ),
            ),
        )
        watcher.start()
        try:
            state = retrain(models=models, reason="worker loss", return_state=True)
        finally:
            done.set()
            watcher.join()

    assert report.get("killed"), "both models finished before a worker could be killed"
    finished = report["model"]
    # The run completes: the killed worker held nothing it still needed.
    by_runner["dask"] = record_promoted(state, settings, models)
    # The finished model ran, trained and published once.
    assert flow_runs_named(f"retrain-{finished}", since) == 1, report
    assert training_runs(settings, finished) == 1, report
    assert not report["rescheduled"], report


# --- the same bytes under every runner ------------------------------------------------------


@pytest.mark.parametrize("model", FAMILIES)
def test_every_runner_publishes_the_same_bytes(by_runner: dict[str, Any], model: str) -> None:
    runs = {kind: found[model] for kind, found in by_runner.items() if model in found}
    expected = [kind for kind, models in MODELS_BY_RUNNER.items() if model in models]
    if sorted(runs) != sorted(expected):
        pytest.skip(f"needs the runs of {expected}; have {sorted(runs)}")
    (first, reference), *others = runs.items()
    for kind, found in others:
        assert found == reference, f"{model}: {kind} published other bytes than {first}"


# --- the forecaster's services fanned out on a process pool and on Dask ----------------------


def test_the_forecasters_services_fan_out_on_dask_to_the_same_model(tmp_path: Path) -> None:
    """The per-service fits, run as Prefect tasks on a LocalCluster, give the serial model.

    The retrain runs above leave this fan-out out (the process run drops the forecaster, the
    Dask run has one worker); here it runs on two workers, with closed-form candidates so the
    parts cost little beyond the workers' start. The process pool's fan-out is checked in
    ``tests/unit/test_runners.py``, in a flow run as ``make run`` runs it.
    """
    kind = "dask"
    (cfg,) = load_model_configs(PROJECT_ROOT / "configs", ["traffic_forecaster"])
    family = get_family(cfg.family)
    assert isinstance(family, TrafficForecaster)
    params = family.Params.model_validate(
        {**cfg.params, "candidates": ["seasonal_naive", "recent_weeks"], "backtest_folds": 1}
    )
    frame = generate("service_traffic", datetime(2026, 1, 5), 21, n_services=3, seed=3)
    serial = family.train(frame, params, cfg.seed)
    fanned = family.train(
        frame, params, cfg.seed, mapper=runner_map(RunnerConfig(kind=kind, max_workers=2))
    )
    digests = []
    for name, model in (("serial", serial), (kind, fanned)):
        (tmp_path / name).mkdir()
        family.save(model, tmp_path / name)
        digests.append(write_contents(tmp_path / name, cfg.name, cfg.family))
    assert digests[0] == digests[1]
    assert sorted(fanned.models) == sorted(serial.models) and len(fanned.models) == 3

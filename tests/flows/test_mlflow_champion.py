"""The MLflow champion is the served model: same request, same answer, wherever it is loaded.

One retrain of all three models publishes and promotes v1 of each; then, per model, the
documented request (``schema.json``'s example) gets the same answer from the serving app (the
code the endpoint runs, on the published version's verified files), from
``mlflow.pyfunc.load_model("models:/NAME@champion")`` and from
``mlflow models serve -m models:/NAME@champion --env-manager local`` run as a real process (one
per model, started and stopped inside its test). No endpoint is started: the local endpoint's
processes run this same app, and their tests are in test_local_rollout.py. The same run shows
lineage in MLflow: each training run's inputs are its snapshots, digest and sha256 as the store
has them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from adapters.endpoints.local.processes import free_port
from adapters.package import extract_tarball
from adapters.pointer import read_latest
from adapters.snapshots import list_snapshots
from adapters.source import seed_source
from adapters.store import store_from_settings
from adapters.versions import verify_version
from core.config import load_model_config
from core.settings import Settings, load_settings
from flows.retrain import retrain
from serving.app import ModelSettings, create_app
from tests.fixtures.home import SMALL_SOURCE, isolated_env, project_configs

pytestmark = pytest.mark.integration

MODELS = ["abuse_detector", "limit_optimiser", "traffic_forecaster"]


@dataclass
class Champions:
    settings: Settings
    configs: Path
    run_ids: dict[str, str]
    work: Path


@pytest.fixture(scope="module", autouse=True)
def _restore_sys_path() -> Iterator[None]:
    """``mlflow.pyfunc.load_model`` prepends each model's code directory to ``sys.path`` for
    good; put it back after this module, so later tests' child processes import the project."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(scope="module")
def champions(tmp_path_factory: pytest.TempPathFactory, prefect_api: None) -> Iterator[Champions]:
    """v1 of every model, promoted: serving on the local endpoint and aliased ``champion``."""
    tmp = tmp_path_factory.mktemp("champions")
    with pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, tmp / "home")
        configs = project_configs(mp, tmp / "configs")
        settings = load_settings()
        seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
        summary = retrain(reason="parity", return_state=True).result()
        outcomes = {o["model"]: o for o in summary["models"]}
        for model in MODELS:
            assert outcomes[model]["status"] == "promoted", outcomes[model]
        run_ids = {m: str(outcomes[m]["mlflow_run_id"]) for m in MODELS}
        yield Champions(settings, configs, run_ids, tmp / "work")


def example_request(champions: Champions, model: str) -> list[dict[str, Any]]:
    """The documented request: ``schema.json``'s example of the version that serves."""
    store = store_from_settings(champions.settings)
    version = (read_latest(store, model) or {})["version"]
    schema = json.loads(store.get_bytes(f"models/{model}/{version}/schema.json"))
    return list(schema["example_request"])


def served(champions: Champions, model: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    """The serving app's answer to ``records``, serving the champion's verified store files."""
    store = store_from_settings(champions.settings)
    version = (read_latest(store, model) or {})["version"]
    dest = champions.work / f"{model}-{version}-{time.monotonic_ns()}"
    manifest = verify_version(store, model, version, dest)
    model_dir = extract_tarball(dest / "model.tar.gz", dest / "model")
    app = create_app(
        ModelSettings(
            model_dir=model_dir,
            model_contents_sha256=manifest["lineage"]["model_contents_sha256"],
            model_version=version,
        )
    )
    with TestClient(app) as client:
        answer = client.post("/invocations", json={"instances": records})
    assert answer.status_code == 200, answer.text
    return pd.DataFrame(answer.json()["predictions"])


def same_answer(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal columns and values (JSON numbers round-trip exactly; bools stay bools)."""
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False, rtol=1e-12
    )


@pytest.mark.parametrize("model", MODELS)
def test_the_champion_loaded_from_mlflow_answers_as_the_endpoint(
    champions: Champions, model: str
) -> None:
    import mlflow

    records = example_request(champions, model)
    mlflow.set_tracking_uri(champions.settings.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model}@champion")
    # The signature is schema.json's: the same columns, in the same order.
    assert list(pyfunc.metadata.get_input_schema().input_dict()) == list(records[0])
    same_answer(pyfunc.predict(pd.DataFrame(records)), served(champions, model, records))


@pytest.fixture(scope="module")
def mlflow_servers(
    champions: Champions, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """``mlflow models serve`` of every champion, started at once (each takes ~30 s to start)."""
    logs = tmp_path_factory.mktemp("mlflow-serve")
    # mlflow runs ``uvicorn`` by name: the environment's scripts must be on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": champions.settings.tracking_uri, "PATH": path}
    processes: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for model in MODELS:
            port = free_port()
            command = [sys.executable, "-m", "mlflow", "models", "serve"]
            command += ["-m", f"models:/{model}@champion", "--env-manager", "local"]
            command += ["-h", "127.0.0.1", "-p", str(port)]
            log_path = logs / f"{model}.log"
            with log_path.open("w") as log:
                # Its own session: the CLI runs uvicorn through bash, and the group ends
                # together.
                process = subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            processes[model] = (process, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + 180
        waiting = set(MODELS)
        with httpx.Client(trust_env=False, timeout=30) as client:
            while waiting:
                for model in sorted(waiting):
                    process, url, log_path = processes[model]
                    assert process.poll() is None, log_path.read_text()[-3000:]
                    try:
                        if client.get(f"{url}/ping").status_code == 200:
                            waiting.discard(model)
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
        yield {model: url for model, (_, url, _) in processes.items()}
    finally:
        for process, _, _ in processes.values():
            stop_group(process)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """End the process group started with ``process`` (its own session), TERM then KILL.

    A server that already exited (and its group with it) is not an error here: raising
    ProcessLookupError from the teardown would hide the failure that stopped it.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)  # the group of the process started above
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def test_the_teardown_stops_a_server_that_already_exited() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    exited.wait()
    stop_group(exited)  # the old teardown raised ProcessLookupError here
    running = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    stop_group(running)
    assert running.returncode == -signal.SIGTERM


@pytest.mark.parametrize("model", MODELS)
def test_mlflow_models_serve_answers_the_documented_request_as_the_endpoint(
    champions: Champions, mlflow_servers: dict[str, str], model: str
) -> None:
    records = example_request(champions, model)
    with httpx.Client(trust_env=False, timeout=30) as client:
        answer = client.post(
            f"{mlflow_servers[model]}/invocations", json={"dataframe_records": records}
        )
    assert answer.status_code == 200, answer.text
    got = pd.DataFrame(answer.json()["predictions"])
    same_answer(got, served(champions, model, records))


def test_each_training_run_records_its_snapshots_as_mlflow_inputs(champions: Champions) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=champions.settings.tracking_uri)
    store = store_from_settings(champions.settings)
    for model in MODELS:
        dataset = load_model_config(champions.configs / "models" / f"{model}.yaml").dataset.name
        manifests = {m["snapshot_id"]: m for m in list_snapshots(store, dataset)}
        inputs = client.get_run(champions.run_ids[model]).inputs.dataset_inputs
        assert inputs, model
        for item in inputs:
            name, snapshot_id = item.dataset.name.split("/", 1)
            assert name == dataset
            tags = {t.key: t.value for t in item.tags}
            # The digest is the snapshot's sha256 (MLflow keeps 36 characters; the tag all).
            assert tags["sha256"] == manifests[snapshot_id]["sha256"]
            assert item.dataset.digest == manifests[snapshot_id]["sha256"][:36]
            assert tags["mlflow.data.context"] == "training"
            assert snapshot_id in item.dataset.source

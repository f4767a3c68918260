"""The daily evaluation survives bad records and bad models: each model is looked at on its own.

Three running experiments in one store: the abuse detector's record cannot be read (its
evaluation fails), the limit optimiser's capture holds a hostile request (a ``__label`` key)
and a broken line beside good answers, the traffic forecaster's has no traffic yet. No
endpoint runs: the looks end ``continue`` (before ``min_days``), so nothing is rolled out.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.artifacts import Artifact

from adapters.experiments import begin_experiment, read_experiment, save_experiment
from adapters.layout import experiment_key, timestamp
from adapters.prefect_api import artifact_key
from adapters.source import seed_source
from adapters.store import LocalStore
from core.config import load_model_configs
from core.experiment import new_experiment
from core.families import get_family
from core.settings import load_settings
from flows.experiment import experiment as evaluate
from serving.capture import Captured, capture_key, capture_line
from serving.experiment_routing import CaptureRoute
from tests.fixtures.home import isolated_env, project_configs


def _start(store: LocalStore, model: str, started: datetime) -> str:
    """Record a running ab experiment of ``model`` (v2 against v1), as the start flow leaves it."""
    (cfg,) = load_model_configs(load_settings().config_dir, [model])
    exp = new_experiment(
        model=model,
        family_metrics=get_family(cfg.family).experiment_metrics,
        policy=cfg.experiment,
        champion="v1",
        challenger="v2",
        started_at=timestamp(started),
        mode="ab",
    )
    begun = begin_experiment(store, exp)
    return save_experiment(store, begun.with_state("running"), expected=begun).id


def _capture(store: LocalStore, model: str, exp_id: str, at: float) -> None:
    """Two good answers per arm, one request with a ``__label`` key, and a broken line."""
    day = time.strftime("%Y-%m-%dT00:00:00", time.gmtime(at))

    def one(arm: str, client: str, extra: dict[str, float] | None = None) -> str:
        request = {"instances": [{"client_id": client, "day": day, "tier": "pro", **(extra or {})}]}
        item = Captured(
            CaptureRoute(store.url("capture"), model), arm, "v1" if arm == "champion" else "v2",
            arm, exp_id, f"id-{client}", "application/json", json.dumps(request).encode(),
            b'{"predictions": [{"recommended_limit": 100.0}]}', "application/json", at,
            latency_ms=5.0,
        )  # fmt: skip
        return json.dumps(capture_line(item))

    lines = [one(arm, f"{arm}-{i}") for arm in ("champion", "challenger") for i in range(2)]
    lines += [one("champion", "hostile", {"__label": 1e9}), '{"eventMetadata": []}']
    key = f"capture/{model}/" + capture_key(model, "champion", at, "part")
    store.put_bytes(key, ("\n".join(lines) + "\n").encode())


def test_a_hostile_record_and_another_models_failure_leave_every_other_decision_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_env(monkeypatch, tmp_path / "home", endpoint_target="local")
    project_configs(monkeypatch, tmp_path / "configs")
    settings = load_settings()
    seed_source(settings.source_url, weeks=1, n_clients=5, n_services=1, seed=3)
    store = LocalStore(settings.store)
    now = datetime.now(UTC)
    started = now - timedelta(hours=1)
    limits = _start(store, "limit_optimiser", started)
    forecasts = _start(store, "traffic_forecaster", started)
    _start(store, "abuse_detector", started)
    broken = {**json.loads(store.get_bytes(experiment_key("abuse_detector"))), "unknown": 1}
    store.put_bytes(experiment_key("abuse_detector"), json.dumps(broken).encode())
    _capture(store, "limit_optimiser", limits, now.timestamp())

    state = evaluate(return_state=True)

    outcomes = state.result(raise_on_failure=False)
    assert isinstance(outcomes, dict), outcomes
    assert state.is_failed() and "abuse_detector" in (state.message or ""), state.message
    assert set(outcomes) == {"abuse_detector", "limit_optimiser", "traffic_forecaster"}
    assert outcomes["abuse_detector"].startswith("failed: ")
    assert outcomes["limit_optimiser"].startswith("continue: ")
    assert "2 captured record(s) skipped" in outcomes["limit_optimiser"]
    assert outcomes["traffic_forecaster"].startswith("continue: ")
    # The decisions are recorded: each look appended to its experiment, the hostile request
    # and the broken line counted, not joined.
    looked = read_experiment(store, "limit_optimiser")
    assert looked is not None and looked.id == limits and len(looked.looks) == 1
    look = looked.looks[0]
    assert look["requests"] == {"champion": 2, "challenger": 2}
    assert look["skipped"] == {
        "not a capture record": 1,
        "request record names a column the analysis owns": 1,
    }
    other = read_experiment(store, "traffic_forecaster")
    assert other is not None and other.id == forecasts and len(other.looks) == 1
    artifact = Artifact.get(artifact_key("experiment-limit_optimiser"))
    assert artifact is not None and "2 captured record(s) skipped" in str(artifact.data)
    summary = Artifact.get(artifact_key("experiment-evaluate"))
    assert summary is not None and "abuse_detector" in str(summary.data)
    assert looked.state == "running" and other.state == "running"
    assert read_experiment(store, "limit_optimiser") == looked  # nothing after the look

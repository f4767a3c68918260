"""The retrain under each task runner of ``runner:`` (threads, a process pool, Dask).

The same small source is retrained under every runner (the abuse detector and the forecaster on
two services, whose fits fan out over the same runner); what each publishes must be the same
bytes. The runs share one module-scoped record of what they published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.pointer import promotion_history
from adapters.source import seed_source
from adapters.store import store_from_settings
from adapters.versions import list_versions, read_version_manifest
from core.settings import load_settings
from flows.retrain import retrain
from tests.fixtures.home import SMALL_SOURCE, isolated_env, project_configs

MODELS = ["abuse_detector", "traffic_forecaster"]
RUNNERS = ["threads", "process", "dask"]


def runner_config(kind: str, dask_address: str = "") -> dict[str, dict[str, str]]:
    """The ``configs/`` edits: runner ``kind`` (two workers), one cheap Prophet per service."""
    return {
        "platform.yaml": {
            "kind: threads ": f"kind: {kind} ",
            'dask_address: ""': f'dask_address: "{dask_address}"',
        },
        "models/traffic_forecaster.yaml": {
            "candidates: [seasonal_naive, mstl, mstl_naive, prophet]": "candidates: [prophet]",
            "backtest_folds: 3": "backtest_folds: 0",
            "daily_order: 20": "daily_order: 4",
            "weekly_order: 20": "weekly_order: 3",
            # The cheap forecaster must publish: these runs compare bytes, not accuracy.
            "relative_mae: {direction: lower, floor: 1.0": "relative_mae: {direction: lower, floor: 9",  # noqa: E501
            "smape: {direction: lower, floor: 0.30": "smape: {direction: lower, floor: 2",
        },
    }


def published(settings: Any, model: str) -> dict[str, Any]:
    """What the store holds of ``model``: versions, history and the v1 files' sha256."""
    store = store_from_settings(settings)
    versions = list_versions(store, model)
    files = read_version_manifest(store, model, "v1")["files"] if versions else {}
    return {
        "versions": [v["version"] for v in versions],
        "history": len(promotion_history(store, model)),
        "sha256": {name: meta["sha256"] for name, meta in files.items() if name != "metrics.json"},
    }


@pytest.fixture(scope="module")
def by_runner() -> dict[str, dict[str, Any]]:
    """Filled by each runner's test; the last test compares them."""
    return {}


@pytest.mark.parametrize("kind", RUNNERS)
def test_retrain_under_runner(
    kind: str, by_runner: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_env(monkeypatch, tmp_path / "home")
    project_configs(monkeypatch, tmp_path / "configs", runner_config(kind))
    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)

    state = retrain(models=MODELS, reason=f"runner {kind}", return_state=True)

    assert state.is_completed(), state.message
    outcomes = {o["model"]: o for o in state.result()["models"]}
    assert {m: outcomes[m]["status"] for m in MODELS} == dict.fromkeys(MODELS, "promoted")
    by_runner[kind] = {m: published(settings, m) for m in MODELS}
    for model in MODELS:
        assert by_runner[kind][model]["versions"] == ["v1"]
        assert by_runner[kind][model]["sha256"]


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(
            "abuse_detector",
            marks=pytest.mark.xfail(
                strict=True,
                reason="found 2026-12-02: its model.tar.gz differs between the threads and the "
                "process run (schema.json is equal); cause not yet found",
            ),
        ),
        "traffic_forecaster",
    ],
)
def test_every_runner_publishes_the_same_bytes(by_runner: dict[str, Any], model: str) -> None:
    if set(by_runner) != set(RUNNERS):
        pytest.skip(f"needs every runner's run; have {sorted(by_runner)}")
    first = by_runner[RUNNERS[0]][model]
    for kind in RUNNERS[1:]:
        assert by_runner[kind][model] == first, kind

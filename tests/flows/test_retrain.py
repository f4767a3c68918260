"""The weekly retrain, end to end on the embedded defaults, against a temporary Prefect API.

One scenario walks a champion's life: first run, a run with no new data, a new week with bad
rows in one table (that model fails, the others go on, nothing of it moves), then the fix.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adapters.pointer import promotion_history, read_latest
from adapters.registry import CHAMPION, Registry
from adapters.snapshots import list_snapshots
from adapters.source import corrupt_source, seed_source
from adapters.store import store_from_settings
from adapters.versions import list_versions
from cli.status import status_of
from core.settings import load_settings
from flows.retrain import retrain
from tests.fixtures.home import SMALL_SOURCE

MODELS = ["abuse_detector", "limit_optimiser", "traffic_forecaster"]


def run(**kwargs: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
    state = retrain(return_state=True, **kwargs)
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, dict), summary
    return state, {o["model"]: o for o in summary["models"]}


def pointers(settings: Any, model: str) -> dict[str, Any]:
    """Everything a failed run must leave exactly as it was."""
    store = store_from_settings(settings)
    return {
        "latest": read_latest(store, model),
        "history": promotion_history(store, model),
        "versions": list_versions(store, model),
        "champion": Registry.from_settings(settings).get_alias(model, CHAMPION),
    }


def test_weekly_cycle(mlops_home: Path) -> None:
    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)

    # 1. First run: no champion, floors only; every model is published as v1 and promoted.
    state, out = run(reason="first")
    assert state.is_completed(), state.message
    for model in MODELS:
        assert out[model]["status"] == "promoted", out[model]
        assert out[model]["version"] == "v1"
        assert out[model]["champion_version"] is None
    status = {r["model"]: r for r in status_of(settings)}
    for model in MODELS:
        assert status[model]["agree"], status[model]
        assert status[model]["latest_version"] == "v1"
        lineage = status[model]["lineage"]
        assert lineage["reason"] == "first"
        assert lineage["flow_run_id"] not in ("", "none")
        assert len(lineage["data_sha256"]) == 64

    # 2. No new data: the run says so and stops cleanly, nothing moves.
    before = {m: pointers(settings, m) for m in MODELS}
    state, out = run()
    assert state.is_completed()
    assert {o["status"] for o in out.values()} == {"skipped"}
    assert "no new data" in out["abuse_detector"]["note"]
    assert {m: pointers(settings, m) for m in MODELS} == before

    # 3. A new week arrives, with bad rows in client_limits only.
    seed_source(settings.source_url, append_weeks=1, **SMALL_SOURCE)
    engine = sa.create_engine(settings.source_url)
    with engine.connect() as conn:
        last_good = conn.execute(sa.text("SELECT max(id) FROM client_limits")).scalar_one()
    corrupt_source(settings.source_url, "client_limits")
    state, out = run(reason="week 2")
    assert state.is_failed()
    bad = out["limit_optimiser"]
    assert bad["status"] == "failed"
    # The failure names expectations, columns and sample values.
    for needle in ("expect_compound_columns_to_be_unique", "best_limit", "error_rate"):
        assert needle in bad["note"], bad["note"]
    assert pointers(settings, "limit_optimiser") == before["limit_optimiser"]
    statuses = [s["status"] for s in list_snapshots(store_from_settings(settings), "client_limits")]
    assert statuses == ["accepted", "rejected"]
    # The other models went on: their champion was re-scored on the new holdout.
    for model in ("abuse_detector", "traffic_forecaster"):
        assert out[model]["status"] in ("promoted", "rejected"), out[model]
        assert out[model]["champion_version"] == "v1"
        assert set(out[model]["champion_metrics"]) >= set(out[model]["metrics"]) & {
            "roc_auc",
            "mase",
        }
        gate = _gate_record(settings, out[model]["mlflow_run_id"])
        assert gate["champion_version"] == "v1" and gate["champion_scored"]

    # 4. The source is fixed: the rejected rows are re-exported, validated and used.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM client_limits WHERE id > :id"), {"id": last_good})
    state, out = run(models=["limit_optimiser"], reason="fixed")
    assert state.is_completed(), state.message
    assert out["limit_optimiser"]["status"] in ("promoted", "rejected")
    assert out["limit_optimiser"]["champion_version"] == "v1"
    statuses = [s["status"] for s in list_snapshots(store_from_settings(settings), "client_limits")]
    assert statuses == ["accepted", "rejected", "accepted"]
    final = {r["model"]: r for r in status_of(settings)}
    assert all(r["agree"] for r in final.values()), final


def test_a_row_from_the_future_is_refused_and_never_moves_the_window(mlops_home: Path) -> None:
    """Issue 21: one source row dated five years ahead passed validation and became the
    window's newest row; every later run then failed on "row count observed 1"."""
    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
    state, out = run(models=["limit_optimiser"], reason="first")
    assert out["limit_optimiser"]["status"] == "promoted", out["limit_optimiser"]
    before = pointers(settings, "limit_optimiser")

    # A new week arrives, and with it one row dated five years past the run's start.
    seed_source(settings.source_url, append_weeks=1, **SMALL_SOURCE)
    future = datetime.now(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    future += timedelta(days=5 * 365)
    engine = sa.create_engine(settings.source_url)
    columns = "client_id, tier, avg_rps, p95_rps, p99_rps, burst_ratio, error_rate, " + (
        "account_age_days, endpoints_used, best_limit"
    )
    with engine.begin() as conn:
        row_id = conn.execute(sa.text("SELECT max(id) FROM client_limits")).scalar_one() + 1
        conn.execute(
            sa.text(
                f"INSERT INTO client_limits (id, day, {columns}) SELECT :id, :day, {columns} "
                "FROM client_limits WHERE id = :source"
            ),
            {"id": row_id, "day": f"{future:%Y-%m-%d %H:%M:%S}.000000", "source": row_id - 1},
        )
        client = conn.execute(
            sa.text("SELECT client_id FROM client_limits WHERE id = :id"), {"id": row_id}
        ).scalar_one()
    state, out = run(models=["limit_optimiser"], reason="future row")
    assert state.is_failed()
    note = out["limit_optimiser"]["note"]
    # The one failure names the column, the row (its key and date) and the tolerance; the
    # window still holds the other rows (no "row count": the anchor did not move).
    assert "1 of " in note and "expect_table_row_count" not in note, note
    assert "expect_column_values_to_be_between on day: 1 bad rows" in note, note
    assert f"'day': '{future:%Y-%m-%d %H:%M:%S}', 'client_id': '{client}'" in note, note
    assert "dataset.future_tolerance_hours (168 h)" in note, note
    assert pointers(settings, "limit_optimiser") == before
    store = store_from_settings(settings)
    assert [s["status"] for s in list_snapshots(store, "client_limits")] == [
        "accepted",
        "rejected",
    ]

    # The row is deleted at the source: the next run re-exports the week and trains on it.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM client_limits WHERE id = :id"), {"id": row_id})
    engine.dispose()
    state, out = run(models=["limit_optimiser"], reason="row deleted")
    assert state.is_completed(), state.message
    assert out["limit_optimiser"]["status"] in ("promoted", "rejected"), out["limit_optimiser"]
    assert out["limit_optimiser"]["champion_version"] == "v1"
    statuses = [s["status"] for s in list_snapshots(store, "client_limits")]
    assert statuses == ["accepted", "rejected", "accepted"]


def _gate_record(settings: Any, run_id: str) -> dict[str, Any]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    path = client.download_artifacts(run_id, "gate.json")
    return json.loads(Path(path).read_text())


def test_forced_run_without_new_data_retrains(mlops_home: Path) -> None:
    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
    state, out = run(models=["limit_optimiser"])
    assert out["limit_optimiser"]["version"] == "v1"
    state, out = run(models=["limit_optimiser"], force=True)
    assert state.is_completed()
    assert out["limit_optimiser"]["status"] in ("promoted", "rejected")
    assert out["limit_optimiser"]["champion_version"] == "v1"


@pytest.mark.parametrize("bad", [["nope"]])
def test_unknown_model_fails_before_anything_runs(mlops_home: Path, bad: list[str]) -> None:
    state = retrain(models=bad, return_state=True)
    assert state.is_failed()
    assert "unknown model" in str(state.result(raise_on_failure=False))

"""The forecaster on real public hourly series no one here generated (tests/data/SOURCE.md).

Two series with daily and weekly cycles: electricity demand in England and Wales (Taylor, 2000)
and M4 competition series H410. The first test runs the retrain flow on both at once, each as
one service of ``service_traffic``: each service's forecaster is chosen by the backtest, the
choice and every candidate's score reach the gate record, and each service's holdout score
against weekly seasonal naive is reported. The second judges the choice as a forecaster is
judged, by rolling origin: over the last three weeks of each series, each week the holdout
and the 56 days before it the training window, the chosen forecaster beats seasonal naive.
Figures per week and per candidate: README, "Forecasting".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from adapters.source.schema import create_source_tables, engine_for, source_tables
from core.families import get_family
from core.families.forecast_candidates import DEFAULT_CANDIDATES
from core.settings import load_settings
from flows.retrain import retrain

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
SERIES = {"taylor": "taylor_hourly.csv", "m4_h410": "m4_h410_hourly.csv"}


def real_series(name: str, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """One series as ``service_traffic`` rows (no holiday flagged).

    With ``end``, the series is moved to end at the hour ``end`` so that both series share one
    training window and one holdout week: Taylor (real dates) only by whole weeks, weekdays
    unchanged; H410 exactly, since its dates are nominal (tests/data/SOURCE.md).
    """
    frame = pd.read_csv(DATA / SERIES[name], parse_dates=["ts"])
    if end is not None:
        shift = end - frame["ts"].max()
        if name == "taylor":
            shift = (shift // pd.Timedelta(weeks=1)) * pd.Timedelta(weeks=1)
        frame["ts"] += shift
    return frame.assign(service=name, is_holiday=0)[["service", "ts", "requests", "is_holiday"]]


def test_retrain_on_real_series_chooses_and_records_a_forecaster_per_service(
    mlops_home: Path,
) -> None:
    import mlflow

    settings = load_settings()
    # Both end on Taylor's last hour (Sunday 23:00): the flow's holdout, the newest 7 whole
    # days, is then the last whole week of each, as in the README's table.
    end = real_series("taylor")["ts"].max()
    frame = pd.concat([real_series(name, end) for name in SERIES], ignore_index=True)
    engine = engine_for(settings.source_url)
    create_source_tables(engine)
    rows: list[dict[str, Any]] = [
        {**r, "ts": r["ts"].to_pydatetime(), "id": i + 1}
        for i, r in enumerate(frame.to_dict(orient="records"))
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(source_tables()["service_traffic"]), rows)

    summary = retrain(models=["traffic_forecaster"], reason="real series", return_state=True)
    (outcome,) = summary.result(raise_on_failure=False)["models"]
    assert outcome["status"] in ("promoted", "rejected"), outcome
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    run_id = outcome["mlflow_run_id"]
    gate = json.loads(Path(client.download_artifacts(run_id, "gate.json")).read_text())
    run = client.get_run(run_id)
    assert "candidates.json" in {a.path for a in client.list_artifacts(run_id)}
    for service in SERIES:
        mine = [r for r in gate["candidates"] if r["service"] == service]
        assert {r["candidate"] for r in mine} == set(DEFAULT_CANDIDATES)
        (chosen,) = [r for r in mine if r["chosen"]]
        # Seasonal naive is a candidate at exactly 1.0: the winner never scores worse.
        assert chosen["status"] == "scored" and chosen["relative_mae"] <= 1.0
        assert run.data.params[f"chosen.{service}"] == chosen["candidate"]
        # Each service's own holdout score against weekly seasonal naive is on the run.
        assert run.data.metrics[f"relative_mae__{service}"] > 0
    # The gate judges the mean over the services on the last week (the flow's holdout) against
    # its floor, "beat seasonal naive": the chosen forecasters pass it and are promoted.
    assert run.data.metrics["relative_mae"] < 1.0
    assert outcome["status"] == "promoted", outcome


@pytest.mark.parametrize("name", list(SERIES))
def test_the_chosen_forecaster_beats_seasonal_naive_by_rolling_origin(name: str) -> None:
    family = get_family("traffic_forecaster")
    frame = real_series(name)
    end = frame["ts"].max().floor("D") + pd.Timedelta(days=1)
    scores = []
    for back in (1, 2, 3):  # the flow's split, with the holdout the last, second, third week
        cutoff = end - pd.Timedelta(weeks=back)
        train = frame[(frame["ts"] < cutoff) & (frame["ts"] >= cutoff - pd.Timedelta(days=56))]
        holdout = frame[(frame["ts"] >= cutoff) & (frame["ts"] < cutoff + pd.Timedelta(weeks=1))]
        model = family.train(train, family.Params(), 42)
        scores.append(family.evaluate(model, holdout, train).metrics["relative_mae"])
    # Below 1: less error than "the same hour last week", averaged over the three weeks.
    assert sum(scores) / len(scores) < 1.0, scores

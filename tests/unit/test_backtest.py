"""The backtest's choice: cheap candidates on every fold, an expensive one judged on its own."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from core.families import backtest as bt
from core.families.forecast_candidates import WEEK

HOURS = pd.date_range("2026-01-05", periods=5 * WEEK, freq="h")
# A weekly cycle plus a step up in the last week: the newest week matters most.
Y = pd.Series(np.sin(np.arange(len(HOURS)) * 2 * np.pi / 24) + 10.0, index=HOURS)
Y.iloc[-WEEK:] += 1.0


def constant(value: float) -> Callable[[pd.Series, pd.DatetimeIndex], np.ndarray]:
    return lambda train, hours: np.full(len(hours), value)


def last_week(train: pd.Series, hours: pd.DatetimeIndex) -> np.ndarray:
    return train.to_numpy()[-WEEK:][np.arange(len(hours)) % WEEK]


def test_top_two_is_the_mean_of_the_two_best_on_the_same_folds() -> None:
    folds = bt.rolling_folds(Y, 3, WEEK, WEEK)
    candidates = {
        "seasonal_naive": last_week,
        "recent_weeks": constant(10.0),
        "daily_adjusted": constant(11.0),
        "top_two": constant(0.0),  # never called: scored from its parts' fold forecasts
    }
    rows, runs = bt.score_candidates("api", Y, candidates, folds)
    by = {r.candidate: r for r in rows}
    assert by["top_two"].status == "scored" and by["top_two"].folds == 3
    # Seasonal naive is exact but for the last week; 10.0 is closer than 11.0 on two of three.
    assert by["top_two"].parts == ["seasonal_naive", "recent_weeks"]
    a, b = (runs[p].forecasts for p in by["top_two"].parts)
    mean = [(x + y) / 2 for x, y in zip(a, b, strict=True)]
    want = np.mean(np.abs(np.concatenate(runs["top_two"].actuals) - np.concatenate(mean)))
    assert by["top_two"].mae == pytest.approx(want)


@pytest.mark.parametrize(("prophet_value", "first"), [(11.0, "prophet"), (9.0, "seasonal_naive")])
def test_an_expensive_candidate_serves_only_if_it_beats_the_best_on_its_folds(
    prophet_value: float, first: str
) -> None:
    calls: list[pd.Timestamp] = []

    def prophet(train: pd.Series, hours: pd.DatetimeIndex) -> np.ndarray:
        calls.append(train.index[-1])
        return np.full(len(hours), prophet_value)

    folds = bt.rolling_folds(Y, 3, WEEK, WEEK)
    candidates = {"seasonal_naive": last_week, "prophet": prophet}
    rows, runs = bt.score_candidates("api", Y, candidates, folds, expensive_folds=1)
    # Fitted on the last fold only: one fit instead of three.
    assert len(calls) == 1 and {r.candidate: r.folds for r in rows}["prophet"] == 1
    assert bt.ranking(rows, list(candidates), runs)[0] == first


def test_a_score_equal_to_seasonal_naives_but_for_rounding_does_not_win() -> None:
    # One week of history: daily_adjusted is seasonal naive through log1p and expm1, its score
    # 0.9999999999999998; the configured order (seasonal naive first) must decide the tie.
    rows = [
        bt.CandidateScore("api", "seasonal_naive", "scored", 1.0, 5.0, 1),
        bt.CandidateScore("api", "daily_adjusted", "scored", 1.0 - 2e-16, 5.0, 1),
    ]
    assert bt.ranking(rows, ["seasonal_naive", "daily_adjusted"])[0] == "seasonal_naive"

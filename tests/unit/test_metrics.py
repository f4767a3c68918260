"""Metric functions against hand-computed values, and the plot helpers' hygiene.

The gate reads these numbers by name: a metric that is silently off (a percent instead of a
fraction, a ceil instead of a floor for k, a baseline that peeks at the future) changes which
model serves traffic. Undefined metrics must raise, not return a number the gate could trust.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from matplotlib._pylab_helpers import Gcf
from matplotlib.figure import Figure

from core.families import metrics as m

Y = [1.0, 2.0, 3.0, 4.0]
P = [2.0, 2.0, 2.0, 2.0]


# --- regression -----------------------------------------------------------------------------


def test_regression_metrics_match_hand_computed_values() -> None:
    # errors 1, 0, -1, -2
    assert m.mae(Y, P) == pytest.approx(1.0)
    assert m.rmse(Y, P) == pytest.approx(math.sqrt(6 / 4))
    # SS_res = 6, SS_tot = 5 (mean 2.5): worse than predicting the mean, so R² < 0.
    assert m.r2(Y, P) == pytest.approx(1 - 6 / 5)
    assert m.mape(Y, P) == pytest.approx((1 / 1 + 0 + 1 / 3 + 2 / 4) / 4)
    assert m.smape(Y, P) == pytest.approx((2 / 3 + 0 + 2 / 5 + 4 / 6) / 4)


def test_perfect_prediction_scores_perfectly() -> None:
    assert m.mae(Y, Y) == 0.0
    assert m.rmse(Y, Y) == 0.0
    assert m.r2(Y, Y) == 1.0
    assert m.mape(Y, Y) == 0.0
    assert m.smape(Y, Y) == 0.0


def test_mape_is_a_fraction_and_skips_zero_actuals() -> None:
    # The gate's floor 0.25 means 25 %: a percent-scaled MAPE would never pass.
    assert m.mape([0.0, 10.0], [5.0, 11.0]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="every actual value is zero"):
        m.mape([0.0, 0.0], [1.0, 2.0])


def test_smape_counts_both_zero_as_perfect_and_is_bounded_by_two() -> None:
    assert m.smape([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert m.smape([0.0, 5.0], [3.0, 0.0]) == pytest.approx(2.0)


def test_r2_of_a_constant_target_is_undefined() -> None:
    with pytest.raises(ValueError, match="constant"):
        m.r2([3.0, 3.0, 3.0], [3.0, 2.0, 1.0])


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([1.0, 2.0], [1.0], "length mismatch"),
        ([], [], "no values"),
        ([1.0, float("nan")], [1.0, 2.0], "finite"),
    ],
)
def test_bad_inputs_are_rejected(y: list[float], p: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        m.mae(y, p)


# --- seasonal naive and MASE ----------------------------------------------------------------


def test_seasonal_naive_repeats_the_last_season_without_peeking() -> None:
    # Beyond one season it repeats the last observed season again, never future values.
    assert m.seasonal_naive([1, 2, 3, 4, 5, 6], horizon=5, season=3).tolist() == [4, 5, 6, 4, 5]
    assert m.seasonal_naive([1, 2, 3], horizon=0, season=3).size == 0
    with pytest.raises(ValueError, match="at least 3"):
        m.seasonal_naive([1, 2], horizon=1, season=3)


def test_seasonal_naive_scale_is_the_in_sample_lag_mae() -> None:
    # |2-1|, |3-2|, |5-3| -> mean 4/3
    assert m.seasonal_naive_scale([1, 2, 3, 2, 3, 5], season=3) == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="more than 3"):
        m.seasonal_naive_scale([1, 2, 3], season=3)
    with pytest.raises(ValueError, match="zero"):
        m.seasonal_naive_scale([1, 2, 3, 1, 2, 3], season=3)


def test_mase_value() -> None:
    # out-of-sample MAE 1 over in-sample scale 4/3
    assert m.mase(Y, P, [1, 2, 3, 2, 3, 5], season=3) == pytest.approx(0.75)


def _seasonal_series(n: int, season: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    signal = 100 + 30 * np.sin(2 * np.pi * t / season)
    return signal, signal + rng.normal(0, noise, n)


def test_mase_below_one_for_a_good_forecast_above_one_for_a_bad_one() -> None:
    season = 24
    signal, y = _seasonal_series(10 * season, season, noise=5.0, seed=1)
    insample, actual, truth = y[:-season], y[-season:], signal[-season:]
    # The true signal: only irreducible noise left, less than the noisy lag-24 naive error.
    assert m.mase(actual, truth, insample, season) < 1.0
    # Half a season off: the peaks land on the troughs.
    assert m.mase(actual, np.roll(truth, season // 2), insample, season) > 1.0
    # The seasonal-naive forecast itself scores about 1, as it should.
    naive = m.seasonal_naive(insample, season, season)
    assert 0.7 < m.mase(actual, naive, insample, season) < 1.3


# --- ranking --------------------------------------------------------------------------------

LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_roc_auc_and_average_precision_hand_computed() -> None:
    # Of the 4 (positive, negative) pairs, 3 are ordered right: (0.35 < 0.4) is the miss.
    assert m.roc_auc(LABELS, SCORES) == pytest.approx(0.75)
    # Ranked: 1 (P=1, R=.5), 0, 1 (P=2/3, R=1), 0 -> AP = .5 * 1 + .5 * 2/3
    assert m.average_precision(LABELS, SCORES) == pytest.approx(0.5 + 1 / 3)


@pytest.mark.parametrize("label", [0, 1])
def test_roc_auc_with_one_class_raises(label: int) -> None:
    with pytest.raises(ValueError, match="ROC-AUC is undefined"):
        m.roc_auc([label] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])


def test_labels_must_be_binary() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        m.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    ("n", "fraction", "k"),
    [(30, 0.1, 3), (10, 0.25, 3), (10, 0.01, 1), (100, 0.02, 2), (7, 1.0, 7)],
)
def test_top_k_is_the_ceiling_at_least_one(n: int, fraction: float, k: int) -> None:
    assert m.top_k(n, fraction) == k


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_top_k_rejects_a_fraction_outside_zero_one(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        m.top_k(10, fraction)


def test_precision_and_recall_at_k_hand_computed() -> None:
    y = [1, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    # top 30 % = 3 rows: labels 1, 0, 1
    assert m.precision_at_k(y, s, 0.3) == pytest.approx(2 / 3)
    assert m.recall_at_k(y, s, 0.3) == pytest.approx(2 / 3)
    # top 10 % = 1 row: the highest score is abusive
    assert m.precision_at_k(y, s, 0.1) == 1.0
    assert m.recall_at_k(y, s, 0.1) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="positive"):
        m.recall_at_k([0, 0], [0.1, 0.2], 0.5)


def test_ties_in_top_k_resolve_by_row_order() -> None:
    # All scores equal: the first k rows are taken, so the result is reproducible.
    assert m.precision_at_k([1, 0, 0, 0], [0.5] * 4, 0.25) == 1.0
    assert m.precision_at_k([0, 1, 0, 0], [0.5] * 4, 0.25) == 0.0


# --- figures --------------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_figures_render_to_png_without_touching_pyplot() -> None:
    # Figures made through pyplot stay registered (and in memory) until closed; these never are.
    before = len(Gcf.get_all_fig_managers())
    ts = np.arange(48)
    figures = [
        m.score_distribution_figure([0.1, 0.2, 0.3, 0.9], [0, 0, 0, 1], threshold=0.5),
        m.feature_importance_figure({"a": 0.7, "b": 0.3}, "importance"),
        m.predicted_vs_actual_figure([1.0, 2.0, 3.0], [1.1, 1.9, 3.2], "limit"),
        m.forecast_figure(
            {
                "api": {"ts": ts, "actual": ts * 1.0, "forecast": ts + 1.0, "baseline": ts - 1.0},
                "auth": {"ts": ts, "actual": ts * 2.0, "forecast": ts * 2.0},
            }
        ),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert _png(fig).startswith(b"\x89PNG")
    assert len(figures[-1].axes) == 2  # one panel per service
    assert len(Gcf.get_all_fig_managers()) == before

"""Metric functions and plot helpers shared by the model families.

The metric functions are pure: arrays in, a float out, no state. They raise ``ValueError``
where a metric is undefined (one class only, no non-zero actual, a constant target) rather than
return a number the gate could mistake for a score.

The plot helpers build :class:`matplotlib.figure.Figure` objects directly, with an Agg canvas,
never through ``pyplot``: nothing is registered globally, so a figure is freed as soon as the
caller drops it (or calls ``fig.clear()``), and no display is ever needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Colours of the plots: labelled normal vs abusive, actual vs model vs baseline.
_BLUE = "#1f77b4"
_RED = "#d62728"
_GREY = "#7f7f7f"


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    a = np.asarray(y_true, dtype="float64").ravel()
    b = np.asarray(y_pred, dtype="float64").ravel()
    if a.shape != b.shape:
        raise ValueError(f"length mismatch: {a.size} actual vs {b.size} predicted values")
    if a.size == 0:
        raise ValueError("no values to score")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("values must be finite (no NaN or inf)")
    return a, b


# --- classification / ranking ---------------------------------------------------------------


def _labels_scores(
    y_true: ArrayLike, score: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y, s = _pair(y_true, score)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype("int64"), s


def roc_auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve of ``score`` (higher = more positive) against 0/1 labels.

    Raises:
        ValueError: only one class is present, so ROC-AUC is undefined.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _labels_scores(y_true, score)
    positives = int(y.sum())
    if positives in (0, y.size):
        only = "positive" if positives else "negative"
        raise ValueError(
            f"ROC-AUC is undefined: all {y.size} labelled rows are {only}; "
            "the holdout needs both classes"
        )
    return float(roc_auc_score(y, s))


def average_precision(y_true: ArrayLike, score: ArrayLike) -> float:
    """Average precision (area under the precision-recall curve, step-wise).

    Raises:
        ValueError: there is no positive label.
    """
    from sklearn.metrics import average_precision_score

    y, s = _labels_scores(y_true, score)
    if y.sum() == 0:
        raise ValueError("average precision is undefined without a positive label")
    return float(average_precision_score(y, s))


def top_k(n: int, fraction: float) -> int:
    """How many of ``n`` items the top ``fraction`` holds: ``ceil(fraction * n)``, at least 1."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    # Round before ceil so that 0.1 * 30 (= 3.0000000000000004) counts 3, not 4.
    return max(1, math.ceil(round(fraction * n, 9)))


def _top_k_hits(y_true: ArrayLike, score: ArrayLike, fraction: float) -> tuple[int, int, int]:
    y, s = _labels_scores(y_true, score)
    k = top_k(y.size, fraction)
    # Stable sort on the negated score: ties keep row order, so the result is reproducible.
    order = np.argsort(-s, kind="stable")[:k]
    return int(y[order].sum()), k, int(y.sum())


def precision_at_k(y_true: ArrayLike, score: ArrayLike, fraction: float) -> float:
    """Share of positives among the top ``fraction`` of rows by ``score`` (see :func:`top_k`)."""
    hits, k, _ = _top_k_hits(y_true, score, fraction)
    return hits / k


def recall_at_k(y_true: ArrayLike, score: ArrayLike, fraction: float) -> float:
    """Share of all positives found in the top ``fraction`` of rows by ``score``.

    Raises:
        ValueError: there is no positive label.
    """
    hits, _, positives = _top_k_hits(y_true, score, fraction)
    if positives == 0:
        raise ValueError("recall is undefined without a positive label")
    return hits / positives


# --- regression / forecasting ---------------------------------------------------------------


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error."""
    a, b = _pair(y_true, y_pred)
    return float(np.mean(np.abs(a - b)))


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error."""
    a, b = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def r2(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Coefficient of determination, ``1 - SS_res / SS_tot`` (can be negative).

    Raises:
        ValueError: the actual values are constant, so R² is undefined.
    """
    a, b = _pair(y_true, y_pred)
    ss_tot = float(np.sum((a - a.mean()) ** 2))
    if ss_tot == 0.0:
        raise ValueError("R² is undefined for a constant target")
    return 1.0 - float(np.sum((a - b) ** 2)) / ss_tot


def mape(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute percentage error as a fraction (0.1 = 10 %), over non-zero actuals.

    Rows whose actual value is zero are left out: their percentage error is infinite.

    Raises:
        ValueError: every actual value is zero.
    """
    a, b = _pair(y_true, y_pred)
    nonzero = a != 0.0
    if not nonzero.any():
        raise ValueError("MAPE is undefined when every actual value is zero")
    return float(np.mean(np.abs(a[nonzero] - b[nonzero]) / np.abs(a[nonzero])))


def smape(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Symmetric MAPE as a fraction in [0, 2]: ``mean(2|y - ŷ| / (|y| + |ŷ|))``.

    A row where both values are zero is a perfect forecast and counts 0.
    """
    a, b = _pair(y_true, y_pred)
    denom = np.abs(a) + np.abs(b)
    terms = np.divide(2.0 * np.abs(a - b), denom, out=np.zeros_like(a), where=denom > 0)
    return float(np.mean(terms))


def seasonal_naive_scale(insample: ArrayLike, season: int) -> float:
    """In-sample MAE of the seasonal-naive forecast (``y[t] = y[t - season]``): MASE's scale.

    Raises:
        ValueError: the series is not longer than one season, or the scale is zero.
    """
    y = np.asarray(insample, dtype="float64").ravel()
    if season < 1:
        raise ValueError(f"season must be >= 1, got {season}")
    if y.size <= season:
        raise ValueError(f"need more than {season} in-sample values for MASE, got {y.size}")
    scale = float(np.mean(np.abs(y[season:] - y[:-season])))
    if not np.isfinite(scale) or scale == 0.0:
        raise ValueError("MASE is undefined: the in-sample seasonal-naive error is zero")
    return scale


def mase(y_true: ArrayLike, y_pred: ArrayLike, insample: ArrayLike, season: int) -> float:
    """Mean absolute scaled error: out-of-sample MAE over the in-sample seasonal-naive MAE.

    Below 1 the forecast beats the seasonal-naive forecast's in-sample error; above 1 it does
    worse (Hyndman & Koehler, 2006).

    Raises:
        ValueError: see :func:`seasonal_naive_scale`.
    """
    return mae(y_true, y_pred) / seasonal_naive_scale(insample, season)


def seasonal_naive(history: ArrayLike, horizon: int, season: int) -> NDArray[np.float64]:
    """Seasonal-naive forecast of the ``horizon`` values after ``history``.

    Each step repeats the value one season earlier; beyond one season the last observed season
    repeats again (``ŷ[T + h] = y[T + h - season * ceil(h / season)]``), so the forecast never
    uses values after the end of ``history``.

    Raises:
        ValueError: ``history`` is shorter than one season.
    """
    y = np.asarray(history, dtype="float64").ravel()
    if season < 1 or horizon < 0:
        raise ValueError("season must be >= 1 and horizon >= 0")
    if y.size < season:
        raise ValueError(f"need at least {season} history values, got {y.size}")
    last_season = y[y.size - season :]
    return np.resize(last_season, horizon).astype("float64")


# --- figures --------------------------------------------------------------------------------


def new_figure(width: float = 7.0, height: float = 4.5, **kwargs: Any) -> Figure:
    """A figure with its own Agg canvas, outside pyplot's global registry.

    matplotlib is imported here, not at module level: the serving app loads the families
    (and so this module) and never draws.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def score_distribution_figure(
    scores: ArrayLike, labels: ArrayLike, threshold: float | None = None
) -> Figure:
    """Histogram of anomaly scores, normal and abusive rows overlaid, with the threshold."""
    s = np.asarray(scores, dtype="float64")
    y = np.asarray(labels).astype(bool)
    fig = new_figure()
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(s, bins=50).tolist()
    ax.hist(s[~y], bins=bins, density=True, alpha=0.6, color=_BLUE, label=f"normal ({(~y).sum()})")
    ax.hist(s[y], bins=bins, density=True, alpha=0.6, color=_RED, label=f"abuse ({y.sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("anomaly score (higher = more anomalous)")
    ax.set_ylabel("density")
    ax.set_title("Anomaly score by label")
    ax.legend()
    fig.tight_layout()
    return fig


def feature_importance_figure(importance: Mapping[str, float], title: str) -> Figure:
    """Horizontal bar chart of feature importances, largest at the top."""
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig = new_figure(height=max(3.0, 0.4 * len(items) + 1.0))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color=_BLUE)
    ax.set_xlabel("importance")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def predicted_vs_actual_figure(y_true: ArrayLike, y_pred: ArrayLike, label: str) -> Figure:
    """Scatter of predicted against actual values, with the identity line."""
    a, b = _pair(y_true, y_pred)
    fig = new_figure(width=5.5, height=5.5)
    ax = fig.add_subplot()
    ax.scatter(a, b, s=6, alpha=0.4, color=_BLUE)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    ax.plot([lo, hi], [lo, hi], color=_GREY, linestyle="--", linewidth=1)
    if lo > 0 and hi / lo > 100:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"actual {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title("Predicted vs actual")
    fig.tight_layout()
    return fig


def forecast_figure(panels: Mapping[str, Mapping[str, Sequence[Any] | ArrayLike]]) -> Figure:
    """One panel per series: actual, forecast and (if given) baseline over time.

    Args:
        panels: series name -> ``{"ts": ..., "actual": ..., "forecast": ..., "baseline": ...}``
            (``baseline`` optional).
    """
    n = max(1, len(panels))
    fig = new_figure(width=10.0, height=2.4 * n + 0.6)
    axes = fig.subplots(n, 1, squeeze=False, sharex=True)[:, 0]
    for ax, (name, panel) in zip(axes, sorted(panels.items()), strict=False):
        ax.plot(panel["ts"], panel["actual"], color="black", linewidth=1, label="actual")
        ax.plot(panel["ts"], panel["forecast"], color=_BLUE, linewidth=1.2, label="forecast")
        if "baseline" in panel:
            ax.plot(
                panel["ts"],
                panel["baseline"],
                color=_GREY,
                linewidth=0.8,
                linestyle=":",
                label="seasonal naive",
            )
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("requests")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig

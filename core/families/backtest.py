"""The rolling-origin backtest that picks each service's forecaster among the candidates.

Every candidate is fitted on the history before each fold's cutoff and scored on the fold's
hours by its MAE relative to weekly seasonal naive on the same hours. The candidates that cost
a second or so a fit (:data:`EXPENSIVE`) are scored on the last folds only and must beat the
best of the others on those folds (:func:`ranking`); ``top_two`` is scored from its parts'
fold forecasts without a fit of its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.families.forecast_candidates import (
    FITTERS,
    MIN_HOURS,
    MSTL,
    MSTL_NAIVE,
    PROPHET,
    TOP_TWO,
    WEEK,
)

EXPENSIVE = frozenset({PROPHET, MSTL, MSTL_NAIVE})
"""Candidates that cost about a second a fit (cheap ones cost milliseconds): the backtest
scores them on fewer folds (``expensive_folds``), see :func:`ranking`."""


@dataclass
class CandidateScore:
    """One candidate's backtest on one service.

    Attributes:
        service: the service.
        candidate: the candidate's name.
        status: ``scored``, ``skipped`` (too little history) or ``failed`` (it raised).
        relative_mae: the candidate's MAE over seasonal naive's on the same fold hours (pooled
            over folds); below 1 beats seasonal naive.
        mae: the candidate's MAE over all fold hours.
        folds: folds scored.
        fit_seconds: mean seconds to fit once.
        reason: why it was skipped or failed.
        chosen: whether it serves the service.
        parts: for ``top_two``, the two candidates whose mean it is.
    """

    service: str
    candidate: str
    status: str
    relative_mae: float | None = None
    mae: float | None = None
    folds: int = 0
    fit_seconds: float | None = None
    reason: str = ""
    chosen: bool = False
    parts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (a row of the candidates table)."""
        return asdict(self)


@dataclass
class Folds:
    """Rolling-origin folds of one series: ``train`` ends at each cutoff, ``test`` follows."""

    cutoffs: list[pd.Timestamp] = field(default_factory=list)
    horizon: int = WEEK

    def last(self, n: int) -> Folds:
        """The last ``n`` folds (at least one, when there are any)."""
        return Folds(self.cutoffs[-max(1, n) :], self.horizon)


@dataclass
class Backtest:
    """One candidate's forecasts over its folds, and the actual and seasonal-naive values."""

    cutoffs: list[pd.Timestamp] = field(default_factory=list)
    forecasts: list[np.ndarray] = field(default_factory=list)
    actuals: list[np.ndarray] = field(default_factory=list)
    naives: list[np.ndarray] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def relative_mae(self, cutoffs: Iterable[pd.Timestamp] | None = None) -> tuple[float, float]:
        """``(MAE over seasonal naive's MAE, MAE)`` pooled over the folds (or ``cutoffs``)."""
        keep = set(self.cutoffs if cutoffs is None else cutoffs)
        at = [i for i, c in enumerate(self.cutoffs) if c in keep]
        errors = np.concatenate([np.abs(self.actuals[i] - self.forecasts[i]) for i in at])
        naive = np.concatenate([np.abs(self.actuals[i] - self.naives[i]) for i in at])
        mae, naive_mae = float(np.mean(errors)), float(np.mean(naive))
        if naive_mae > 0:
            return mae / naive_mae, mae
        return (1.0 if mae == 0 else float("inf")), mae


def rolling_folds(y: pd.Series, n_folds: int, horizon: int, min_train: int = WEEK) -> Folds:
    """Up to ``n_folds`` folds of ``horizon`` hours, the last ending with the series.

    Only folds with at least ``min_train`` hours before them are made (fewer, or none, on a
    short series): every candidate is then scored on the same folds, so the scores compare.
    """
    end = y.index[-1] + pd.Timedelta(hours=1)
    cutoffs = []
    for k in range(n_folds, 0, -1):
        cutoff = end - pd.Timedelta(hours=k * horizon)
        if int((y.index < cutoff).sum()) >= min_train:
            cutoffs.append(cutoff)
    return Folds(cutoffs, horizon)


def common_folds(y: pd.Series, n_folds: int, horizon: int, candidates: Iterable[str]) -> Folds:
    """The folds on which every candidate has its history; if none, those of the cheapest.

    On a series too short for some candidate's fold, that candidate is skipped (with the
    reason) and the others are compared on the folds they can all use.
    """
    needs = [MIN_HOURS.get(c, WEEK) for c in candidates]
    folds = rolling_folds(y, n_folds, horizon, max(needs))
    if folds.cutoffs or not needs:
        return folds
    return rolling_folds(y, n_folds, horizon, min(needs))


def backtest_candidate(
    y: pd.Series,
    folds: Folds,
    fit_predict: Callable[[pd.Series, pd.DatetimeIndex], np.ndarray],
    min_hours: int,
) -> Backtest:
    """One candidate's forecasts over ``folds``.

    Raises:
        ValueError: no fold leaves the candidate ``min_hours`` of history.
    """
    out = Backtest()
    for cutoff in folds.cutoffs:
        train = y[y.index < cutoff]
        test = y[(y.index >= cutoff) & (y.index < cutoff + pd.Timedelta(hours=folds.horizon))]
        if len(train) < min_hours or test.empty:
            continue
        started = time.perf_counter()
        forecast = fit_predict(train, pd.DatetimeIndex(test.index))
        out.seconds.append(time.perf_counter() - started)
        out.cutoffs.append(cutoff)
        out.forecasts.append(np.asarray(forecast, dtype="float64"))
        out.actuals.append(test.to_numpy())
        out.naives.append(train.to_numpy()[-WEEK:][(np.arange(len(test))) % WEEK])
    if not out.cutoffs:
        raise ValueError(
            f"{len(y)} h of history leave no backtest fold with the {min_hours} h it needs"
        )
    return out


def _scored(service: str, name: str, run: Backtest) -> CandidateScore:
    relative, mae = run.relative_mae()
    if not math.isfinite(relative):
        return CandidateScore(service, name, "failed", reason="non-finite error")
    seconds = float(np.mean(run.seconds)) if run.seconds else 0.0
    return CandidateScore(service, name, "scored", relative, mae, len(run.cutoffs), seconds)


def _top_two(service: str, runs: dict[str, Backtest], rows: list[CandidateScore]) -> CandidateScore:
    """The mean of the two best closed-form candidates scored on every fold.

    Averaging two good forecasts with different errors is a known strong baseline (the
    combinations of the M competitions); here it is scored on the same folds as its parts.
    """
    full = max((len(r.cutoffs) for r in runs.values()), default=0)
    pool = sorted(
        (r for r in rows if r.status == "scored" and r.candidate in FITTERS),
        key=lambda r: r.relative_mae if r.relative_mae is not None else math.inf,
    )
    pool = [r for r in pool if len(runs[r.candidate].cutoffs) == full]
    if len(pool) < 2:
        reason = "fewer than two closed-form candidates scored on every fold"
        return CandidateScore(service, TOP_TWO, "skipped", reason=reason)
    a, b = runs[pool[0].candidate], runs[pool[1].candidate]
    mean = Backtest(
        a.cutoffs,
        [(x + y) / 2 for x, y in zip(a.forecasts, b.forecasts, strict=True)],
        a.actuals,
        a.naives,
        [0.0],
    )
    runs[TOP_TWO] = mean
    row = _scored(service, TOP_TWO, mean)
    row.parts = [pool[0].candidate, pool[1].candidate]
    return row


def score_candidates(
    service: str,
    y: pd.Series,
    candidates: dict[str, Callable[[pd.Series, pd.DatetimeIndex], np.ndarray]],
    folds: Folds,
    expensive_folds: int | None = None,
) -> tuple[list[CandidateScore], dict[str, Backtest]]:
    """Backtest each candidate (name -> fit-and-forecast) on ``folds`` of one service.

    The candidates in :data:`EXPENSIVE` are scored on the last ``expensive_folds`` folds only
    (all of them when None); ``top_two`` (if a key of ``candidates``, its value unused) is the
    mean of the two best closed-form candidates, scored from their fold forecasts without a
    fit. A candidate that needs more history than a fold leaves is ``skipped``, one that
    raises is ``failed``; both keep the reason, and neither stops the others.
    """
    rows: list[CandidateScore] = []
    runs: dict[str, Backtest] = {}
    for name, fit_predict in candidates.items():
        if name == TOP_TWO:
            continue
        min_hours = MIN_HOURS.get(name, WEEK)
        if len(y) < min_hours:
            reason = f"{len(y)} h of history, {name} needs {min_hours}"
            rows.append(CandidateScore(service, name, "skipped", reason=reason))
            continue
        mine = folds.last(expensive_folds) if expensive_folds and name in EXPENSIVE else folds
        try:
            runs[name] = backtest_candidate(y, mine, fit_predict, min_hours)
        except ValueError as exc:
            rows.append(CandidateScore(service, name, "skipped", reason=str(exc)))
            continue
        except Exception as exc:  # a candidate's own failure must not fail the service
            reason = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(CandidateScore(service, name, "failed", reason=reason))
            continue
        rows.append(_scored(service, name, runs[name]))
    if TOP_TWO in candidates:
        row = _top_two(service, runs, rows)
        rows.insert(list(candidates).index(TOP_TWO), row)
    return rows, runs


def ranking(
    rows: list[CandidateScore], order: Iterable[str], runs: dict[str, Backtest] | None = None
) -> list[str]:
    """Candidates to try, best first: scored ones by backtest score, then the unscored.

    Ties and unscored candidates keep ``order`` (the configured candidates): with no fold to
    score on, the first configured candidate that fits serves. A candidate scored on fewer
    folds (an expensive one) goes first only if it beats the best of the others on its own
    folds, so that both are judged on the same hours.
    """
    position = {name: i for i, name in enumerate(order)}
    # Scores equal to 9 decimals tie (the configured order decides): a candidate that reduces to
    # seasonal naive on a short history (one week: daily_adjusted, recent_weeks) differs from it
    # only by float rounding, and must not win by it.
    scored = sorted(
        (r for r in rows if r.status == "scored"),
        key=lambda r: (round(float(r.relative_mae or 0.0), 9), position.get(r.candidate, 99)),
    )
    if not scored:
        return sorted(
            (r.candidate for r in rows if r.status == "skipped" and "backtest fold" in r.reason),
            key=lambda name: position.get(name, 99),
        )
    most = max(r.folds for r in scored)
    full = [r.candidate for r in scored if r.folds == most]
    for row in (r for r in scored if r.folds < most):
        best, runs = full[0], runs or {}
        if best in runs and row.candidate in runs:
            cutoffs = runs[row.candidate].cutoffs
            mine, theirs = (runs[n].relative_mae(cutoffs)[0] for n in (row.candidate, best))
        else:
            mine = float(row.relative_mae or 0.0)
            theirs = float(next(r.relative_mae or 0.0 for r in scored if r.candidate == best))
        full.insert(0 if round(mine, 9) < round(theirs, 9) else len(full), row.candidate)
    return full

"""Forecasting candidates besides Prophet (:mod:`core.families.backtest` picks one).

Two candidates live here, both reduced after fitting to a closed form that is stored as JSON
(no pickle) and evaluated at any hour without the fitting library:

- ``seasonal_naive``: the value at the same hour one week earlier, repeated. It is the gate's
  floor, so it is also a candidate: a service whose history no model beats gets it.
- ``mstl``: statsmodels' MSTL splits the series (on a log scale: traffic is multiplicative, a
  busy hour swings more than a quiet one) into a daily and a weekly seasonal component and a
  deseasonalised rest. Each seasonal component repeats its last cycle (as statsforecast's MSTL
  does) and the rest is forecast flat at its mean over the last day. A damped-trend exponential
  smoothing (Holt's) on the rest was measured too and lost on every real backtest week (Taylor:
  relative MAE 1.74 / 0.78 / 0.91 against 1.46 / 0.59 / 0.75 with the last day's mean): at an
  hourly grain the smoothing chases the rest's leftover daily ripple.
- ``mstl_naive``: the mean of the two forecasts above; on weeks where the seasonal shape moves
  (late-summer evenings in the Taylor series) it keeps half of the newest week.

Why MSTL from statsmodels rather than statsforecast: it fits a service in well under a second,
and statsmodels is a plain wheel (numpy, scipy, pandas, patsy) where statsforecast brings numba
and its compile time.

Holidays: the days flagged ``is_holiday`` in training are replaced by the same hours a week
earlier before the decomposition (so that one quiet Monday does not bend the weekly profile),
and their traffic relative to the fitted value becomes one multiplicative ``holiday_factor``,
applied to the flagged days of a forecast, as Prophet's holiday effect is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

WEEK = 168
DAY = 24
SEASONAL_NAIVE = "seasonal_naive"
MSTL = "mstl"
MSTL_NAIVE = "mstl_naive"
HOLT_WINTERS = "holt_winters"
RECENT_WEEKS = "recent_weeks"
DAILY_ADJUSTED = "daily_adjusted"
TOP_TWO = "top_two"
PROPHET = "prophet"
Candidate = Literal[
    "seasonal_naive",
    "mstl",
    "mstl_naive",
    "holt_winters",
    "recent_weeks",
    "daily_adjusted",
    "top_two",
    "prophet",
]
CANDIDATES: tuple[Candidate, ...] = get_args(Candidate)
DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    "seasonal_naive",
    "holt_winters",
    "recent_weeks",
    "daily_adjusted",
    "top_two",
    "prophet",
)
"""The defaults: MSTL's candidates cost a second or more a fit and did not win once
``top_two`` could blend the cheap ones (README, "Forecasting")."""
MIN_HOURS = {
    SEASONAL_NAIVE: WEEK,
    MSTL: 2 * WEEK,
    MSTL_NAIVE: 2 * WEEK,
    HOLT_WINTERS: 2 * WEEK,
    RECENT_WEEKS: WEEK,
    DAILY_ADJUSTED: WEEK,
    TOP_TWO: WEEK,
    PROPHET: WEEK + DAY,
}
"""Hours of history a candidate needs: a week to copy; MSTL and Holt-Winters two weekly
cycles; Prophet a week and a day (as before this module existed)."""
RECENT_WEEKS_K = 3
"""Weeks whose hour-of-week median ``recent_weeks`` forecasts (3 beat 2, 4 and the mean on
both real series, README "Forecasting")."""
DAILY_ADJUSTED_K = 8
"""Weeks from which ``daily_adjusted`` learns each weekday's shape (8 beat 2 and 4)."""


def hour_of_week(ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Hours since Monday 00:00 (0..167) of each timestamp."""
    index = pd.DatetimeIndex(ts)
    return np.asarray(index.day_of_week * DAY + index.hour, dtype="int64")


def hourly(ds: pd.Series, y: pd.Series) -> pd.Series:
    """``y`` on a regular hourly grid; missing hours are interpolated in time."""
    s = pd.Series(np.asarray(y, dtype="float64"), index=pd.DatetimeIndex(ds))
    s = s[~s.index.duplicated(keep="last")].sort_index()
    grid = pd.date_range(s.index.min(), s.index.max(), freq="h")
    return s.reindex(grid).interpolate(method="time").ffill().bfill()


@dataclass
class Profile:
    """A fitted closed-form forecaster: ``level + damped trend + profile[hour of week]``.

    A combination (``parts``) forecasts the mean of its parts instead.

    Attributes:
        kind: the candidate that produced it (``seasonal_naive``, ``mstl``, ``mstl_naive``).
        origin: ISO timestamp of the last training hour (forecast step 0).
        profile: 168 seasonal values by hour of week (Monday 00:00 first).
        level: the deseasonalised level at ``origin`` (0 for seasonal naive).
        trend: the trend per hour at ``origin``.
        phi: the trend's damping (1: undamped).
        log: whether the sum is on the ``log1p`` scale.
        holiday_factor: multiplies the forecast of a flagged holiday hour.
        parts: the forecasters whose mean this one is (empty for a plain one).
    """

    kind: str
    origin: str
    profile: list[float] = field(default_factory=list)
    level: float = 0.0
    trend: float = 0.0
    phi: float = 1.0
    log: bool = False
    holiday_factor: float = 1.0
    parts: list[Profile] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what ``save`` writes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """The inverse of :meth:`to_dict`."""
        parts = [cls.from_dict(p) for p in data.get("parts", [])]
        return cls(**{**data, "parts": parts})

    def predict(self, ts: pd.Series | pd.DatetimeIndex, holidays: Iterable[str] = ()) -> np.ndarray:
        """Forecast at the hours ``ts`` (naive timestamps); hours up to ``origin`` get step 0."""
        index = pd.DatetimeIndex(ts)
        if self.parts:
            return np.mean([p.predict(index, holidays) for p in self.parts], axis=0)
        steps = np.maximum((index - pd.Timestamp(self.origin)) / pd.Timedelta(hours=1), 0.0)
        if self.phi >= 1.0:
            damped = np.asarray(steps, dtype="float64")
        else:  # sum_{i=1..h} phi^i, Holt's damped trend
            damped = self.phi * (1.0 - self.phi ** np.asarray(steps)) / (1.0 - self.phi)
        value = self.level + damped * self.trend + np.asarray(self.profile)[hour_of_week(index)]
        out = np.expm1(value) if self.log else value
        flagged = _flagged(index, holidays)
        out = np.where(flagged, out * self.holiday_factor, out)
        return np.clip(np.asarray(out, dtype="float64"), 0.0, None)


def _weekly_profile(values: np.ndarray, index: pd.DatetimeIndex) -> np.ndarray:
    """The last 168 ``values`` placed by hour of week."""
    profile = np.zeros(WEEK)
    profile[hour_of_week(index[-WEEK:])] = values[-WEEK:]
    return profile


def _flagged(index: pd.DatetimeIndex, holidays: Iterable[str]) -> np.ndarray:
    """Whether each hour of ``index`` (naive) falls on one of the ``holidays`` (YYYY-MM-DD).

    Compared as numpy days rather than formatted strings: the serving path calls this per
    request, and ``strftime`` over an index costs more than the whole forecast.
    """
    days = np.asarray(sorted(holidays), dtype="datetime64[D]")
    return np.isin(index.to_numpy().astype("datetime64[D]"), days)


def _without_holidays(y: pd.Series, holidays: set[str]) -> tuple[pd.Series, np.ndarray]:
    """``y`` with flagged days replaced by the same hours a week earlier (or later)."""
    flagged = _flagged(pd.DatetimeIndex(y.index), holidays)
    if not flagged.any():
        return y, flagged
    earlier = y.shift(WEEK).to_numpy()
    fill = np.where(np.isnan(earlier), y.shift(-WEEK).to_numpy(), earlier)
    values = y.to_numpy(copy=True)
    values[flagged] = np.where(np.isnan(fill[flagged]), values[flagged], fill[flagged])
    return pd.Series(values, index=y.index), flagged


def _holiday_factor(y: pd.Series, flagged: np.ndarray, fitted: np.ndarray) -> float:
    """Traffic on flagged hours over what the model fits there (1 without any)."""
    if not flagged.any():
        return 1.0
    expected = float(np.clip(fitted[flagged], 0.0, None).sum())
    factor = float(y.to_numpy()[flagged].sum()) / expected if expected > 0 else 1.0
    return factor if math.isfinite(factor) else 1.0


def fit_seasonal_naive(y: pd.Series, holidays: set[str]) -> Profile:
    """The last week, by hour of week (flagged days filled from the week before).

    Raises:
        ValueError: less than a week of hours.
    """
    if len(y) < MIN_HOURS[SEASONAL_NAIVE]:
        raise ValueError(f"{len(y)} h of history, seasonal naive needs {WEEK}")
    clean, flagged = _without_holidays(y, holidays)
    index = pd.DatetimeIndex(clean.index)
    profile = _weekly_profile(clean.to_numpy(), index)
    fitted = np.roll(clean.to_numpy(), WEEK)  # the week before, where there is one
    fitted[:WEEK] = clean.to_numpy()[:WEEK]
    return Profile(
        SEASONAL_NAIVE,
        index[-1].isoformat(),
        profile.tolist(),
        holiday_factor=_holiday_factor(y, flagged, fitted),
    )


def fit_mstl(y: pd.Series, holidays: set[str]) -> Profile:
    """MSTL (daily, weekly) on ``log1p(y)``; the rest forecast flat at its last day's mean.

    Raises:
        ValueError: fewer than two weeks of hours (MSTL needs two weekly cycles).
    """
    from statsmodels.tsa.seasonal import MSTL as Decompose

    if len(y) < MIN_HOURS[MSTL]:
        raise ValueError(f"{len(y)} h of history, MSTL needs {MIN_HOURS[MSTL]} (two weeks)")
    clean, flagged = _without_holidays(y, holidays)
    z = np.log1p(np.clip(clean.to_numpy(), 0.0, None))
    decomposition = Decompose(z, periods=(DAY, WEEK)).fit()
    seasonal = np.asarray(decomposition.seasonal)
    rest = np.asarray(decomposition.trend) + np.asarray(decomposition.resid)
    index = pd.DatetimeIndex(clean.index)
    daily = np.zeros(WEEK)
    # The daily component's last cycle, repeated over the week at each hour of day's place.
    daily[hour_of_week(index[-WEEK:])] = np.tile(seasonal[-DAY:, 0], WEEK // DAY)
    profile = daily + _weekly_profile(seasonal[:, 1], index)
    fitted = np.expm1(rest + seasonal.sum(axis=1))
    return Profile(
        kind=MSTL,
        origin=index[-1].isoformat(),
        profile=profile.tolist(),
        level=float(rest[-DAY:].mean()),
        log=True,
        holiday_factor=_holiday_factor(y, flagged, fitted),
    )


def fit_mstl_naive(y: pd.Series, holidays: set[str]) -> Profile:
    """The mean of :func:`fit_mstl` and :func:`fit_seasonal_naive`."""
    parts = [fit_mstl(y, holidays), fit_seasonal_naive(y, holidays)]
    return Profile(MSTL_NAIVE, parts[0].origin, parts=parts)


def _last_weeks(z: np.ndarray, k: int) -> np.ndarray:
    """The last ``k`` whole weeks of ``z`` (as many as it has, at least one), newest last."""
    k = max(1, min(k, len(z) // WEEK))
    return np.stack([z[len(z) - WEEK * (k - i) : len(z) - WEEK * (k - i - 1)] for i in range(k)])


def _fitted_profile(clean: pd.Series, profile: np.ndarray, log: bool) -> np.ndarray:
    """In-sample values of a weekly ``profile`` (for the holiday factor)."""
    value = profile[hour_of_week(pd.DatetimeIndex(clean.index))]
    return np.expm1(value) if log else value


def fit_recent_weeks(y: pd.Series, holidays: set[str]) -> Profile:
    """The median of the last :data:`RECENT_WEEKS_K` weeks, by hour of week.

    A median of a few recent weeks keeps the newest shape and drops one unusual week.

    Raises:
        ValueError: less than a week of hours.
    """
    if len(y) < MIN_HOURS[RECENT_WEEKS]:
        raise ValueError(f"{len(y)} h of history, recent weeks needs {WEEK}")
    clean, flagged = _without_holidays(y, holidays)
    index = pd.DatetimeIndex(clean.index)
    median = np.median(_last_weeks(clean.to_numpy(), RECENT_WEEKS_K), axis=0)
    profile = _weekly_profile(median, index)
    return Profile(
        RECENT_WEEKS,
        index[-1].isoformat(),
        profile.tolist(),
        holiday_factor=_holiday_factor(y, flagged, _fitted_profile(clean, profile, False)),
    )


def fit_daily_adjusted(y: pd.Series, holidays: set[str]) -> Profile:
    """The last day, shifted on the log scale by each weekday's difference from it.

    Each weekday's shape (its hours' mean over the last :data:`DAILY_ADJUSTED_K` weeks, less
    the mean over the weekdays) is learnt from weeks; the level and the hour-of-day shape come
    from the newest day, which follows a shape that moves (evenings darkening in late summer).

    Raises:
        ValueError: less than a week of hours.
    """
    if len(y) < MIN_HOURS[DAILY_ADJUSTED]:
        raise ValueError(f"{len(y)} h of history, daily adjusted needs {WEEK}")
    clean, flagged = _without_holidays(y, holidays)
    index = pd.DatetimeIndex(clean.index)
    z = np.log1p(np.clip(clean.to_numpy(), 0.0, None))
    # Rows: the 7 days of the week block ending at the origin (the last day is row 6).
    days = _last_weeks(z, DAILY_ADJUSTED_K).mean(axis=0).reshape(7, DAY)
    effect = days - days.mean(axis=0, keepdims=True)
    values = (z[-DAY:] - effect[6] + effect).reshape(WEEK)
    profile = _weekly_profile(values, index)
    return Profile(
        DAILY_ADJUSTED,
        index[-1].isoformat(),
        profile.tolist(),
        log=True,
        holiday_factor=_holiday_factor(y, flagged, _fitted_profile(clean, profile, True)),
    )


def fit_holt_winters(y: pd.Series, holidays: set[str]) -> Profile:
    """Additive Holt-Winters (ETS(A,N,A)) with a weekly season on ``log1p(y)``.

    statsmodels' ``ExponentialSmoothing``: the level and each hour of week's seasonal value are
    exponentially smoothed, so recent weeks weigh more than old ones (Taylor's double-seasonal
    smoothing with the daily cycle folded into the weekly one). Without a trend its forecast is
    the last level plus the seasonal value, a weekly profile stored like the others.

    Raises:
        ValueError: fewer than two weeks of hours.
    """
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    if len(y) < MIN_HOURS[HOLT_WINTERS]:
        raise ValueError(f"{len(y)} h of history, Holt-Winters needs {MIN_HOURS[HOLT_WINTERS]}")
    clean, flagged = _without_holidays(y, holidays)
    index = pd.DatetimeIndex(clean.index)
    z = np.log1p(np.clip(clean.to_numpy(), 0.0, None))
    fit = ExponentialSmoothing(
        z, seasonal="add", seasonal_periods=WEEK, initialization_method="heuristic"
    ).fit()
    ahead = np.asarray(fit.forecast(WEEK))
    future = index[-1] + pd.to_timedelta(np.arange(1, WEEK + 1), unit="h")
    profile = np.zeros(WEEK)
    profile[hour_of_week(future)] = ahead
    return Profile(
        HOLT_WINTERS,
        index[-1].isoformat(),
        profile.tolist(),
        log=True,
        holiday_factor=_holiday_factor(y, flagged, np.expm1(np.asarray(fit.fittedvalues))),
    )


FITTERS: dict[str, Callable[[pd.Series, set[str]], Profile]] = {
    SEASONAL_NAIVE: fit_seasonal_naive,
    MSTL: fit_mstl,
    MSTL_NAIVE: fit_mstl_naive,
    HOLT_WINTERS: fit_holt_winters,
    RECENT_WEEKS: fit_recent_weeks,
    DAILY_ADJUSTED: fit_daily_adjusted,
}
"""The closed-form candidates; Prophet is fitted by the family module."""

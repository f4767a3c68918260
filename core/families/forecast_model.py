"""The traffic forecaster's hyperparameters, its fitted model and the data shaping it shares.

Split from :mod:`core.families.traffic_forecaster` (the family: training, scoring, saving,
serving) to keep each module within the house limit; the family module imports these back,
and its MLflow pyfunc ships this module with it (:func:`core.families.shipped_modules`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from core.families import check_columns
from core.families import forecast_candidates as fc
from core.families.prophet_point import PointForecast

INPUTS: dict[str, str] = {"service": "string", "ts": "timestamp"}
"""The request schema; ``is_holiday`` (0/1) may be sent too, see the module docstring."""
TRAIN_COLUMNS: dict[str, str] = {**INPUTS, "requests": "float64"}
SEASON = 168  # hours in a week: the seasonal-naive lag and MASE's scale
HOLIDAY = "holiday"
INDEX_FILE = "family.json"
FORMAT = "forecast-json"
OLD_FORMAT = "prophet-json"  # before candidates: every service a Prophet; still loads


class TrafficForecasterParams(BaseModel):
    """Hyperparameters of the forecaster (``params:`` in configs/models/traffic_forecaster.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seasonality_mode: Literal["additive", "multiplicative"] = Field(
        default="multiplicative",
        description="How seasonality and holidays combine with the trend.",
    )
    changepoint_prior_scale: float = Field(
        default=0.05,
        gt=0.0,
        le=10.0,
        description="Flexibility of the trend: larger lets the trend bend more often.",
    )
    holidays_prior_scale: float = Field(
        default=10.0, gt=0.0, le=100.0, description="Flexibility of the holiday effect."
    )
    # Fourier orders. Prophet's weekly default (3) suits daily data; on hourly traffic it
    # cannot draw the weekday/weekend step, and the trend bends to absorb it and then
    # extrapolates the bend. 20/20 was the best of 4/10, 10/10 and 20/20 on both real series
    # in tests/data (README, "Forecasting").
    daily_order: int = Field(
        default=20, ge=1, le=50, description="Fourier order of Prophet's daily seasonality."
    )
    weekly_order: int = Field(
        default=20, ge=1, le=50, description="Fourier order of Prophet's weekly seasonality."
    )
    candidates: list[fc.Candidate] = Field(
        default=list(fc.DEFAULT_CANDIDATES),
        min_length=1,
        description="Forecasters the backtest chooses from per service; ties go to the first.",
    )
    backtest_folds: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Rolling-origin folds that choose each service's forecaster (0: the first "
        "candidate that fits serves).",
    )
    backtest_horizon_hours: int = Field(
        default=168, ge=1, le=24 * 31, description="Hours forecast in each backtest fold."
    )
    expensive_folds: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Backtest folds (the last ones) on which Prophet and MSTL, about a second "
        "a fit each, are scored; they serve only if they beat the best cheap candidate on those "
        "folds (0: every fold).",
    )


Params = TrafficForecasterParams
"""The family's hyperparameter model (also ``FAMILY.Params``)."""


@dataclass
class ForecastModel:
    """One fitted forecaster per service (a Prophet or a :class:`~fc.Profile`).

    Attributes:
        models: service -> its fitted forecaster.
        holiday_dates: ISO dates flagged in training, sorted.
        params: the hyperparameters it was trained with.
        candidates: the backtest, one row per service and candidate
            (a :class:`~core.families.backtest.CandidateScore` as a dict); empty for a
            model saved before candidates.
    """

    models: dict[str, Any]
    holiday_dates: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def kind(self, service: str) -> str:
        """The candidate serving ``service``."""
        found = self.models[service]
        return found.kind if isinstance(found, fc.Profile) else fc.PROPHET

    @property
    def services(self) -> list[str]:
        """Services the model can forecast, sorted."""
        return sorted(self.models)

    @cached_property
    def point_forecasts(self) -> dict[str, PointForecast]:
        """Per service, the numpy point forecast (services it cannot cover left out)."""
        found = {}
        for service, prophet in self.models.items():
            if isinstance(prophet, fc.Profile):
                continue  # a statistical candidate: its own predict is numpy already
            point = PointForecast.of(prophet, self.holiday_dates, HOLIDAY)
            if point is not None:
                found[service] = point
        return found


def _quiet() -> None:
    """Keep Prophet and cmdstanpy at WARNING: they log every fit and chain at INFO."""
    # prophet.plot complains at import that plotly is missing; plots here are matplotlib's.
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    from cmdstanpy.utils import get_logger

    # cmdstanpy sets its logger to DEBUG the first time it asks for it: ask first, then lower.
    get_logger().setLevel(logging.WARNING)
    logging.getLogger("prophet").setLevel(logging.WARNING)


def _naive_utc(ts: pd.Series) -> pd.Series:
    """Timestamps without a timezone (Prophet refuses aware ones); aware ones go to UTC first."""
    ts = pd.to_datetime(ts)
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.astype("datetime64[ns]")


def _holiday_dates(frame: pd.DataFrame) -> set[str]:
    """ISO dates that have ``is_holiday == 1`` on any row (empty without the column)."""
    if "is_holiday" not in frame.columns or frame.empty:
        return set()
    flags = check_columns(frame, {"is_holiday": "int64", "ts": "timestamp"})
    days = _naive_utc(flags.loc[flags["is_holiday"] == 1, "ts"]).dt.normalize()
    return {d.date().isoformat() for d in days}


def _holidays_frame(dates: set[str] | list[str]) -> pd.DataFrame | None:
    if not dates:
        return None
    return pd.DataFrame({"holiday": HOLIDAY, "ds": pd.to_datetime(sorted(dates))})


def _series(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per service, the ``ds``/``y`` frame Prophet wants, sorted by time."""
    checked = check_columns(frame, TRAIN_COLUMNS)
    checked["ts"] = _naive_utc(checked["ts"])
    out: dict[str, pd.DataFrame] = {}
    for service, rows in checked.groupby("service", sort=True):
        df = rows.rename(columns={"ts": "ds", "requests": "y"})[["ds", "y"]]
        out[str(service)] = df.sort_values("ds").reset_index(drop=True)
    return out


def _hourly(series: pd.DataFrame) -> pd.Series:
    """``y`` on a regular hourly grid; missing hours are interpolated (for the baselines only)."""
    s = series.set_index("ds")["y"].astype("float64")
    s = s[~s.index.duplicated(keep="last")]
    grid = pd.date_range(s.index.min(), s.index.max(), freq="h")
    return s.reindex(grid).interpolate(method="time").ffill().bfill()


def _ratio(value: float, baseline: float) -> float:
    """``value / baseline``; 1.0 when both are 0 (a perfect naive forecast, matched)."""
    if baseline > 0:
        return value / baseline
    return 1.0 if value == 0 else float("inf")


def _metric_key(service: str) -> str:
    # MLflow metric names allow letters, digits, _ - . / and space.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", service)


def backtest_summary(model: ForecastModel) -> tuple[dict[str, str], dict[str, float]]:
    """Which candidate serves each service, and every candidate's backtest score.

    Params ``chosen.<service>``; metrics ``backtest_relative_mae`` (mean over services of
    the chosen candidate's), ``backtest_relative_mae.<candidate>`` (mean over the services
    it was scored on) and ``chosen_services.<candidate>``.
    """
    rows = model.candidates
    params = {f"chosen.{_metric_key(s)}": model.kind(s) for s in model.services}
    metrics: dict[str, float] = {}
    chosen = [r["relative_mae"] for r in rows if r["chosen"] and r["relative_mae"] is not None]
    if chosen:
        metrics["backtest_relative_mae"] = float(np.mean(chosen))
    for name in fc.CANDIDATES:
        scored = [r["relative_mae"] for r in rows if r["candidate"] == name and r["folds"]]
        if scored:
            metrics[f"backtest_relative_mae.{name}"] = float(np.mean(scored))
        count = sum(1 for s in model.services if model.kind(s) == name)
        metrics[f"chosen_services.{name}"] = float(count)
    return params, metrics

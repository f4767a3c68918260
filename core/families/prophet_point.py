"""Prophet's point forecast in numpy, for the forecaster's serving fast path.

``Prophet.predict`` builds several DataFrames per call (about 20 ms for one hour); the point
forecast is a piecewise-linear trend times (1 + seasonal terms) plus additive terms, which
:class:`PointForecast` evaluates from the fitted parameters with the same float operations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


class PointForecast:
    """Prophet's ``yhat`` for one fitted model, computed with numpy from its parameters.

    It mirrors ``Prophet.predict`` (``setup_dataframe``, ``predict_trend``,
    ``fourier_series``, ``make_holiday_features``, ``predict_seasonal_components``) step by
    step with the same operations in the same order, for what this family fits: linear
    growth, Fourier seasonalities without conditions, one holiday name without windows, no
    extra regressors. :meth:`of` returns None for anything else, and the caller uses Prophet.
    """

    def __init__(self, prophet: Any, holiday_days: np.ndarray) -> None:
        self.prophet = prophet
        self.start = pd.Timestamp(prophet.start).as_unit("ns").to_datetime64()
        self.t_scale = float(pd.Timedelta(prophet.t_scale).as_unit("ns").value)
        self.floor = 0.0 if prophet.scaling == "absmax" else float(prophet.y_min)
        self.holiday_days = holiday_days
        self.k = np.nanmean(prophet.params["k"])
        self.m = np.nanmean(prophet.params["m"])
        self.deltas = np.nanmean(prophet.params["delta"], axis=0)
        # Which feature columns make up each combined term, as Prophet lays them out.
        probe = pd.DataFrame({"ds": pd.to_datetime(["2000-01-01"]).as_unit("ns")})
        probe["t"] = 0.0
        features, _, component_cols, _ = prophet.make_all_seasonality_features(probe)
        self.columns = list(features.columns)
        self.betas = {
            term: prophet.params["beta"] * component_cols[term].to_numpy()
            for term in ("additive_terms", "multiplicative_terms")
        }
        self.additive = set(prophet.component_modes["additive"])

    @classmethod
    def of(cls, prophet: Any, holiday_dates: list[str], holiday: str) -> PointForecast | None:
        """The point forecast of ``prophet``, or None where it uses what this does not cover.

        Args:
            prophet: a fitted ``Prophet``.
            holiday_dates: the calendar the model was trained with (``YYYY-MM-DD``).
            holiday: the one holiday name the model may have learnt.
        """
        holidays = prophet.holidays
        covered = (
            prophet.growth == "linear"
            and not prophet.extra_regressors
            and prophet.country_holidays is None
            and prophet.scaling in ("absmax", "minmax")
            and all(p["condition_name"] is None for p in prophet.seasonalities.values())
            and (
                holidays is None
                or (
                    set(holidays.columns) == {"holiday", "ds"}
                    and set(holidays["holiday"]) == {holiday}
                    and prophet.train_holiday_names is not None
                    and list(prophet.train_holiday_names) == [holiday]
                )
            )
        )
        if not covered:
            return None
        days = np.array(sorted(holiday_dates) if holidays is not None else [], "datetime64[D]")
        return cls(prophet, days.astype("datetime64[ns]"))

    def _features(self, ds: np.ndarray) -> np.ndarray:
        """The seasonal feature matrix of ``ds`` (sorted, unique), Prophet's columns in order."""
        # fourier_series: seconds since the epoch as asi8 / 10**9, in days, times 2 pi.
        t = ds.astype("int64") / 10**9 / (24 * 60 * 60)
        x_t = np.pi * 2 * t
        blocks = []
        for name, props in self.prophet.seasonalities.items():
            order = props["fourier_order"]
            block = np.empty((len(ds), 2 * order))
            for i in range(order):
                c = (i + 1) / props["period"] * x_t
                block[:, 2 * i] = np.sin(c)
                block[:, 2 * i + 1] = np.cos(c)
            blocks.append((name, block))
        # Column-major, as DataFrame.values hands it to Prophet's matmul: BLAS sums in another
        # order for a row-major matrix, and the last bit of the forecast would differ.
        matrix = np.empty((len(ds), len(self.columns)), order="F")
        at = 0
        for _name, block in blocks:
            matrix[:, at : at + block.shape[1]] = block
            at += block.shape[1]
        if at < len(self.columns):  # the holiday column: 1.0 on the calendar's dates
            days = ds.astype("datetime64[D]").astype("datetime64[ns]")
            matrix[:, at] = np.isin(days, self.holiday_days).astype("float64")
            at += 1
        if at != len(self.columns):
            raise RuntimeError(f"built {at} seasonal features for {len(self.columns)} columns")
        return matrix

    def yhat(self, ds: np.ndarray) -> np.ndarray:
        """``Prophet.predict(ds)['yhat']`` for sorted, unique naive ``datetime64[ns]`` values."""
        t = (ds - self.start).astype("int64") / self.t_scale
        trend = self.prophet.piecewise_linear(
            t, self.deltas, self.k, self.m, self.prophet.changepoints_t
        )
        trend = trend * float(self.prophet.y_scale) + self.floor
        x = self._features(ds)
        terms = {}
        for term, beta in self.betas.items():
            comp = np.matmul(x, beta.transpose())
            if term in self.additive:
                comp *= self.prophet.y_scale
            terms[term] = np.nanmean(comp, axis=1)
        return trend * (1 + terms["multiplicative_terms"]) + terms["additive_terms"]

    def forecast(self, ts: np.ndarray) -> np.ndarray:
        """The clipped forecast at ``ts`` (any order, duplicates), as the forecaster's own."""
        unique = np.unique(ts)
        yhat = self.yhat(unique)
        return np.clip(yhat[np.searchsorted(unique, ts)], 0.0, None)

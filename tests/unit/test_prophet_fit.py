"""Prophet's backend with the orjson data file fits exactly what stock Prophet fits."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.families.prophet_fit import OrjsonBackend

pytest.importorskip("prophet")


def _series() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    ts = pd.date_range("2026-01-05", periods=21 * 24, freq="h")
    hour, day = ts.hour.to_numpy(), ts.day_of_week.to_numpy()
    y = 100 * (1 + 0.5 * np.sin(2 * np.pi * hour / 24)) * (1 + 0.2 * (day < 5))
    return pd.DataFrame({"ds": ts, "y": y + rng.normal(0, 5, len(ts))})


def _fit(frame: pd.DataFrame, fast: bool, **kwargs: Any) -> Any:
    from prophet import Prophet

    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
    holidays = pd.DataFrame({"holiday": "holiday", "ds": pd.to_datetime(["2026-01-19"])})
    model = Prophet(
        daily_seasonality=8,
        weekly_seasonality=6,
        yearly_seasonality=False,
        seasonality_mode="multiplicative",
        holidays=holidays,
        uncertainty_samples=0,
    )
    if fast:
        model.stan_backend = OrjsonBackend()
    return model.fit(frame, seed=11, **kwargs)


def test_the_fit_is_stock_prophets_cold_and_warm_started() -> None:
    frame = _series()
    stock, fast = _fit(frame, fast=False), _fit(frame, fast=True)
    assert set(fast.params) == set(stock.params)
    for name, value in stock.params.items():
        np.testing.assert_array_equal(fast.params[name], value, err_msg=name)

    # A warm start (the backtest's next fold) goes through the same inits.
    init = {k: stock.params[k][0] for k in ("k", "m", "sigma_obs", "delta", "beta")}
    longer = pd.concat([frame, frame.assign(ds=frame["ds"] + pd.Timedelta(days=21))])
    stock2 = _fit(longer, fast=False, init=init)
    fast2 = _fit(longer, fast=True, init=init)
    for name, value in stock2.params.items():
        np.testing.assert_array_equal(fast2.params[name], value, err_msg=name)
    np.testing.assert_array_equal(
        fast2.predict(longer.tail(48))["yhat"], stock2.predict(longer.tail(48))["yhat"]
    )


def test_the_data_file_is_removed_after_the_fit_and_after_a_failure() -> None:
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("prophet-*.json"))
    _fit(_series(), fast=True)
    assert set(tmp.glob("prophet-*.json")) == before

    # cmdstanpy refuses the call after the data file is written.
    with pytest.raises(ValueError, match=r"(?i)algorithm"):
        _fit(_series(), fast=True, algorithm="no-such-optimiser")
    assert set(tmp.glob("prophet-*.json")) == before

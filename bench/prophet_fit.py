"""One Prophet fit: stock Prophet against the forecaster's orjson data file (same parameters?).

Fits the same eight weeks of hourly synthetic traffic (Fourier orders 20/20, multiplicative,
as shipped) with Prophet's own cmdstanpy backend and with
:class:`core.families.prophet_fit.OrjsonBackend`, interleaved ``--fits`` times each, checks the
fitted parameters are identical and prints the median seconds per fit and their ratio.

Run: ``.venv/bin/python bench/prophet_fit.py``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.families.prophet_fit import OrjsonBackend  # noqa: E402


def fit(frame: pd.DataFrame, fast: bool) -> Any:
    """One fit of the shipped Prophet settings, stock or with the orjson data file."""
    from prophet import Prophet

    model = Prophet(
        seasonality_mode="multiplicative",
        daily_seasonality=20,
        weekly_seasonality=20,
        yearly_seasonality=False,
        uncertainty_samples=0,
    )
    if fast:
        model.stan_backend = OrjsonBackend()
    return model.fit(frame, seed=1)


def main() -> None:
    """Time both ways and print one line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--fits", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("cmdstanpy").disabled = True
    rng = np.random.default_rng(0)
    ts = pd.date_range("2026-01-05", periods=56 * 24, freq="h")
    hour, day = ts.hour.to_numpy(), ts.day_of_week.to_numpy()
    y = 100 * (1 + 0.5 * np.sin(2 * np.pi * hour / 24)) * (1 + 0.2 * (day < 5))
    frame = pd.DataFrame({"ds": ts, "y": y + rng.normal(0, 5, len(ts))})
    stock, fast = fit(frame, False), fit(frame, True)  # also the warm-up
    same = all(np.array_equal(stock.params[k], fast.params[k]) for k in stock.params)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.fits):
        for way in (False, True):
            started = time.perf_counter()
            fit(frame, way)
            seconds[way].append(time.perf_counter() - started)
    slow, quick = statistics.median(seconds[False]), statistics.median(seconds[True])
    sys.stdout.write(
        f"stock {slow:.3f} s, orjson data file {quick:.3f} s per fit (median of {args.fits}); "
        f"ratio {slow / quick:.2f}; identical parameters: {same}\n"
    )


if __name__ == "__main__":
    main()

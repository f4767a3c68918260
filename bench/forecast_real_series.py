"""Relative MAE and training time of each forecasting candidate on the real series in tests/data.

For each series (one service), the window is split as the retrain flow splits it (the newest
7 whole days are the holdout, the 56 days before them the training window), and the family is
trained once per candidate alone and once with every candidate (the backtest chooses), then
scored on the holdout with the family's own ``evaluate``. ``relative_mae`` is the forecast's
MAE over the weekly seasonal-naive forecast's MAE on the same hours (below 1 beats it).

Run: ``.venv/bin/python bench/forecast_real_series.py`` (prints a Markdown table).
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.families import get_family  # noqa: E402
from core.families.forecast_candidates import CANDIDATES  # noqa: E402

SERIES = {"taylor": "taylor_hourly.csv", "m4_h410": "m4_h410_hourly.csv"}
log = logging.getLogger("bench")


def load(name: str) -> pd.DataFrame:
    """One real series as ``service_traffic`` rows (one service, no holidays flagged)."""
    frame = pd.read_csv(ROOT / "tests" / "data" / SERIES[name], parse_dates=["ts"])
    return frame.assign(service=name, is_holiday=0)[["service", "ts", "requests", "is_holiday"]]


def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The retrain flow's split: 7 holdout days, 56 training days before them."""
    end = frame["ts"].max().floor("D") + pd.Timedelta(days=1)
    cutoff = end - pd.Timedelta(days=7)
    start = cutoff - pd.Timedelta(days=56)
    train = frame[(frame["ts"] >= start) & (frame["ts"] < cutoff)].reset_index(drop=True)
    return train, frame[frame["ts"] >= cutoff].reset_index(drop=True)


def main() -> None:
    """Print one row per series and candidate (and the backtest's choice)."""
    family = get_family("traffic_forecaster")
    rows = [
        "| series | candidates | chosen | holdout relative MAE | train s |",
        "|---|---|---|---|---|",
    ]
    for name in SERIES:
        train, holdout = split(load(name))
        for candidates in [[c] for c in CANDIDATES] + [list(CANDIDATES)]:
            params = family.Params(candidates=candidates)
            started = time.perf_counter()
            model = family.train(train, params, 42)
            seconds = time.perf_counter() - started
            metrics = family.evaluate(model, holdout, train).metrics
            label = "all (backtest)" if len(candidates) > 1 else candidates[0]
            rows.append(
                f"| {name} | {label} | {model.kind(name)} | {metrics['relative_mae']:.3f} "
                f"| {seconds:.2f} |"
            )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    rows.append(f"\n{platform.machine()}, {platform.python_version()}, {stamp}")
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()

"""Relative MAE and training time of each forecasting candidate on the real series in tests/data.

For each series (one service), the window is split as the retrain flow splits it (7 whole
days of holdout, the 56 days before them the training window), with the holdout the last,
the second-last and the third-last week (rolling origin); each time the family is trained
once per candidate alone and once with every candidate (the backtest chooses), then scored on
the holdout with the family's own ``evaluate``. ``relative_mae`` is the forecast's
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
from core.families.forecast_candidates import DEFAULT_CANDIDATES, MSTL, MSTL_NAIVE, TOP_TWO  # noqa: E402

SERIES = {"taylor": "taylor_hourly.csv", "m4_h410": "m4_h410_hourly.csv"}
log = logging.getLogger("bench")


def load(name: str) -> pd.DataFrame:
    """One real series as ``service_traffic`` rows (one service, no holidays flagged)."""
    frame = pd.read_csv(ROOT / "tests" / "data" / SERIES[name], parse_dates=["ts"])
    return frame.assign(service=name, is_holiday=0)[["service", "ts", "requests", "is_holiday"]]


def split(frame: pd.DataFrame, back: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The retrain flow's split with the holdout ``back`` weeks from the end (1: the last).

    7 holdout days and the 56 days before them, as ``configs/models/traffic_forecaster.yaml``.
    """
    end = frame["ts"].max().floor("D") + pd.Timedelta(days=1)
    cutoff = end - pd.Timedelta(weeks=back)
    start = cutoff - pd.Timedelta(days=56)
    train = frame[(frame["ts"] >= start) & (frame["ts"] < cutoff)].reset_index(drop=True)
    week = (frame["ts"] >= cutoff) & (frame["ts"] < cutoff + pd.Timedelta(weeks=1))
    return train, frame[week].reset_index(drop=True)


def main() -> None:
    """Print one row per series and candidate (and the backtest's choice), three weeks each."""
    family = get_family("traffic_forecaster")
    rows = [
        "| series | candidates | chosen (last, 2nd, 3rd week) "
        "| relative MAE last week | 2nd | 3rd | mean | train s (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SERIES:
        frame = load(name)
        alone = [c for c in DEFAULT_CANDIDATES if c != TOP_TWO] + [MSTL, MSTL_NAIVE]
        for candidates in [[c] for c in alone] + [list(DEFAULT_CANDIDATES)]:
            params = family.Params(candidates=candidates)
            scores, seconds, chosen = [], [], []
            for back in (1, 2, 3):
                train, holdout = split(frame, back)
                started = time.perf_counter()
                model = family.train(train, params, 42)
                seconds.append(time.perf_counter() - started)
                scores.append(family.evaluate(model, holdout, train).metrics["relative_mae"])
                chosen.append(model.kind(name))
            label = "all (backtest)" if len(candidates) > 1 else candidates[0]
            cells = " | ".join(f"{x:.3f}" for x in scores)
            rows.append(
                f"| {name} | {label} | {', '.join(chosen)} | {cells} "
                f"| {sum(scores) / 3:.3f} | {sum(seconds) / 3:.2f} |"
            )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    rows.append(f"\n{platform.machine()}, Python {platform.python_version()}, {stamp}")
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()

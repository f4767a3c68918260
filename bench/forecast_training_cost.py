"""Training cost and accuracy on synthetic services: the chosen forecaster vs Prophet alone.

Generates ``--services`` services of the project's synthetic ``service_traffic`` (63 days),
splits them as the retrain flow does (7 holdout days, 56 training days) and trains the
traffic forecaster on the same window three ways:

* Prophet alone as it was before candidates: stock Prophet (cmdstanpy's own data writer), one
  fit per service, Fourier orders 4/10, no backtest;
* Prophet alone at the settings this project ships (orders 20/20, multiplicative), stock;
* as configured now (configs/models/traffic_forecaster.yaml: backtest over the candidates,
  then one refit of the winner, Prophet through :mod:`core.families.prophet_fit`).

``--rounds N`` repeats the three, interleaved, and reports each one's median seconds (the
machine is shared: ratios within one run are what mean anything). Prints seconds, the ratios,
the holdout relative MAE of each and which candidates were chosen.

Run: ``.venv/bin/python bench/forecast_training_cost.py --services 100``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import synth  # noqa: E402
from core.families import get_family  # noqa: E402


def stock_prophet() -> AbstractContextManager[object]:
    """Fit Prophet with its own backend (cmdstanpy's data writer) while this is entered."""
    from unittest import mock

    from prophet.models import CmdStanPyBackend

    return mock.patch("core.families.prophet_fit.OrjsonBackend", CmdStanPyBackend)


def main() -> None:
    """Train both ways and print one Markdown table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    frame = synth.generate(
        "service_traffic", datetime(2026, 1, 5), 63, n_services=args.services, seed=42
    )
    cutoff = frame["ts"].max().floor("D") + pd.Timedelta(days=1) - pd.Timedelta(days=7)
    train, holdout = frame[frame["ts"] < cutoff], frame[frame["ts"] >= cutoff]
    family = get_family("traffic_forecaster")
    config = yaml.safe_load((ROOT / "configs/models/traffic_forecaster.yaml").read_text())
    shipped = family.Params.model_validate(config["params"])
    alone = {"candidates": ["prophet"], "backtest_folds": 0}
    ways = {
        "Prophet alone, orders 4/10, stock Prophet (before)": (
            family.Params.model_validate(
                shipped.model_dump() | alone | {"daily_order": 4, "weekly_order": 10}
            ),
            stock_prophet,
        ),
        "Prophet alone, shipped settings (orders 20/20), stock Prophet": (
            family.Params.model_validate(shipped.model_dump() | alone),
            stock_prophet,
        ),
        "chosen by backtest (now)": (shipped, nullcontext),
    }
    # Imports (statsmodels, cmdstanpy) and first calls are paid here, not by the first way timed.
    one = train[train["service"] == train["service"].iloc[0]]
    for params, patch in ways.values():
        with patch():
            family.train(one, params, 42)
    seconds: dict[str, list[float]] = {label: [] for label in ways}
    rows: dict[str, str] = {}
    for _ in range(args.rounds):
        for label, (params, patch) in ways.items():
            with patch():
                started = time.perf_counter()
                model = family.train(train, params, 42)
                seconds[label].append(time.perf_counter() - started)
            metrics = family.evaluate(model, holdout, train).metrics
            chosen = Counter(model.kind(s) for s in model.services)
            rows[label] = (
                f"{metrics['relative_mae']:.3f} "
                f"| {', '.join(f'{k} {v}' for k, v in sorted(chosen.items()))} |"
            )
    median = {label: statistics.median(v) for label, v in seconds.items()}
    lines = ["| training | seconds (median) | holdout relative MAE | chosen |", "|---|---|---|---|"]
    lines += [f"| {label} | {median[label]:.1f} | {rows[label]}" for label in ways]
    before, shipped_alone, now = median.values()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(
        f"\n{args.services} services, {args.rounds} round(s); now / Prophet alone before: "
        f"{now / before:.2f}; now / Prophet alone at the shipped settings: "
        f"{now / shipped_alone:.2f}"
    )
    lines.append(f"{platform.machine()}, Python {platform.python_version()}, {stamp}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

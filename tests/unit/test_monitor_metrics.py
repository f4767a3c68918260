"""The monitor's results as Prometheus metrics in node_exporter's textfile.

The push to a real Pushgateway is in ``tests/integration/test_pushgateway.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.config import MonitorPolicy
from core.drift import FeatureDrift, Finding
from tasks.monitor import publish_monitor_metrics


def findings() -> list[Finding]:
    drift = FeatureDrift("requests", 0.31, 0.4, 1e-6, True, 10.0, 14.0)
    steady = FeatureDrift("errors", 0.01, 0.02, 0.8, False, 1.0, 1.0)
    return [
        Finding(
            "abuse_detector",
            "v3",
            champion_age_days=20.5,
            features=[drift, steady],
            live_metrics={"precision_at_k": 0.4},
            reasons=["drift in requests"],
        ),
        Finding("limit_optimiser", "v7", champion_age_days=1.0, features=[steady]),
    ]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if k not in ("job", "instance"))): (
            s.value
        )
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_textfile_holds_drift_live_error_and_age_per_model(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "mlops_monitor.prom"
    where = publish_monitor_metrics.fn(findings(), MonitorPolicy(textfile=path))
    assert where == [str(path)]
    got = samples(path.read_text())
    abuse = {("model", "abuse_detector")}
    assert got[("mlops_monitor_feature_psi", frozenset(abuse | {("feature", "requests")}))] == 0.31
    assert got[("mlops_monitor_feature_drifted", frozenset(abuse | {("feature", "errors")}))] == 0
    assert got[("mlops_monitor_drifted_features", frozenset(abuse))] == 1
    assert got[("mlops_monitor_drifted_features", frozenset({("model", "limit_optimiser")}))] == 0
    live = frozenset(abuse | {("metric", "precision_at_k")})
    assert got[("mlops_monitor_live_metric", live)] == 0.4
    assert got[("mlops_monitor_champion_age_days", frozenset(abuse))] == 20.5
    assert got[("mlops_monitor_retrain_wanted", frozenset(abuse))] == 1
    assert abs(got[("mlops_monitor_last_run_timestamp_seconds", frozenset())] - time.time()) < 60
    # No temporary file is left beside it for the collector to trip on.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_textfile_the_collector_would_never_read_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\*\.prom"):
        publish_monitor_metrics.fn(findings(), MonitorPolicy(textfile=tmp_path / "monitor.txt"))
    assert not list(tmp_path.iterdir())

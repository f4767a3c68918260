"""The Prometheus files in ``deployments/prometheus``: rendered from the configs, and valid.

``promtool`` (Debian's ``prometheus`` package, installed by ``.ci/run``) checks the scrape
config and the rules, and runs the rule unit tests (``rules_test.yml``): each alert fires on
the series that should fire it, after its ``for:``, and on no other.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.alert_rules import render_rules
from core.config import PlatformConfig, load_platform_config

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deployments" / "prometheus"


def test_the_committed_rules_are_the_rendering_of_the_configs() -> None:
    # A threshold changed in configs/platform.yaml without re-running the command fails here.
    committed = (PROMETHEUS / "rules.yml").read_text()
    assert committed == render_rules(load_platform_config(ROOT / "configs")), (
        "run: mlops prometheus-rules > deployments/prometheus/rules.yml"
    )


def test_thresholds_come_from_the_config() -> None:
    platform = PlatformConfig.model_validate(
        {
            "monitor": {
                "max_champion_age_days": 30,
                "min_drifted_features": 3,
                "alerts": {"p99_latency_seconds": 0.25, "error_rate": 0.01, "for_minutes": 2},
            }
        }
    )
    exprs = {
        r["alert"]: r["expr"] for r in yaml.safe_load(render_rules(platform))["groups"][0]["rules"]
    }
    assert exprs["ModelP99LatencyHigh"].endswith("_bucket[2m]))) > 0.25")
    assert exprs["ModelErrorRateHigh"].endswith("(rate(mlops_requests_total[2m])) > 0.01")
    assert exprs["ChampionTooOld"] == "mlops_monitor_champion_age_days > 30"
    assert exprs["ModelDrift"] == "mlops_monitor_drifted_features >= 3"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "rules.yml"),
        ("test", "rules", "rules_test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_the_config_and_the_rules_pass_their_tests(args: tuple[str, ...]) -> None:
    done = _promtool(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr

"""The Prometheus files in ``deployments/prometheus``: rendered from the configs, and valid.

``promtool`` (Debian's ``prometheus`` package, installed by ``.ci/run``) checks the scrape
config and the rules, and runs the rule unit tests (``rules_test.yml``): each alert fires on
the series that should fire it, after its ``for:``, and on no other.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.alert_rules import render_rules
from core.config import ModelConfig, PlatformConfig, load_model_configs, load_platform_config

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deployments" / "prometheus"


def test_the_committed_rules_are_the_rendering_of_the_configs() -> None:
    # A threshold changed in configs/ without re-running the command fails here.
    committed = (PROMETHEUS / "rules.yml").read_text()
    configs = ROOT / "configs"
    assert committed == render_rules(load_platform_config(configs), load_model_configs(configs)), (
        "run: mlops prometheus-rules > deployments/prometheus/rules.yml"
    )


def _exprs(platform: PlatformConfig, models: list[ModelConfig]) -> dict[tuple[str, str], str]:
    """(alert, the rule's "for") -> expr, for the rendered rules."""
    return {
        (r["alert"], r.get("for", "")): r["expr"]
        for r in yaml.safe_load(render_rules(platform, models))["groups"][0]["rules"]
    }


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
    exprs = _exprs(platform, [])
    assert exprs[("ModelP99LatencyHigh", "2m")].endswith('_bucket{model!=""}[2m]))) > 0.25')
    assert exprs[("ModelErrorRateHigh", "2m")].endswith(
        '(rate(mlops_requests_total{model!=""}[2m])) > 0.01'
    )
    assert exprs[("ChampionTooOld", "")] == "mlops_monitor_champion_age_days > 30"
    assert exprs[("ModelDrift", "")] == "mlops_monitor_drifted_features >= 3"


def test_each_model_alerts_on_the_thresholds_of_its_cloudwatch_alarms() -> None:
    # The numbers in configs/models/*.yaml that roll a SageMaker update back page here too.
    models = load_model_configs(ROOT / "configs")
    rules = yaml.safe_load(render_rules(PlatformConfig(), models))["groups"][0]["rules"]
    for cfg in models:
        alarms = cfg.endpoint.deployment.alarms
        mine = [r for r in rules if f'model="{cfg.name}"' in r["expr"]]
        assert {r["alert"] for r in mine} == {"ModelP99LatencyHigh", "ModelErrorRateHigh"}
        held = alarms.period_seconds * alarms.evaluation_periods
        for rule in mine:
            assert rule["for"] == f"{held // 60}m"
            threshold = float(rule["expr"].rsplit(">", 1)[1])
            expected = (
                alarms.p99_latency_ms / 1000 if "Latency" in rule["alert"] else alarms.error_rate
            )
            assert threshold == pytest.approx(expected), rule
    # Every other model gets the platform defaults; none is judged by two thresholds.
    defaults = [r for r in rules if "model!~" in r["expr"]]
    assert len(defaults) == 2
    for cfg in models:
        assert cfg.name in defaults[0]["expr"] and cfg.name in defaults[1]["expr"]


def test_model_names_are_matched_literally_not_as_regexes(tmp_path: Path) -> None:
    # Prometheus reads `model!~"..."` as an RE2 regex: unescaped, a configured "a.b" would also
    # leave an unconfigured "axb" out of the default rules, and "e(f" would break the file.
    base = load_model_configs(ROOT / "configs")[0]

    def render(*names: str) -> str:
        return render_rules(PlatformConfig(), [base.model_copy(update={"name": n}) for n in names])

    rules = yaml.safe_load(render("a.b", "c_d"))["groups"][0]["rules"]
    (default,) = [r for r in rules if r["alert"] == "ModelErrorRateHigh" and "!~" in r["expr"]]
    quoted = re.search(r'model!~("(?:[^"\\]|\\.)*")', default["expr"])
    assert quoted is not None, default["expr"]
    # A PromQL string unquotes as JSON does here; Python's re and RE2 agree on escaped
    # metacharacters, and Prometheus anchors the regex at both ends (fullmatch).
    others = re.compile(json.loads(quoted.group(1)))
    assert others.fullmatch("a.b") and others.fullmatch("c_d")
    assert not others.fullmatch("axb") and not others.fullmatch("limit_optimiser")
    # Each name's own rules select it by equality; promtool (RE2 itself) accepts names that
    # would break an unescaped regex or string.
    assert {r["labels"]["thresholds"] for r in rules if 'model="a.b"' in r["expr"]} == {"a.b"}
    (tmp_path / "rules.yml").write_text(render("e(f", 'g"h'))
    done = _promtool("check", "rules", str(tmp_path / "rules.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


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

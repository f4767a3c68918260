"""The monitor after a real retrain, against a temporary Prefect API with the retrain deployment.

The deployment is registered on the test API without a work pool: the monitor's request creates
a real flow run of it (Scheduled, nobody runs it), whose parameters the test reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.source import seed_source
from core.settings import load_settings
from flows.monitor import monitor
from flows.retrain import retrain
from tests.fixtures.home import SMALL_SOURCE, project_configs

DEPLOYMENT = "retrain/monitor-test"


def retrain_runs() -> list[Any]:
    """Flow runs of the test's retrain deployment, oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=50,
        )
    return list(runs)


def test_monitor_triggers_a_retrain_only_on_drift(mlops_home: Path) -> None:
    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
    assert retrain(return_state=True).is_completed()
    retrain.to_deployment(name=DEPLOYMENT.split("/")[1]).apply()

    # 1. No new data: the recent week is the champion's own holdout. Nothing is triggered.
    quiet = monitor(retrain_deployment=DEPLOYMENT)
    assert quiet["triggered"] == [] and quiet["request"] is None
    for finding in quiet["findings"]:
        assert finding["champion_version"] == "v1"
        assert finding["features"], finding  # every model had columns to compare
        assert not finding["drifted"], finding
    assert retrain_runs() == []

    # 2. A drifted week arrives: one retrain run is requested, its reason names the columns.
    seed_source(settings.source_url, append_weeks=1, drift=0.8, **SMALL_SOURCE)
    loud = monitor(retrain_deployment=DEPLOYMENT)
    assert loud["triggered"], loud["findings"]
    assert loud["request"]["requested"] is True
    (run,) = retrain_runs()
    assert str(run.id) == loud["request"]["flow_run_id"]
    assert run.parameters["models"] == loud["triggered"]
    reason = run.parameters["reason"]
    for finding in loud["findings"]:
        if finding["drifted"]:
            assert f"{finding['model']}: drift in {', '.join(finding['drifted'])}" in reason
    # The generator's drift raises error rates for clients; the monitor must see that.
    by_model = {f["model"]: f for f in loud["findings"]}
    assert "error_rate" in by_model["limit_optimiser"]["drifted"]
    assert "triggered-by-monitor" in run.tags


def test_monitor_without_the_deployment_says_so_and_completes(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The embedded API has no deployments: the monitor reports, it does not crash.
    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
    assert retrain(models=["limit_optimiser"], return_state=True).is_completed()
    seed_source(settings.source_url, append_weeks=1, drift=0.8, **SMALL_SOURCE)

    state = monitor(
        models=["limit_optimiser"], retrain_deployment="retrain/nowhere", return_state=True
    )
    assert state.is_completed()
    result = state.result()
    assert result["triggered"] == ["limit_optimiser"]
    assert result["request"]["requested"] is False
    assert "not registered" in result["request"]["note"]
    assert "mlops retrain --model limit_optimiser" in result["request"]["note"]

    # Report only: no request at all. With monitor.textfile configured, the results are also
    # written for node_exporter, the drifted columns counted for the alert rule.
    textfile = tmp_path / "node-exporter" / "mlops_monitor.prom"
    project_configs(
        monkeypatch,
        tmp_path / "configs",
        {"platform.yaml": {"  recent_days: 7\n": f"  recent_days: 7\n  textfile: {textfile}\n"}},
    )
    report = monitor(models=["limit_optimiser"], retrain_deployment=None)
    assert report["triggered"] == ["limit_optimiser"] and report["request"] is None
    assert report["metrics"] == [str(textfile)]
    drifted = len(report["findings"][0]["drifted"])
    assert f'mlops_monitor_drifted_features{{model="limit_optimiser"}} {drifted:.1f}' in (
        textfile.read_text()
    )
    assert drifted >= 1


def test_monitor_without_a_champion_asks_for_nothing(mlops_home: Path) -> None:
    seed_source(load_settings().source_url, weeks=3, **SMALL_SOURCE)
    result = monitor(retrain_deployment="retrain/nowhere")
    assert result["triggered"] == []
    assert all("no champion" in f["notes"][0] for f in result["findings"])

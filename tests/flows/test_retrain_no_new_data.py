"""``mlops retrain`` with nothing new answers from the source alone; with a new week, it runs.

The weekly cycle (``test_retrain.py``) shows the flow skipping a model without new rows. Here
the command a user types finds that out before it imports Prefect: it prints the same note per
model, exits 0, and neither imports Prefect, MLflow or Great Expectations (read from the
child's ``-X importtime`` trace) nor starts a flow run (read from the session's Prefect API,
which the child is pointed at, so a run it started would be recorded there).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from adapters.source import seed_source
from cli import main
from core.outcome import NO_NEW_DATA
from core.settings import PROJECT_ROOT, load_settings
from flows.retrain import retrain
from tests.fixtures.home import SMALL_SOURCE

MODELS = ["abuse_detector", "limit_optimiser", "traffic_forecaster"]
HEAVY = {"prefect", "mlflow", "great_expectations"}
MLOPS = [sys.executable, "-X", "importtime", "-c", "from cli import main; main()"]
"""``mlops`` in a child that traces every module it imports (to stderr)."""


def retrain_reasons() -> list[str]:
    """The ``reason`` parameter of every ``retrain`` flow run the Prefect API recorded."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])), limit=200
        )
    return [str(run.parameters.get("reason")) for run in runs]


def test_no_new_data_needs_no_prefect_and_a_new_week_runs_the_flow(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import get_current_settings

    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
    first = retrain(reason="first", return_state=True)
    assert first.is_completed(), first.message
    api = str(get_current_settings().api.url)

    # 1. Nothing new since that run: the command as a user runs it, in a process of its own.
    idle = f"idle-{uuid.uuid4().hex[:8]}"
    child = subprocess.run(
        [*MLOPS, "retrain", "--reason", idle],
        env={**os.environ, "PREFECT_API_URL": api},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    trace = [line for line in child.stderr.splitlines() if line.startswith("import time:")]
    errors = "\n".join(line for line in child.stderr.splitlines() if line not in trace)
    assert child.returncode == 0, child.stdout + errors
    for model in MODELS:  # one row per model: its name, skipped, the flow's own note
        rows = [line for line in child.stdout.splitlines() if model in line]
        assert any("skipped" in r and NO_NEW_DATA in r for r in rows), child.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in trace}
    assert {"sqlalchemy", "pyarrow"} <= imported  # it asked the source and read the store
    assert not imported & HEAVY, sorted(imported & HEAVY)
    assert idle not in retrain_reasons()

    # 2. A week arrives: the same command runs the flow (here in this process, whose Prefect is
    # already imported), which exports, trains and gates the model.
    seed_source(settings.source_url, append_weeks=1, **SMALL_SOURCE)
    for name, value in {
        "PREFECT_API_URL": api,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }.items():  # what the command would otherwise set for the rest of the session
        monkeypatch.setenv(name, value)
    weekly = f"week-{uuid.uuid4().hex[:8]}"
    argv = ["mlops", "retrain", "-m", "limit_optimiser", "--reason", weekly]
    monkeypatch.setattr(sys, "argv", argv)
    capfd.readouterr()
    try:
        main()
        code: object = 0
    except SystemExit as exit_info:
        code = exit_info.code
    output = capfd.readouterr().out
    assert code in (0, None), output
    assert weekly in retrain_reasons()
    row = next(line for line in output.splitlines() if "limit_optimiser" in line)
    assert "promoted" in row or "rejected" in row, output

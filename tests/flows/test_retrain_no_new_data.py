"""``mlops retrain`` with nothing new answers from the source alone; a new week needs the flow.

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

from adapters.snapshots import record_validation
from adapters.source import seed_source
from adapters.store import store_from_settings
from cli.models import _nothing_new
from core.config import load_model_configs
from core.outcome import NO_NEW_DATA
from core.settings import PROJECT_ROOT, load_settings
from tasks.export import export_new_data
from tests.fixtures.home import SMALL_SOURCE

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


def test_no_new_data_needs_no_prefect_and_a_new_week_needs_the_flow(mlops_home: Path) -> None:
    from prefect.settings import get_current_settings

    settings = load_settings()
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)
    store = store_from_settings(settings)
    cfgs = load_model_configs(settings.config_dir)
    # What a retrain leaves for the check: each model's snapshot exported by the flow's export
    # task and accepted (validation's record). Training and validating three models (50 s
    # here) add nothing the check reads; the flow's own no-new-data path is test_retrain.py's.
    for cfg in cfgs:
        snapshot = export_new_data.fn(settings.source_url, store, cfg, 50_000, 1_000_000)
        assert snapshot is not None
        record_validation(store, cfg.dataset.name, snapshot.snapshot_id, {"success": True})
    api = str(get_current_settings().api.url)

    # 1. Nothing new: the command as a user runs it, in a process of its own.
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
    for cfg in cfgs:  # one row per model: its name, skipped, the flow's own note
        rows = [line for line in child.stdout.splitlines() if cfg.name in line]
        assert any("skipped" in r and NO_NEW_DATA in r for r in rows), child.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in trace}
    assert {"sqlalchemy", "pyarrow"} <= imported  # it asked the source and read the store
    assert not imported & HEAVY, sorted(imported & HEAVY)
    assert idle not in retrain_reasons()

    # 2. A week arrives: the same check now sends the command to the flow. The path after the
    # check is the one the command always took (its flow run with new data is what
    # tests/integration/test_secrets.py runs through `mlops retrain`); running it here again
    # would cost a model's whole retrain (10-20 s) for nothing this change touched.
    seed_source(settings.source_url, append_weeks=1, **SMALL_SOURCE)
    assert _nothing_new(settings, cfgs) is None
    assert _nothing_new(settings, [c for c in cfgs if c.name == "limit_optimiser"]) is None

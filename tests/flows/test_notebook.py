"""The example notebook runs top to bottom, and what it prints is what the tasks decided."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from core.config import load_model_configs
from core.settings import PROJECT_ROOT


def _printed(cell: nbformat.NotebookNode) -> list[str]:
    """The non-empty lines a code cell printed (its stdout; libraries log to stderr)."""
    outputs = cell.get("outputs", [])
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    return [line for line in text.splitlines() if line.strip()]


def test_notebook_runs_tasks_one_by_one_and_shows_the_gate_it_applied(mlops_home: Path) -> None:
    nb = nbformat.read(PROJECT_ROOT / "notebooks" / "retrain_step_by_step.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(PROJECT_ROOT)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup, _seed, export, train, gate = (_printed(c) for c in code)

    # The notebook's state went to the test's MLOPS_HOME, not the working directory.
    assert setup[0] == str(mlops_home.resolve())
    assert (mlops_home / "store" / "snapshots" / "client_limits").is_dir()
    assert export[0].startswith("new snapshot: ") and export[0] != "new snapshot: None"
    assert "expectations passed" in export[-1]

    # The challenger's metrics, then the champion's note: none yet on a fresh home.
    metrics = ast.literal_eval(train[0])
    assert train[1] == "no champion yet: floors only"

    # The gate printed one floor check per gated metric, and a verdict that follows from them
    # and the metrics printed above.
    (cfg,) = load_model_configs(PROJECT_ROOT / "configs", ["limit_optimiser"])
    verdict, *rows = gate
    checks = {row.split()[0]: (row.split()[1], row.split()[2]) for row in rows}
    assert set(checks) == set(cfg.gate.metrics)
    for name, policy in cfg.gate.metrics.items():
        rule, shown = checks[name]
        assert rule == "floor"
        value = metrics[name]
        passes = value <= policy.floor if policy.direction == "lower" else value >= policy.floor
        assert shown == ("ok" if passes else "FAIL"), (name, value, policy)
    all_ok = all(shown == "ok" for _, shown in checks.values())
    assert verdict == ("promote" if all_ok else "reject")

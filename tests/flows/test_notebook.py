"""The example notebook runs top to bottom: every task is callable outside a flow."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from core.settings import PROJECT_ROOT


def test_notebook_runs_tasks_one_by_one(mlops_home: Path) -> None:
    nb = nbformat.read(PROJECT_ROOT / "notebooks" / "retrain_step_by_step.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(PROJECT_ROOT)}}
    ).execute()
    outputs = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    # The notebook's state went to the test's MLOPS_HOME, not the working directory.
    assert str(mlops_home.resolve()) in outputs
    assert "expectations passed" in outputs
    assert "no champion yet" in outputs
    assert "promote" in outputs or "reject" in outputs
    assert (mlops_home / "store" / "snapshots" / "client_limits").is_dir()

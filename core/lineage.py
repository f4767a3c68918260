"""Lineage: where a model version came from (code, config, data, run)."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from core.config import ModelConfig
    from tasks.training import TrainingData


@cache
def code_version() -> str:
    """``git describe`` of the checkout (``-dirty`` when modified), else the package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        try:
            return f"intelli-rate-mlops=={version('intelli-rate-mlops')}"
        except PackageNotFoundError:
            return "unknown"


def flow_run_id() -> str:
    """The id of the Prefect flow run we are in, or ``"none"`` outside a flow."""
    from prefect.runtime import flow_run

    return str(flow_run.id or "none")


def describe_lineage(cfg: ModelConfig, data: TrainingData, reason: str) -> dict[str, str]:
    """Lineage of a training: snapshot and data hash, config hash, code version, flow run."""
    return {
        "snapshot_id": data.newest_snapshot,
        "snapshots": ",".join(data.snapshot_ids),
        "data_sha256": data.data_sha256,
        "config_hash": cfg.config_hash(),
        "code_version": code_version(),
        "flow_run_id": flow_run_id(),
        "holdout": f"{data.holdout_start}..{data.holdout_end}",
        "reason": reason,
    }

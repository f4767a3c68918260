"""Shared fixtures: an isolated MLOPS_HOME per test, and no leaking settings from the shell."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

_LEAKY = (
    "MLOPS_HOME",
    "MLOPS_DATABASE_URL",
    "MLOPS_STORE_URI",
    "MLOPS_KMS_KEY_ID",
    "MLOPS_CONFIG_DIR",
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "MLOPS_ENDPOINT_TARGET",
    "MLOPS_ENDPOINT_PORT",
    "MLOPS_ENDPOINT_HOST",
    "MLOPS_SAGEMAKER_ROLE_ARN",
    "MLOPS_SAGEMAKER_POLL_SECONDS",
    "MLOPS_SERVING_IMAGE",
)


@pytest.fixture
def mlops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ``MLOPS_HOME`` with every embedded default inside it."""
    for name in _LEAKY:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "mlops-home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    # No endpoint unless a test asks for one (the rollout tests set local or sagemaker).
    monkeypatch.setenv("MLOPS_ENDPOINT_TARGET", "none")
    yield home

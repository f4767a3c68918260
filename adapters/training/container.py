"""The image's ``train`` entry: SageMaker's training-container contract, around the family code.

SageMaker starts a training container as ``docker run IMAGE train`` with:

- ``/opt/ml/input/config/hyperparameters.json``: the job's ``HyperParameters`` (a map of
  strings; :func:`encode_hyperparameters` writes ours, :func:`decode_hyperparameters` reads it);
- ``/opt/ml/input/data/<channel>/``: each input channel's files (ours: ``train``, Parquet parts);
- ``/opt/ml/model/``: whatever is here when the process exits 0 is packed into
  ``model.tar.gz`` at the job's ``S3ModelArtifacts``;
- ``/opt/ml/output/failure``: when the process exits non-zero, this file's text becomes the
  job's ``FailureReason`` (SageMaker keeps the first 1024 characters).

:func:`run` calls exactly what in-process training calls, :meth:`Family.train` then
:meth:`Family.save`, with the same parameters and seed, so the files (and their sha256) are the
same as the flow's own training would write. ``MLOPS_TRAINING_ROOT`` moves ``/opt/ml`` for a
local run (the tests lay out a temporary directory of the same shape). Imports only ``core``:
the serving image runs this, without boto3, Prefect or MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import pandas as pd

from core.families import get_family

log = logging.getLogger("mlops.training")

ROOT = Path("/opt/ml")
"""Where SageMaker lays out the contract."""
ROOT_ENV = "MLOPS_TRAINING_ROOT"
"""Environment variable that moves :data:`ROOT` (local runs and tests)."""
CHANNEL = "train"
"""The one input channel: the training window, as Parquet."""
FAILURE_LIMIT = 1024
"""SageMaker keeps this many characters of ``/opt/ml/output/failure`` as ``FailureReason``."""


class ContractError(ValueError):
    """The contract's directories hold something the entry cannot train on."""


def encode_hyperparameters(
    model: str, family: str, params: dict[str, Any], seed: int
) -> dict[str, str]:
    """The job's ``HyperParameters``: SageMaker takes a map of strings, so values are JSON."""
    return {
        "model": model,
        "family": family,
        "seed": str(seed),
        "params": json.dumps(params, sort_keys=True),
    }


def decode_hyperparameters(raw: dict[str, Any]) -> tuple[str, str, dict[str, Any], int]:
    """``(model, family, params, seed)`` from ``hyperparameters.json``.

    Raises:
        ContractError: a key is missing or a value does not parse; the message names it.
    """
    missing = sorted({"model", "family", "seed", "params"} - set(raw))
    if missing:
        raise ContractError(f"hyperparameters.json lacks {missing}")
    try:
        params = json.loads(raw["params"])
        seed = int(raw["seed"])
    except (TypeError, ValueError) as exc:
        raise ContractError(f"hyperparameters.json: params or seed do not parse: {exc}") from exc
    if not isinstance(params, dict):
        raise ContractError("hyperparameters.json: params must be a JSON object")
    return str(raw["model"]), str(raw["family"]), params, seed


def read_channel(directory: Path) -> pd.DataFrame:
    """Every Parquet file of a channel, in name order, as one frame.

    Raises:
        ContractError: the channel is missing or holds no Parquet file.
    """
    parts = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not parts:
        raise ContractError(f"channel {directory} holds no *.parquet file")
    frames = [pd.read_parquet(p) for p in parts]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def train(root: Path) -> Path:
    """Train from the contract under ``root`` and write the model into ``root/model``.

    Returns:
        The model directory.

    Raises:
        ContractError: the hyperparameters or the channel are not what the job should get.
        ValueError: the family refused its parameters or the data.
    """
    config = root / "input" / "config" / "hyperparameters.json"
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ContractError(f"{config}: {exc}") from exc
    model_name, family_name, params_raw, seed = decode_hyperparameters(raw)
    family = get_family(family_name)
    params = family.Params.model_validate(params_raw)
    frame = read_channel(root / "input" / "data" / CHANNEL)
    log.info("%s: training %s on %d rows (seed %d)", model_name, family_name, len(frame), seed)
    model = family.train(frame, params, seed)
    out = root / "model"
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ContractError(f"{out} is not empty")
    family.save(model, out)
    log.info("%s: wrote %s", model_name, sorted(p.name for p in out.iterdir()))
    return out


def run(root: Path) -> int:
    """:func:`train`, turning a failure into ``output/failure`` and exit status 1."""
    try:
        train(root)
    except Exception as exc:
        log.error("training failed:\n%s", traceback.format_exc())
        reason = f"{type(exc).__name__}: {exc}"
        (root / "output").mkdir(parents=True, exist_ok=True)
        (root / "output" / "failure").write_text(reason[:FAILURE_LIMIT])
        return 1
    return 0


def main() -> int:
    """``python -m serving train``: log to stderr (CloudWatch in SageMaker) and :func:`run`."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    return run(Path(os.environ.get(ROOT_ENV) or ROOT))

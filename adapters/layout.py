"""The store's key layout: the one place that spells a key, and reads one back.

Keys are relative to the store root (a local directory or ``s3://bucket/prefix``)::

    snapshots/{dataset}/{snapshot_id}/part-NNNNN.parquet   the rows, in parts
    snapshots/{dataset}/{snapshot_id}/manifest.json        written last: the snapshot exists
    snapshots/{dataset}/{snapshot_id}/validation.json      accepted or rejected, after validation

    models/{model}/v{N}/claim.json              conditional create: who claimed vN, and when
    models/{model}/v{N}/model.tar.gz            the model, packed (SageMaker's model data)
    models/{model}/v{N}/metrics.json            holdout and backtest metrics, the gate's decision
    models/{model}/v{N}/schema.json             the feature schema and the smoke-test request
    models/{model}/v{N}/model/...               the unpacked model, when published uncompressed
    models/{model}/v{N}/manifest.json           written last: sha256 and size of every file, lineage
    models/{model}/latest.json                  the champion pointer, moved only on promotion
    models/{model}/promotions/{seq:06d}.json    append-only history of pointer moves
    models/{model}/experiment.json              the model's current (or last) online experiment
    models/{model}/experiments/{id}.json        each ended experiment, as it ended

    feedback/{model}/{sha256(inference id)}.json  one reported outcome, created once (idempotence)

    training-jobs/{job}/input/train/part-NNNNN.parquet   a SageMaker training job's channel
    training-jobs/{job}/output/{job}/output/model.tar.gz what the job wrote (S3ModelArtifacts)

Pure functions and names, no I/O: :mod:`adapters.versions`, :mod:`adapters.pointer` and
:mod:`adapters.snapshots` read and write these keys through an :class:`adapters.store.Store`.
A store written before any change here must still read the same, so every spelling below is a
fixed part of the on-store format (``tests/unit/test_layout.py`` pins each one).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

MODELS = "models"
"""Top-level prefix of every model's versions, pointer and history."""
SNAPSHOTS = "snapshots"
"""Top-level prefix of every dataset's snapshots."""
TRAINING_JOBS = "training-jobs"
"""Top-level prefix of SageMaker training jobs' input channels and outputs."""

CLAIM = "claim.json"
MANIFEST = "manifest.json"
MODEL_TARBALL = "model.tar.gz"
METRICS = "metrics.json"
SCHEMA = "schema.json"
UNPACKED = "model"
"""Folder of a version holding the unpacked model files (``endpoint.model_data: uncompressed``)."""
RESERVED_FILES = frozenset({CLAIM, MANIFEST})
"""Names a publisher may not give a file: the layout writes them itself."""

LATEST = "latest.json"
PROMOTIONS = "promotions"
EXPERIMENT = "experiment.json"
EXPERIMENTS = "experiments"
CAPTURE = "capture"
FEEDBACK = "feedback"
"""Top-level prefix of the outcomes reported after a decision (``POST /feedback/{model}``)."""

VALIDATION = "validation.json"

_VERSION = re.compile(r"^v([1-9][0-9]*)$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SEQ_FILE = re.compile(r"^([0-9]{6,})\.json$")


class PublishError(RuntimeError):
    """A version cannot be published, read, verified or promoted as asked."""


class IntegrityError(PublishError):
    """A version in the store is not what was recorded when it was published and promoted."""


def mismatch(model: str, version: str, actual: str, recorded: str, where: str) -> IntegrityError:
    """The error for a manifest whose sha256 is not the one ``where`` recorded."""
    return IntegrityError(
        f"{model} {version} was changed in the store after it was published: its manifest "
        f"has sha256 {actual}, but {where} recorded {recorded}; refusing to use it"
    )


# --- names --------------------------------------------------------------------------------------


def version_number(version: str) -> int:
    """The number of a version name: ``"v12"`` -> ``12``.

    Raises:
        ValueError: not ``v`` followed by a positive integer without leading zeros.
    """
    match = _VERSION.match(version) if isinstance(version, str) else None
    if not match:
        raise ValueError(f"not a version name: {version!r} (expected v1, v2, ...)")
    return int(match[1])


def version_name(number: int) -> str:
    """The version name of a number: ``12`` -> ``"v12"``."""
    return f"v{number}"


def check_file_name(name: str) -> None:
    """Refuse a name a version's file may not have.

    A plain name (``model.tar.gz``), or one under the single :data:`UNPACKED` folder
    (``model/weights.json``); never a path of its own, a hidden name, or a name in
    :data:`RESERVED_FILES` (the claim and the manifest belong to the layout).

    Raises:
        PublishError: the name is refused.
    """
    plain = name
    unpacked = isinstance(name, str) and name.startswith(f"{UNPACKED}/")
    if unpacked:
        plain = name[len(UNPACKED) + 1 :]  # one folder level: model/<plain name>
    if (
        not isinstance(plain, str)
        or not plain
        or "/" in plain
        or "\\" in plain
        or plain.startswith(".")
        or (plain in RESERVED_FILES and not unpacked)
    ):
        raise PublishError(
            f"invalid file name {name!r}: plain names only (no '/' but one "
            f"'{UNPACKED}/' folder, no leading '.'), "
            f"and {sorted(RESERVED_FILES)} are reserved"
        )


# --- prediction capture --------------------------------------------------------------------------


def capture_prefix(model: str) -> str:
    """``capture/{model}``: the local endpoint's captured answers, in SageMaker's layout below it.

    Raises:
        PublishError: ``model`` is not a plain name.
    """
    return f"{CAPTURE}/{model_prefix(model).split('/', 1)[1]}"


# --- reported outcomes ---------------------------------------------------------------------------


def feedback_prefix(model: str) -> str:
    """``feedback/{model}``: the outcomes reported for the model's answers.

    Raises:
        PublishError: ``model`` is not a plain name.
    """
    return f"{FEEDBACK}/{model_prefix(model).split('/', 1)[1]}"


def feedback_key(model: str, inference_id: str) -> str:
    """``feedback/{model}/{sha256 of the inference id}.json``: one outcome, created once.

    The id is hashed: a caller may choose its own (``X-Amzn-SageMaker-Inference-Id``), and
    no spelling of it can then make a path of its own.

    Raises:
        PublishError: ``model`` is not a plain name, or the id is empty.
    """
    if not isinstance(inference_id, str) or not inference_id:
        raise PublishError(f"invalid inference id {inference_id!r}")
    digest = hashlib.sha256(inference_id.encode()).hexdigest()
    return f"{feedback_prefix(model)}/{digest}.json"


# --- model keys ---------------------------------------------------------------------------------


def model_prefix(model: str) -> str:
    """``models/{model}``.

    Raises:
        PublishError: ``model`` is not a plain name (letters, digits, ``_.-``).
    """
    if not isinstance(model, str) or not _MODEL.match(model):
        raise PublishError(f"invalid model name {model!r}")
    return f"{MODELS}/{model}"


def version_prefix(model: str, version: str) -> str:
    """``models/{model}/v{N}``, the folder of one version.

    Raises:
        PublishError: an invalid model name.
        ValueError: an invalid version name.
    """
    version_number(version)
    return f"{model_prefix(model)}/{version}"


def version_file_key(model: str, version: str, name: str) -> str:
    """``models/{model}/v{N}/{name}``: a file of a version (``name`` as in its manifest)."""
    return f"{version_prefix(model, version)}/{name}"


def claim_key(model: str, version: str) -> str:
    """``models/{model}/v{N}/claim.json``."""
    return version_file_key(model, version, CLAIM)


def version_manifest_key(model: str, version: str) -> str:
    """``models/{model}/v{N}/manifest.json``."""
    return version_file_key(model, version, MANIFEST)


def latest_key(model: str) -> str:
    """``models/{model}/latest.json``."""
    return f"{model_prefix(model)}/{LATEST}"


def promotions_prefix(model: str) -> str:
    """``models/{model}/promotions``."""
    return f"{model_prefix(model)}/{PROMOTIONS}"


def promotion_key(model: str, seq: int) -> str:
    """``models/{model}/promotions/{seq:06d}.json``."""
    return f"{promotions_prefix(model)}/{seq:06d}.json"


def experiment_key(model: str) -> str:
    """``models/{model}/experiment.json``: the current experiment, swapped by compare-and-set."""
    return f"{model_prefix(model)}/{EXPERIMENT}"


def ended_experiment_key(model: str, experiment_id: str) -> str:
    """``models/{model}/experiments/{id}.json``: an ended experiment, written once."""
    if not _MODEL.match(experiment_id):
        raise PublishError(f"invalid experiment id {experiment_id!r}")
    return f"{model_prefix(model)}/{EXPERIMENTS}/{experiment_id}.json"


def promotion_seq(key: str) -> int | None:
    """The sequence number of a promotion record's key; None for any other file name."""
    match = _SEQ_FILE.match(key.rsplit("/", 1)[-1])
    return int(match[1]) if match else None


def parse_version_key(key: str) -> tuple[str, str, str] | None:
    """``models/{model}/v{N}/{name}`` -> ``(model, "vN", name)``; None for any other key.

    ``name`` may hold a ``/`` (``model/weights.json``). A file directly under the model
    (``latest.json``, ``promotions/...``) or a folder that is not a version name (``vnext``,
    ``v01``) is not a version's key.
    """
    parts = key.split("/", 3)
    if len(parts) < 4 or parts[0] != MODELS or not _VERSION.match(parts[2]):
        return None
    return parts[1], parts[2], parts[3]


def model_names(keys: Iterable[str]) -> set[str]:
    """The models that keys under ``models/{model}/`` belong to."""
    names = set()
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == MODELS:
            names.add(parts[1])
    return names


# --- training-job keys ------------------------------------------------------------------------


def training_channel_prefix(job_name: str, channel: str) -> str:
    """``training-jobs/{job}/input/{channel}``: the S3 prefix a job's channel is read from."""
    return f"{TRAINING_JOBS}/{job_name}/input/{channel}"


def training_output_prefix(job_name: str) -> str:
    """``training-jobs/{job}/output``: the job's ``S3OutputPath`` (SageMaker adds more)."""
    return f"{TRAINING_JOBS}/{job_name}/output"


# --- snapshot keys ------------------------------------------------------------------------------


def snapshot_prefix(dataset_name: str, snapshot_id: str | None = None) -> str:
    """``snapshots/{dataset}`` or ``snapshots/{dataset}/{snapshot_id}``."""
    base = f"{SNAPSHOTS}/{dataset_name}"
    return f"{base}/{snapshot_id}" if snapshot_id else base


def snapshot_part_name(index: int) -> str:
    """``part-NNNNN.parquet``, the file name of a snapshot's part ``index`` (from 0)."""
    return f"part-{index:05d}.parquet"


def snapshot_file_key(dataset_name: str, snapshot_id: str, name: str) -> str:
    """``snapshots/{dataset}/{snapshot_id}/{name}``."""
    return f"{snapshot_prefix(dataset_name, snapshot_id)}/{name}"


def snapshot_manifest_key(dataset_name: str, snapshot_id: str) -> str:
    """Store key of a snapshot's manifest."""
    return snapshot_file_key(dataset_name, snapshot_id, MANIFEST)


def snapshot_validation_key(dataset_name: str, snapshot_id: str) -> str:
    """Store key of a snapshot's validation outcome."""
    return snapshot_file_key(dataset_name, snapshot_id, VALIDATION)


def parse_snapshot_key(key: str) -> tuple[str, str, str] | None:
    """``snapshots/{dataset}/{snapshot_id}/{name}`` -> ``(dataset, snapshot_id, name)``.

    None for a key that is not a snapshot's file.
    """
    parts = key.split("/", 3)
    if len(parts) < 4 or parts[0] != SNAPSHOTS:
        return None
    return parts[1], parts[2], parts[3]


# --- documents ----------------------------------------------------------------------------------


def document_bytes(payload: dict[str, Any]) -> bytes:
    """The bytes of a JSON document the layout holds (claim, manifest, pointer, record, contents).

    Sorted keys and a fixed indent: the same content gives the same bytes, hence the same sha256
    (``latest.json`` and the serving container compare manifests and ``contents.json`` by hash).
    """
    return (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()


def timestamp(moment: datetime) -> str:
    """A UTC moment as the documents record it: ``2026-11-16T08:00:00.000Z``."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

"""The training target's config and the job adapter's refusals, without AWS (the job itself runs
on moto server in ``tests/integration/test_training_job.py``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.store import LocalStore
from adapters.training.sagemaker_job import SageMakerTrainer, TrainingJobError, job_name
from core.config import TrainingConfig, load_model_configs
from core.settings import PROJECT_ROOT
from tasks.training import fit

SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def test_every_shipped_model_trains_in_process_by_default() -> None:
    cfgs = load_model_configs(PROJECT_ROOT / "configs")
    assert {c.training.target for c in cfgs} == {"local"}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"target": "gpu"}, "target"),
        ({"instance_type": "m5.large"}, "instance_type"),
        ({"max_runtime_seconds": 10}, "max_runtime_seconds"),
        ({"max_runtime": 600}, "max_runtime"),
    ],
)
def test_a_bad_training_section_is_refused_naming_the_field(
    bad: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        TrainingConfig.model_validate(bad)


def test_job_names_keep_sagemakers_rules() -> None:
    name = job_name("intelli-rate", "a_model_with_a_very_long_name_indeed_" * 2, "ab" * 32)
    assert SAGEMAKER_NAME.match(name) and len(name) <= 63 - len("-9")
    assert job_name("t", "m", "0" * 64) != job_name("t", "m", "1" * 64)


@pytest.mark.parametrize(
    ("image", "role", "store", "missing"),
    [
        ("img", "arn:role", "local", "s3:// store"),
        (None, "arn:role", "s3", "MLOPS_SERVING_IMAGE"),
        ("img", None, "s3", "MLOPS_SAGEMAKER_ROLE_ARN"),
    ],
)
def test_the_trainer_refuses_a_setup_sagemaker_cannot_run(
    tmp_path: Path, image: str | None, role: str | None, store: str, missing: str
) -> None:
    chosen = LocalStore(tmp_path) if store == "local" else S3Like(tmp_path)
    with pytest.raises(TrainingJobError, match=missing):
        SageMakerTrainer(
            sagemaker=None, logs=None, store=chosen, image=image, role_arn=role, project_tag="t"
        )


class S3Like(LocalStore):
    """A local directory that names its keys as an S3 store would (the trainer needs s3://)."""

    def url(self, key: str) -> str:
        return f"s3://bucket/store/{key}"


def test_a_retry_follows_a_kept_job_and_passes_one_whose_model_was_taken(tmp_path: Path) -> None:
    """A completed job whose files were cleaned up gives no model: the next name is tried."""
    store = S3Like(tmp_path)
    output = "training-jobs/{}/output/{}/output/model.tar.gz"
    jobs = {
        "base": {"TrainingJobStatus": "Failed"},
        "base-2": {
            "TrainingJobStatus": "Completed",
            "ModelArtifacts": {"S3ModelArtifacts": store.url(output.format("base-2", "base-2"))},
        },
    }

    class Described:
        def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
            if TrainingJobName not in jobs:
                raise _not_found(TrainingJobName)
            return jobs[TrainingJobName]

    trainer = SageMakerTrainer(
        sagemaker=Described(), logs=None, store=store, image="img", role_arn="arn", project_tag="t"
    )
    # base-2's model is gone (taken and cleaned up): a third job, under base-3.
    assert trainer._pick_name("base") == ("base-3", None)
    # With its model still in the store, base-2 is followed (a retried task starts no job).
    store.put_bytes(output.format("base-2", "base-2"), b"model")
    assert trainer._pick_name("base") == ("base-2", jobs["base-2"])
    # Still running: followed.
    jobs["base-2"] = {"TrainingJobStatus": "InProgress"}
    assert trainer._pick_name("base") == ("base-2", jobs["base-2"])


def _not_found(name: str) -> Exception:
    from botocore.exceptions import ClientError

    error = {"Error": {"Code": "ValidationException", "Message": "Requested resource not found."}}
    return ClientError(error, "DescribeTrainingJob")  # type: ignore[arg-type]


def test_a_sagemaker_target_without_a_trainer_is_an_error_not_a_local_fit() -> None:
    (cfg,) = load_model_configs(PROJECT_ROOT / "configs", ["limit_optimiser"])
    cfg = cfg.model_copy(update={"training": TrainingConfig(target="sagemaker")})
    with pytest.raises(ValueError, match=r"training\.target is sagemaker but no trainer"):
        fit(None, cfg, None, None, None, Path())  # type: ignore[arg-type]

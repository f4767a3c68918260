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
    class S3Like(LocalStore):
        def url(self, key: str) -> str:
            return f"s3://bucket/store/{key}"

    chosen = LocalStore(tmp_path) if store == "local" else S3Like(tmp_path)
    with pytest.raises(TrainingJobError, match=missing):
        SageMakerTrainer(
            sagemaker=None, logs=None, store=chosen, image=image, role_arn=role, project_tag="t"
        )


def test_a_sagemaker_target_without_a_trainer_is_an_error_not_a_local_fit() -> None:
    (cfg,) = load_model_configs(PROJECT_ROOT / "configs", ["limit_optimiser"])
    cfg = cfg.model_copy(update={"training": TrainingConfig(target="sagemaker")})
    with pytest.raises(ValueError, match=r"training\.target is sagemaker but no trainer"):
        fit(None, cfg, None, None, None, Path())  # type: ignore[arg-type]

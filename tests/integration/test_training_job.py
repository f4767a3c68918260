"""Training as a SageMaker training job: the container contract, the submission, the flow's path.

* The image's ``train`` entry point runs as a subprocess (``python -m serving train``, what
  ``docker run IMAGE train`` runs) against a temporary ``/opt/ml``-shaped directory; the model
  it writes has the same ``contents.json`` sha256 as the family trained in this process.
* The retrain flow with ``training.target: sagemaker`` submits the job to SageMaker on moto
  server, extended by :mod:`tests.fixtures.training_moto` (which says what that does not prove)
  to run the entry point on the uploaded channel and write ``model.tar.gz``, or to fail with a
  reason. A failed job fails the model with SageMaker's reason and the job's log, and publishes
  nothing; the next run trains under a new job name, and its artifact goes through the same gate
  and publish, with the ``model_contents_sha256`` in-process training gives on the same window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from adapters.endpoints.iam import role_name
from adapters.layout import version_manifest_key
from adapters.package import write_contents
from adapters.pointer import read_latest
from adapters.registry import Registry
from adapters.source import seed_source
from adapters.store import store_from_settings
from adapters.training.container import encode_hyperparameters, run
from adapters.versions import list_versions
from core.config import load_model_configs
from core.families import get_family
from core.settings import PROJECT_ROOT, load_settings
from core.synth import generate
from flows.retrain import retrain_model
from tasks.report import outcome_of
from tasks.training import load_training_window, split_holdout, split_window
from tests.fixtures.home import SMALL_SOURCE, isolated_env, project_configs
from tests.fixtures.moto import boto_client, make_store_bucket, use_moto_env
from tests.fixtures.training_moto import TrainingSim, install

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "limit_optimiser"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/intelli-rate-serving:1.0"
ROLE = "arn:aws:iam::123456789012:role/intelli-rate-training"


def _in_process_sha(frame, cfg, dest: Path) -> str:  # type: ignore[no-untyped-def]
    """``contents.json`` sha256 of the model the flow's own process trains on ``frame``."""
    family = get_family(cfg.family)
    dest.mkdir()
    family.save(family.train(frame, family.Params.model_validate(cfg.params), cfg.seed), dest)
    return write_contents(dest, cfg.name, cfg.family)


def test_the_entry_point_keeps_the_container_contract(tmp_path: Path) -> None:
    (cfg,) = load_model_configs(PROJECT_ROOT / "configs", [MODEL])
    rows = generate("client_limits", datetime(2026, 1, 5), 21, n_clients=30, seed=7)
    train, _, _, _ = split_window(rows, cfg)

    root = tmp_path / "opt-ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "data" / "train").mkdir(parents=True)
    hyper = encode_hyperparameters(cfg.name, cfg.family, cfg.params, cfg.seed)
    assert all(isinstance(v, str) for v in hyper.values())  # SageMaker's map of strings
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyper))
    train.to_parquet(root / "input" / "data" / "train" / "part-00000.parquet", index=False)
    done = subprocess.run(
        [sys.executable, "-m", "serving", "train"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "MLOPS_TRAINING_ROOT": str(root), "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"training {cfg.family} on {len(train)} rows" in done.stderr
    assert not (root / "output" / "failure").exists()
    job_sha = write_contents(root / "model", cfg.name, cfg.family)
    assert job_sha == _in_process_sha(train, cfg, tmp_path / "in-process")

    # Parameters the family refuses: exit 1, the reason in output/failure, no model written.
    bad = tmp_path / "bad"
    (bad / "input").mkdir(parents=True)
    (root / "input").rename(bad / "input")
    params = {**cfg.params, "n_estimators": -1}
    hyper = encode_hyperparameters(cfg.name, cfg.family, params, cfg.seed)
    (bad / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyper))
    assert run(bad) == 1
    reason = (bad / "output" / "failure").read_text()
    assert reason.startswith("ValidationError") and "n_estimators" in reason
    assert not (bad / "model").exists()


def test_a_training_job_fails_the_model_then_trains_it_like_in_process(
    moto_server: str, prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_env(monkeypatch, tmp_path / "home")
    use_moto_env(monkeypatch, moto_server)
    bucket = f"mlops-train-{uuid.uuid4().hex[:12]}"
    make_store_bucket(moto_server, bucket)
    tag = f"t{uuid.uuid4().hex[:8]}"
    training = "training: {target: sagemaker, instance_type: ml.m5.large}\nseed: 42"
    edits = {
        "platform.yaml": {"project_tag: intelli-rate": f"project_tag: {tag}"},
        f"models/{MODEL}.yaml": {"seed: 42": training},
    }
    project_configs(monkeypatch, tmp_path / "configs", edits)
    monkeypatch.setenv("MLOPS_STORE_URI", f"s3://{bucket}/store")
    monkeypatch.setenv("MLOPS_SERVING_IMAGE", IMAGE)
    monkeypatch.setenv("MLOPS_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("MLOPS_SAGEMAKER_POLL_SECONDS", "0.05")
    sim = TrainingSim(moto_server)
    install(sim, monkeypatch)
    settings = load_settings()
    store = store_from_settings(settings)
    (cfg,) = load_model_configs(settings.config_dir, [MODEL])
    seed_source(settings.source_url, weeks=3, **SMALL_SOURCE)

    # 1. SageMaker cannot run the job: the model fails with its reason, nothing is published.
    sim.fail_next("CapacityError: Unable to provision requested ML compute capacity.")
    failed = outcome_of(MODEL, retrain_model(MODEL, return_state=True))
    ((first, request),) = sim.created
    assert failed.status == "failed"
    assert f"SageMaker training job {first} Failed: CapacityError" in failed.note
    assert f"job {first}: CapacityError" in failed.note  # its CloudWatch log, read back
    assert list_versions(store, MODEL) == [] and read_latest(store, MODEL) is None
    assert store.list("training-jobs") == []  # the failed job's channel is not left behind
    assert first.startswith(f"{tag}-limit-optimiser-")
    assert request["algorithm_specification"]["TrainingImage"] == IMAGE
    assert request["role_arn"] == ROLE
    assert request["resource_config"]["InstanceType"] == "ml.m5.large"
    assert request["stopping_condition"] == {"MaxRuntimeInSeconds": 3600}
    assert json.loads(request["hyper_parameters"]["params"]) == cfg.params

    # 2. The same data again: a new job name (SageMaker never reuses one); the entry point runs
    #    on the channel, and its model goes through the gate and publish as v1. No role is
    #    configured this time: the job runs as the project's own role, which may train.
    monkeypatch.delenv("MLOPS_SAGEMAKER_ROLE_ARN")
    done = outcome_of(MODEL, retrain_model(MODEL, force=True, return_state=True))
    assert done.status == "promoted", done.note
    assert [name for name, _ in sim.created] == [first, f"{first}-2"]
    role = boto_client("iam", moto_server).get_role(RoleName=role_name(tag))["Role"]
    assert sim.created[1][1]["role_arn"] == role["Arn"]
    policy = boto_client("iam", moto_server).get_role_policy(
        RoleName=role_name(tag), PolicyName="serving"
    )["PolicyDocument"]
    sids = {s["Sid"]: s["Resource"] for s in policy["Statement"]}
    assert sids["ReadTrainingChannels"] == [f"arn:aws:s3:::{bucket}/store/training-jobs/*/input/*"]
    assert sids["WriteTrainingOutput"] == [f"arn:aws:s3:::{bucket}/store/training-jobs/*/output/*"]
    # The model came back and was published: the job's channel and output are gone.
    assert store.list("training-jobs") == []
    manifest = json.loads(store.get_bytes(version_manifest_key(MODEL, "v1")))
    published_sha = manifest["lineage"]["model_contents_sha256"]
    tracking = Registry.from_settings(settings).tracking_uri
    run_tags = MlflowClient(tracking_uri=tracking).get_run(str(done.mlflow_run_id)).data.tags
    assert run_tags["training.job"] == f"{first}-2"

    # What the flow's own process would have trained on the same window: the same files.
    window = load_training_window.fn(store, cfg, None)
    data = split_holdout.fn(cfg, window)
    assert published_sha == _in_process_sha(data.train, cfg, tmp_path / "in-process")
    sim.join()

"""Train one model as a SageMaker training job on the project's image (boto3).

:class:`SageMakerTrainer` does what the flow's own process would do with ``family.train``, on a
SageMaker instance instead:

1. writes the training window as Parquet to the store, under
   ``training-jobs/{job}/input/train/`` (the ``train`` channel);
2. ``CreateTrainingJob`` with the project's image (``MLOPS_SERVING_IMAGE``: the serving image's
   entry point also answers ``train``, see :mod:`adapters.training.container`), the execution
   role (``MLOPS_SAGEMAKER_ROLE_ARN``), the family's hyperparameters and seed, and the model
   config's ``training:`` instance type and ``max_runtime_seconds``;
3. waits with boto3's ``training_job_completed_or_stopped`` waiter;
4. reads the job's CloudWatch Logs (``/aws/sagemaker/TrainingJobs``, streams ``{job}/...``)
   into the flow's log, and on any end but ``Completed`` raises :class:`TrainingJobFailed`
   with SageMaker's ``FailureReason`` and the last log lines;
5. downloads ``model.tar.gz`` from ``S3ModelArtifacts`` and unpacks it (as untrusted input:
   :func:`adapters.package.extract_tarball`) into a directory the flow then evaluates, logs and
   publishes like an in-process model.

The job's name derives from the model and a hash of everything that decides its output or
where it runs (the channel's bytes, the hyperparameters, image, instance, network isolation and
VPC), so a retried task finds the job it already started instead of starting a second one.

Network: ``EnableNetworkIsolation`` by default (``training.network_isolation``): the entry point
reads its channel from ``/opt/ml/input/data`` and writes ``/opt/ml/model``, SageMaker moves both
to and from S3, so the container needs no network. ``training.vpc`` (else the platform's
``network.vpc``) places the job in a VPC; SageMaker then reaches S3 through it (a gateway
endpoint or a NAT), which is the user's network to provide.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from adapters.layout import (
    MODEL_TARBALL,
    TRAINING_JOBS,
    training_channel_prefix,
    training_output_prefix,
)
from adapters.package import extract_tarball
from adapters.training.container import CHANNEL, encode_hyperparameters

if TYPE_CHECKING:
    from adapters.store import Store
    from core.config import ModelConfig, PlatformConfig, VpcConfig
    from core.settings import Settings

log = logging.getLogger(__name__)

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
"""Where SageMaker sends a training container's stdout and stderr."""
LOG_TAIL = 20
"""Log lines quoted in a failure's message."""
ENDED_BADLY = frozenset({"Failed", "Stopped"})
"""Ends of a job after which the same inputs are tried again under a new name."""
MAX_ATTEMPTS = 9
"""Jobs tried for the same inputs before giving up (names ``base``, ``base-2``...)."""


class TrainingJobError(RuntimeError):
    """A training job cannot be started as configured (no S3 store, no image, no role)."""


class TrainingJobFailed(RuntimeError):
    """A training job ended Failed or Stopped; the message carries SageMaker's reason."""

    def __init__(self, job_name: str, status: str, reason: str, logs: list[str]) -> None:
        tail = "\n".join(logs[-LOG_TAIL:])
        super().__init__(
            f"SageMaker training job {job_name} {status}: {reason or 'no FailureReason given'}"
            + (f"\nlast log lines:\n{tail}" if tail else "")
        )
        self.job_name = job_name
        self.status = status
        self.reason = reason
        self.logs = logs


@dataclass
class TrainingJobResult:
    """What a finished job left: its name, the unpacked model and the log lines."""

    job_name: str
    model_dir: Path
    model_artifacts: str
    logs: list[str] = field(default_factory=list)
    billable_seconds: int | None = None


def job_name(project_tag: str, model: str, digest: str) -> str:
    """``{tag}-{model}-{digest[:12]}``: SageMaker's name rules (63 characters, ``[a-zA-Z0-9-]``).

    At most 61 characters, so that an attempt's suffix (``-2``...``-9``) still fits.
    """
    name = f"{project_tag}-{model.replace('_', '-')}"[:48].rstrip("-")
    return f"{name}-{digest[:12]}"


def _frame_parquet(frame: pd.DataFrame, dest: Path) -> Path:
    frame.to_parquet(dest, index=False)
    return dest


class SageMakerTrainer:
    """Trains a model as a SageMaker training job; a model config's ``training.target: sagemaker``.

    Args:
        sagemaker: boto3 ``sagemaker`` client.
        logs: boto3 ``logs`` client (the job's CloudWatch Logs).
        store: the model store; it must be S3, where SageMaker reads the channel and writes
            the model.
        image: the project's image (ECR URI of ``docker/serving.Dockerfile``'s build).
        role_arn: the execution role SageMaker assumes: reads the channel, writes the output,
            pulls the image, writes logs.
        project_tag: prefix of the job's name and value of its ``project`` tag.
        poll_seconds: the waiter's delay between ``DescribeTrainingJob`` calls.
        default_vpc: the platform's VPC (``network.vpc``), for a model naming none.
    """

    def __init__(
        self,
        *,
        sagemaker: Any,
        logs: Any,
        store: Store,
        image: str | None,
        role_arn: str | None,
        project_tag: str,
        poll_seconds: float = 30.0,
        default_vpc: VpcConfig | None = None,
    ) -> None:
        where = store.url(TRAINING_JOBS)
        if not where.startswith("s3://"):
            raise TrainingJobError(
                "training.target sagemaker needs an s3:// store (MLOPS_STORE_URI): SageMaker "
                f"reads the channel from and writes the model to S3, not {where}"
            )
        if not image:
            raise TrainingJobError(
                "training.target sagemaker needs MLOPS_SERVING_IMAGE: the project's image "
                "(docker/serving.Dockerfile) trains as well as serves"
            )
        if not role_arn:
            raise TrainingJobError(
                "training.target sagemaker needs MLOPS_SAGEMAKER_ROLE_ARN: a role SageMaker "
                "assumes, reading and writing the store's training-jobs/ prefix"
            )
        self.sm = sagemaker
        self.logs = logs
        self.store = store
        self.image = image
        self.role_arn = role_arn
        self.project_tag = project_tag
        self.poll_seconds = poll_seconds
        self.default_vpc = default_vpc

    @classmethod
    def from_settings(
        cls, settings: Settings, platform: PlatformConfig, store: Store
    ) -> SageMakerTrainer:
        """Build the clients from settings (region, ``AWS_ENDPOINT_URL``, profile)."""
        from adapters.aws import aws_clients

        clients = aws_clients(
            ("sagemaker", "logs", "iam", "sts"),
            profile=settings.aws_profile,
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
        )
        role_arn = settings.sagemaker_role_arn
        if not role_arn and settings.serving_image and settings.store.startswith("s3://"):
            from adapters.endpoints.iam import project_role

            # The endpoints' role: its policy covers the training-jobs/ prefix too.
            role_arn = project_role(
                clients["iam"],
                clients["sts"],
                platform.project_tag,
                settings.store.rstrip("/"),
                region=settings.aws_region,
                serving_image=settings.serving_image,
                kms_key_id=settings.kms_key_id,
            )
        return cls(
            sagemaker=clients["sagemaker"],
            logs=clients["logs"],
            store=store,
            image=settings.serving_image,
            role_arn=role_arn,
            project_tag=platform.project_tag,
            poll_seconds=max(settings.sagemaker_poll_seconds, 0.05),
            default_vpc=platform.network.vpc,
        )

    # --- the job ------------------------------------------------------------------------------

    def network(self, cfg: ModelConfig) -> dict[str, Any]:
        """The job's ``EnableNetworkIsolation`` and ``VpcConfig`` (own VPC, else the default)."""
        vpc = cfg.training.vpc or self.default_vpc
        network: dict[str, Any] = {"EnableNetworkIsolation": cfg.training.network_isolation}
        if vpc is not None:
            network["VpcConfig"] = vpc.request()
        return network

    def request(self, name: str, cfg: ModelConfig) -> dict[str, Any]:
        """The ``CreateTrainingJob`` request for ``cfg`` under ``name``."""
        return {
            **self.network(cfg),
            "TrainingJobName": name,
            "AlgorithmSpecification": {
                "TrainingImage": self.image,
                "TrainingInputMode": "File",
            },
            "RoleArn": self.role_arn,
            "HyperParameters": encode_hyperparameters(cfg.name, cfg.family, cfg.params, cfg.seed),
            "InputDataConfig": [
                {
                    "ChannelName": CHANNEL,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": self.store.url(training_channel_prefix(name, CHANNEL)) + "/",
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                    "ContentType": "application/x-parquet",
                    "InputMode": "File",
                }
            ],
            "OutputDataConfig": {"S3OutputPath": self.store.url(training_output_prefix(name))},
            "ResourceConfig": {
                "InstanceType": cfg.training.instance_type,
                "InstanceCount": 1,
                "VolumeSizeInGB": cfg.training.volume_size_gb,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": cfg.training.max_runtime_seconds},
            "Tags": [
                {"Key": "project", "Value": self.project_tag},
                {"Key": "model", "Value": cfg.name},
            ],
        }

    def train(self, cfg: ModelConfig, frame: pd.DataFrame, work_dir: Path) -> TrainingJobResult:
        """Run ``cfg``'s training on ``frame`` as a job; return the unpacked model.

        Raises:
            TrainingJobFailed: the job ended Failed or Stopped (the reason and log tail in
                the message), or did not end within ``max_runtime_seconds``.
        """
        work_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"{cfg.name}-job-", dir=work_dir))
        part = _frame_parquet(frame, scratch / "part-00000.parquet")
        digest = hashlib.sha256(part.read_bytes())
        decides = {
            "image": self.image,
            "hyperparameters": encode_hyperparameters(cfg.name, cfg.family, cfg.params, cfg.seed),
            "instance": [cfg.training.instance_type, cfg.training.volume_size_gb],
            "network": self.network(cfg),
        }
        digest.update(json.dumps(decides, sort_keys=True).encode())
        name, described = self._pick_name(job_name(self.project_tag, cfg.name, digest.hexdigest()))
        if described is None:
            self.store.put_file(f"{training_channel_prefix(name, CHANNEL)}/{part.name}", part)
            self.sm.create_training_job(**self.request(name, cfg))
            log.info("%s: started SageMaker training job %s", cfg.name, name)
        else:
            status = described.get("TrainingJobStatus")
            log.info("%s: training job %s exists (%s): following it", cfg.name, name, status)
        described = self._wait(name, cfg.training.max_runtime_seconds)
        lines = self.job_logs(name)
        status = str(described.get("TrainingJobStatus"))
        try:
            if status != "Completed":
                reason = str(described.get("FailureReason") or "")
                raise TrainingJobFailed(name, status, reason, lines)
            artifacts = str(described["ModelArtifacts"]["S3ModelArtifacts"])
            tarball = self.store.get_file(self._store_key(artifacts), scratch / MODEL_TARBALL)
            model_dir = extract_tarball(tarball, scratch / "model")
        finally:
            self._forget(name)
        return TrainingJobResult(
            job_name=name,
            model_dir=model_dir,
            model_artifacts=artifacts,
            logs=lines,
            billable_seconds=described.get("BillableTimeInSeconds"),
        )

    def _pick_name(self, base: str) -> tuple[str, dict[str, Any] | None]:
        """The job to follow or start: ``base``, or ``base-2``... after failed attempts.

        The same inputs give the same ``base``: a job of that name still running, or completed
        with its model still in the store, is followed (a retried task starts no second job).
        SageMaker never reuses a name, so a job that failed or stopped, or whose model was
        already taken and cleaned up (:meth:`_forget`), is followed by the next free suffix.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            name = base if attempt == 1 else f"{base}-{attempt}"
            described = self._describe(name)
            if described is None or self._followable(described):
                return name, described
        raise TrainingJobError(f"{base}: {MAX_ATTEMPTS} attempts failed; see their FailureReason")

    def _followable(self, described: dict[str, Any]) -> bool:
        """Whether an existing job can still give a model: running, or completed and kept."""
        status = described.get("TrainingJobStatus")
        if status in ENDED_BADLY:
            return False
        if status != "Completed":
            return True
        artifacts = str(described.get("ModelArtifacts", {}).get("S3ModelArtifacts", ""))
        return self.store.exists(self._store_key(artifacts))

    def _forget(self, name: str) -> None:
        """Delete the job's ``training-jobs/{job}/`` prefix once the job has ended.

        The channel is a copy of the training window (its snapshot stays under ``snapshots/``)
        and the model comes back into the flow, which publishes it as a version; SageMaker's
        record of the job (status, reason, metrics, logs) stays. A prefix left by a flow that
        died mid-job is for the bucket's lifecycle rule (docs/sagemaker.md).
        """
        keys = self.store.list(f"{TRAINING_JOBS}/{name}")
        for key in keys:
            self.store.delete(key)
        log.info("%s: deleted its %d files under %s/", name, len(keys), TRAINING_JOBS)

    def _store_key(self, uri: str) -> str:
        root = self.store.url(TRAINING_JOBS) + "/"
        if not uri.startswith(root):
            raise TrainingJobError(f"S3ModelArtifacts {uri} is outside the store's {root}")
        return f"{TRAINING_JOBS}/{uri[len(root) :]}"

    def _describe(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.sm.describe_training_job(TrainingJobName=name))
        except Exception as exc:
            error = getattr(exc, "response", {}).get("Error", {})
            message = str(error.get("Message", "")).lower()
            # SageMaker answers "Requested resource not found."; moto "Could not find ...".
            said = ("not found", "could not find", "does not exist")
            if error.get("Code") in ("ValidationException", "ResourceNotFound") and any(
                s in message for s in said
            ):
                return None
            raise

    def _wait(self, name: str, max_runtime_seconds: int) -> dict[str, Any]:
        """Wait with boto3's waiter until the job completes, fails or stops; describe it."""
        from botocore.exceptions import WaiterError

        # Past MaxRuntimeInSeconds SageMaker stops the job itself; the margin covers the
        # instance's start and the upload of the model.
        attempts = math.ceil((max_runtime_seconds + 900) / self.poll_seconds)
        waiter = self.sm.get_waiter("training_job_completed_or_stopped")
        started = time.monotonic()
        try:
            waiter.wait(
                TrainingJobName=name,
                WaiterConfig={"Delay": self.poll_seconds, "MaxAttempts": attempts},
            )
        except WaiterError as exc:
            # "Failed" is a terminal failure state of this waiter: the description says why.
            log.debug("%s: waiter ended: %s", name, exc)
        described = dict(self.sm.describe_training_job(TrainingJobName=name))
        status = described.get("TrainingJobStatus")
        log.info("%s: %s after %.0f s", name, status, time.monotonic() - started)
        if status not in ("Completed", "Failed", "Stopped"):
            raise TrainingJobFailed(
                name, str(status), f"still {status} after {max_runtime_seconds + 900} s", []
            )
        return described

    def job_logs(self, name: str) -> list[str]:
        """The job's log lines from CloudWatch Logs (every stream ``{name}/...``), oldest first."""
        lines: list[tuple[int, str]] = []
        try:
            pages = self.logs.get_paginator("filter_log_events").paginate(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/"
            )
            for page in pages:
                lines += [(e["timestamp"], e["message"]) for e in page.get("events", [])]
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code != "ResourceNotFoundException":
                raise
            return []  # no log group yet: the job never started a container
        return [message.rstrip("\n") for _, message in sorted(lines, key=lambda t: t[0])]

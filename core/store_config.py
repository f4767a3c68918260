"""The store bucket's settings: ``store:`` in ``configs/platform.yaml``.

:class:`StoreConfig` is what ``mlops store setup`` makes the bucket of an ``s3://`` store
enforce: its default encryption key and how long each kind of disposable data lives there.
A local store ignores it. The rules it becomes, and why none of them can expire anything in
use, are :mod:`core.bucket_plan`'s and ``docs/aws-account.md``'s.
"""

from __future__ import annotations

from pydantic import Field

from core.strict import Strict

KMS_KEY = (
    r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[A-Za-z0-9/_-]+"
    r"|alias/[A-Za-z0-9/_-]+|[0-9a-f-]{36})$"
)
"""A KMS key id (uuid), alias (``alias/name``) or key or alias ARN."""

SAGEMAKER_MAX_RUNTIME_DAYS = 5
"""The longest a training job may run (``training.max_runtime_seconds`` allows 432,000 s)."""


class BucketRetention(Strict):
    """Days after which the bucket's lifecycle rules remove each kind of disposable data."""

    captured_requests_days: int = Field(
        default=90,
        ge=2,
        le=3650,
        description="Captured requests (capture/, datacapture/) expire this many days after "
        "capture; must exceed every configured experiment's max_days (checked by setup).",
    )
    superseded_snapshots_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Snapshots that cleanup tagged superseded expire once this many days old.",
    )
    training_jobs_days: int = Field(
        default=7,
        ge=SAGEMAKER_MAX_RUNTIME_DAYS + 1,
        le=365,
        description="A SageMaker training job's channel and output (training-jobs/) expire "
        "after this; longer than any job may run, so a running job keeps its files.",
    )
    noncurrent_versions_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Object versions that were overwritten or deleted are kept this long "
        "(the window to recover a mistaken delete), then removed.",
    )
    incomplete_uploads_days: int = Field(
        default=7,
        ge=1,
        le=365,
        description="Multipart uploads never completed (a crashed upload) are aborted after this.",
    )


class StoreConfig(Strict):
    """The store bucket: default encryption and the retention of its disposable data."""

    kms_key_id: str | None = Field(
        default=None,
        pattern=KMS_KEY,
        description="KMS key (id, alias or ARN) of the bucket's default encryption (SSE-KMS, "
        "bucket key on); none: MLOPS_KMS_KEY_ID if set, else SSE-S3 (AES256).",
    )
    retention: BucketRetention = Field(
        default_factory=lambda: BucketRetention(),
        description="Days each kind of disposable data is kept in the bucket.",
    )

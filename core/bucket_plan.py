"""The store bucket's settings as data, and the plan from what a bucket has to what it needs.

:func:`plan_setup` is a pure function of a :class:`BucketState` (read by
:mod:`adapters.bucket`) and a :class:`BucketScope` (the store URI and ``store:`` in the platform
config); it returns the writes still needed, in the order they are applied, each with a line a
person reads. An empty plan means the bucket is set up: a second ``mlops store setup`` makes no
write call. The order puts versioning first on an existing bucket: it is the setting an account
most often withholds (``PutBucketVersioning``), so when it is refused nothing else has changed.

The lifecycle rules touch only prefixes that hold disposable data (captured requests, a
training job's files) or objects that cleanup tagged superseded, and versions that nothing reads
(noncurrent ones): every pointer, alias, endpoint and experiment names a key's current version.
``docs/aws-account.md`` has the argument in full.

Rules and statements that are not this store's (another prefix's, the account's own) are kept
as they are: the policy and the lifecycle configuration are merged, never replaced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.config import ConfigError
from core.store_config import BucketRetention

TLS_SID = "DenyInsecureTransport"
"""Sid of the bucket policy statement refusing requests that are not over TLS."""
SUPERSEDED_TAG = ("mlops-superseded", "true")
"""Object tag cleanup writes on a superseded snapshot's files; the snapshot rule expires them."""
CAPTURE_PREFIXES = ("capture", "datacapture")
"""Where captured requests land: the local router's and SageMaker Data Capture's destinations."""
SNAPSHOTS = "snapshots"
TRAINING_JOBS = "training-jobs"
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
"""All four switches of S3's public access block, on."""


@dataclass(frozen=True)
class BucketScope:
    """Which bucket and prefix the store is, and what its bucket must enforce.

    Attributes:
        bucket: the bucket name.
        prefix: the store's key prefix in the bucket ("" for the whole bucket).
        region: where a missing bucket is created.
        kms_key_id: default SSE-KMS key; None: SSE-S3.
        retention: the days of each lifecycle rule.
        project_tag: names the lifecycle rules (with the prefix, so stores sharing a bucket
            keep rules of their own).
    """

    bucket: str
    prefix: str
    region: str
    kms_key_id: str | None
    retention: BucketRetention
    project_tag: str

    @classmethod
    def for_uri(
        cls,
        uri: str,
        *,
        region: str,
        kms_key_id: str | None,
        retention: BucketRetention,
        project_tag: str,
    ) -> BucketScope:
        """The scope of the store at ``s3://bucket/prefix``.

        Raises:
            ConfigError: not an ``s3://`` URI with a bucket.
        """
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or not bucket:
            raise ConfigError(f"not an s3://bucket/prefix store: {uri!r}")
        return cls(bucket, prefix.strip("/"), region, kms_key_id, retention, project_tag)

    def key(self, *parts: str) -> str:
        """A key prefix under the store, ending in ``/`` ("" for the bucket's root)."""
        joined = "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))
        return f"{joined}/" if joined else ""

    @property
    def rule_id_prefix(self) -> str:
        """What every lifecycle rule ID of this store starts with."""
        return f"{self.project_tag}:{self.prefix or '/'}:"


@dataclass(frozen=True)
class BucketState:
    """What a bucket has now (``exists`` False: nothing else is known).

    Attributes:
        exists: whether the bucket exists (and is the caller's: another account's is refused
            before a state is built).
        versioning: ``Enabled``, ``Suspended``, or None when it was never turned on.
        encryption: the first rule of the default encryption, or None.
        public_access_block: the four switches, or None when none is set.
        policy: the bucket policy document, or None.
        lifecycle_rules: the lifecycle rules, every one of them.
    """

    exists: bool
    versioning: str | None = None
    encryption: dict[str, Any] | None = None
    public_access_block: dict[str, bool] | None = None
    policy: dict[str, Any] | None = None
    lifecycle_rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Change:
    """One write of the plan.

    Attributes:
        setting: ``bucket``, ``versioning``, ``encryption``, ``public-access-block``, ``policy``
            or ``lifecycle``.
        summary: what changes, for a person.
        request: the write's arguments besides the bucket (the adapter's call takes them).
    """

    setting: str
    summary: str
    request: dict[str, Any]


# --- the desired settings ------------------------------------------------------------------------


def encryption_rule(kms_key_id: str | None) -> dict[str, Any]:
    """The default-encryption rule: SSE-KMS with the bucket key on, or SSE-S3 (AES256)."""
    if kms_key_id:
        return {
            "ApplyServerSideEncryptionByDefault": {
                "SSEAlgorithm": "aws:kms",
                "KMSMasterKeyID": kms_key_id,
            },
            # One data key per bucket instead of a KMS call per object: cheaper, fewer throttles.
            "BucketKeyEnabled": True,
        }
    return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}


def tls_statement(bucket: str) -> dict[str, Any]:
    """The policy statement refusing every request to the bucket not made over TLS."""
    arn = f"arn:aws:s3:::{bucket}"
    return {
        "Sid": TLS_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def lifecycle_rules(scope: BucketScope) -> list[dict[str, Any]]:
    """This store's lifecycle rules, each limited to a prefix (and a tag) nothing in use holds."""
    days = scope.retention
    ident = scope.rule_id_prefix
    rules: list[dict[str, Any]] = [
        {
            "ID": f"{ident}{name}-captured-requests",
            "Status": "Enabled",
            "Filter": {"Prefix": scope.key(name)},
            "Expiration": {"Days": days.captured_requests_days},
        }
        for name in CAPTURE_PREFIXES
    ]
    rules.append(
        {
            "ID": f"{ident}superseded-snapshots",
            "Status": "Enabled",
            "Filter": {
                "And": {
                    "Prefix": scope.key(SNAPSHOTS),
                    "Tags": [{"Key": SUPERSEDED_TAG[0], "Value": SUPERSEDED_TAG[1]}],
                }
            },
            "Expiration": {"Days": days.superseded_snapshots_days},
        }
    )
    rules.append(
        {
            "ID": f"{ident}training-jobs",
            "Status": "Enabled",
            "Filter": {"Prefix": scope.key(TRAINING_JOBS)},
            "Expiration": {"Days": days.training_jobs_days},
        }
    )
    rules.append(
        {
            "ID": f"{ident}noncurrent-versions",
            "Status": "Enabled",
            "Filter": {"Prefix": scope.key()},
            "NoncurrentVersionExpiration": {"NoncurrentDays": days.noncurrent_versions_days},
            # A delete marker left alone once its versions expired lists as nothing: drop it.
            "Expiration": {"ExpiredObjectDeleteMarker": True},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days.incomplete_uploads_days},
        }
    )
    return rules


# --- comparing ---------------------------------------------------------------------------------


def _canonical(value: Any) -> Any:
    """A value compared as AWS means it: a list of one is its item, lists are unordered."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        if len(items) == 1:
            return items[0]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return value


def _same(a: Any, b: Any) -> bool:
    return json.dumps(_canonical(a), sort_keys=True) == json.dumps(_canonical(b), sort_keys=True)


def _encryption_of(rule: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    default = (rule or {}).get("ApplyServerSideEncryptionByDefault", {})
    return default.get("SSEAlgorithm"), default.get("KMSMasterKeyID")


def merged_policy(existing: Mapping[str, Any] | None, bucket: str) -> dict[str, Any] | None:
    """The bucket policy with the TLS-only statement in it; None when it is there already.

    Every other statement stays as it is, and so does the document's ``Version`` and ``Id``.
    """
    wanted = tls_statement(bucket)
    document = dict(existing or {"Version": "2012-10-17"})
    statements = document.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    ours = [s for s in statements if s.get("Sid") == TLS_SID]
    if len(ours) == 1 and _same(ours[0], wanted):
        return None
    document["Statement"] = [s for s in statements if s.get("Sid") != TLS_SID] + [wanted]
    return document


def merged_lifecycle(
    existing: list[dict[str, Any]], scope: BucketScope
) -> list[dict[str, Any]] | None:
    """Every rule that is not this store's, then this store's; None when nothing differs."""
    wanted = lifecycle_rules(scope)
    mine = scope.rule_id_prefix
    ours = {r.get("ID"): r for r in existing if str(r.get("ID", "")).startswith(mine)}
    if set(ours) == {r["ID"] for r in wanted} and all(_same(ours[r["ID"]], r) for r in wanted):
        return None
    others = [r for r in existing if r.get("ID") not in ours]
    return others + wanted


# --- the plan ----------------------------------------------------------------------------------


def plan_setup(state: BucketState, scope: BucketScope) -> list[Change]:
    """The writes that bring the bucket to what the store needs, in the order to apply them.

    Args:
        state: what the bucket has now.
        scope: the store and the settings its bucket must enforce.

    Returns:
        The changes, versioning first (the bucket's creation before it): empty when the
        bucket is set up.
    """
    changes: list[Change] = []
    if not state.exists:
        create: dict[str, Any] = {}
        if scope.region != "us-east-1":  # us-east-1 refuses its own name as a constraint
            create["CreateBucketConfiguration"] = {"LocationConstraint": scope.region}
        changes.append(Change("bucket", f"create bucket {scope.bucket} in {scope.region}", create))
    if state.versioning != "Enabled":
        before = state.versioning or "never enabled"
        changes.append(
            Change(
                "versioning",
                f"versioning: {before} -> Enabled",
                {"VersioningConfiguration": {"Status": "Enabled"}},
            )
        )
    changes.extend(_encryption_change(state, scope))
    if state.public_access_block != PUBLIC_ACCESS_BLOCK:
        off = sorted(k for k in PUBLIC_ACCESS_BLOCK if not (state.public_access_block or {}).get(k))
        changes.append(
            Change(
                "public-access-block",
                f"public access block: turn on {', '.join(off)}",
                {"PublicAccessBlockConfiguration": dict(PUBLIC_ACCESS_BLOCK)},
            )
        )
    policy = merged_policy(state.policy, scope.bucket)
    if policy is not None:
        kept = len(policy["Statement"]) - 1
        changes.append(
            Change(
                "policy",
                f"bucket policy: add {TLS_SID} (deny requests without TLS); "
                f"{kept} other statement(s) kept",
                {"Policy": json.dumps(policy)},
            )
        )
    rules = merged_lifecycle(state.lifecycle_rules, scope)
    if rules is not None:
        days = scope.retention
        kept = len(rules) - len(lifecycle_rules(scope))
        changes.append(
            Change(
                "lifecycle",
                f"lifecycle under {scope.key() or '(bucket root)'}: captured requests "
                f"{days.captured_requests_days} d, superseded snapshots "
                f"{days.superseded_snapshots_days} d, training jobs {days.training_jobs_days} d, "
                f"noncurrent versions {days.noncurrent_versions_days} d, incomplete uploads "
                f"{days.incomplete_uploads_days} d; {kept} other rule(s) kept",
                {"LifecycleConfiguration": {"Rules": rules}},
            )
        )
    return changes


def _encryption_change(state: BucketState, scope: BucketScope) -> list[Change]:
    algorithm, key = _encryption_of(state.encryption)
    bucket_key = bool((state.encryption or {}).get("BucketKeyEnabled"))
    if scope.kms_key_id:
        if algorithm == "aws:kms" and key == scope.kms_key_id and bucket_key:
            return []
        summary = f"default encryption: {algorithm or 'none'} -> SSE-KMS {scope.kms_key_id}"
    elif algorithm in ("AES256", "aws:kms", "aws:kms:dsse"):
        # No key configured means "SSE-S3 at least": a bucket already under KMS is not downgraded.
        return []
    else:
        summary = f"default encryption: {algorithm or 'none'} -> SSE-S3 (AES256)"
    request = {"ServerSideEncryptionConfiguration": {"Rules": [encryption_rule(scope.kms_key_id)]}}
    return [Change("encryption", summary + " (objects written before keep theirs)", request)]


# --- checks of the inputs ------------------------------------------------------------------------


def bucket_kms_key(configured: str | None, environment: str | None) -> str | None:
    """The bucket's default key: ``store.kms_key_id``, else ``MLOPS_KMS_KEY_ID``, else None.

    Raises:
        ConfigError: both are set and name different keys (the store would write objects
            under one and the bucket default under the other).
    """
    if configured and environment and configured != environment:
        raise ConfigError(
            f"store.kms_key_id ({configured}) and MLOPS_KMS_KEY_ID ({environment}) name "
            "different keys: the store writes every object under MLOPS_KMS_KEY_ID; set one "
            "of them, or the same key in both"
        )
    return configured or environment


def check_capture_retention(retention: BucketRetention, experiment_days: Mapping[str, int]) -> None:
    """Refuse a capture retention that an experiment could outlive.

    Args:
        retention: the configured retention.
        experiment_days: each configured model's experiment ``max_days``.

    Raises:
        ConfigError: a model's experiment may run as long as captured requests are kept, so
            the experiment's own captures could expire under it.
    """
    too_long = {m: d for m, d in experiment_days.items() if d >= retention.captured_requests_days}
    if too_long:
        raise ConfigError(
            f"store.retention.captured_requests_days is {retention.captured_requests_days}, but "
            f"experiments may run that long or longer ({too_long} max_days): raise "
            "captured_requests_days above the longest experiment, or lower those max_days"
        )

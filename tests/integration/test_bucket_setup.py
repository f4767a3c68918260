"""``mlops store setup`` against moto server over HTTP: what a new bucket gets, and what is refused.

Each setting is read back with S3's own Get calls on a client of the test's, not through the
code under test. A second run is checked by the write calls it makes (none), counted with
botocore's ``before-call`` events on the client setup uses.

What moto does not prove here: that ``ExpectedBucketOwner`` is enforced (moto has one account
and ignores it), that IAM refuses a write (moto allows every call), that SSE-KMS uses the key
(moto records the key id, encrypts nothing), and that lifecycle rules ever run (moto stores the
configuration; no object expires). Those tests inject S3's answer at the client, and say so.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from adapters.bucket import BucketError, BucketNotReady, StoreBucket
from adapters.snapshots import retire_snapshot
from adapters.store import S3Store
from adapters.versions import publish_version
from cli import main
from core.bucket_plan import TLS_SID, BucketScope, lifecycle_rules, plan_setup
from core.store_config import BucketRetention
from tests.fixtures.home import isolated_env, project_configs
from tests.fixtures.moto import boto_client, use_moto_env

pytestmark = pytest.mark.integration

WRITES = ("Create", "Put", "Delete")


@pytest.fixture
def endpoint(moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    isolated_env(monkeypatch, tmp_path / "home")
    use_moto_env(monkeypatch, moto_server)
    return moto_server


def _name() -> str:
    return f"mlops-setup-{uuid.uuid4().hex[:12]}"


def _scope(bucket: str, **kw: Any) -> BucketScope:
    values: dict[str, Any] = dict(
        region="eu-west-1", kms_key_id=None, retention=BucketRetention(), project_tag="intelli-rate"
    )
    values.update(kw)
    return BucketScope.for_uri(f"s3://{bucket}/store", **values)


def _bucket(scope: BucketScope, endpoint: str) -> tuple[StoreBucket, list[str]]:
    """A StoreBucket on moto, and the list its S3 client appends each operation name to."""
    s3 = boto_client("s3", endpoint)
    calls: list[str] = []
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return StoreBucket(scope, s3=s3, sts=boto_client("sts", endpoint)), calls


def _setup(scope: BucketScope, endpoint: str) -> list[str]:
    bucket, calls = _bucket(scope, endpoint)
    bucket.apply(plan_setup(bucket.read(), scope))
    return calls


def _get(endpoint: str, call: str, bucket: str) -> dict[str, Any]:
    """One Get of a bucket setting; {} when the bucket has none."""
    try:
        return dict(getattr(boto_client("s3", endpoint), call)(Bucket=bucket))
    except ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return {}
        raise


def _settings(endpoint: str, bucket: str) -> dict[str, Any]:
    """Every setting setup touches, as S3 answers it (metadata dropped)."""
    out = {}
    for call in (
        "get_bucket_versioning",
        "get_bucket_encryption",
        "get_public_access_block",
        "get_bucket_policy",
        "get_bucket_lifecycle_configuration",
    ):
        answer = _get(endpoint, call, bucket)
        answer.pop("ResponseMetadata", None)
        out[call] = answer
    return out


def _run_cli(monkeypatch: pytest.MonkeyPatch, capfd: Any, *argv: str) -> tuple[int, str]:
    """``mlops`` as a user runs it (its entry point), in this process: (exit code, output)."""
    capfd.readouterr()
    monkeypatch.setattr(sys, "argv", ["mlops", *argv])
    try:
        main()
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capfd.readouterr()
    return code, captured.out + captured.err


# --- a new bucket ---------------------------------------------------------------------------------


def test_a_new_bucket_gets_every_setting_in_its_region(endpoint: str) -> None:
    scope = _scope(_name())
    _setup(scope, endpoint)
    s3 = boto_client("s3", endpoint)
    assert s3.get_bucket_location(Bucket=scope.bucket)["LocationConstraint"] == "eu-west-1"
    got = _settings(endpoint, scope.bucket)
    assert got["get_bucket_versioning"]["Status"] == "Enabled"
    rule = got["get_bucket_encryption"]["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert got["get_public_access_block"]["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    policy = json.loads(got["get_bucket_policy"]["Policy"])
    (tls,) = [s for s in policy["Statement"] if s.get("Sid") == TLS_SID]
    assert tls["Effect"] == "Deny"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    rules = {r["ID"]: r for r in got["get_bucket_lifecycle_configuration"]["Rules"]}
    ident = "intelli-rate:store:"
    assert rules[f"{ident}capture-captured-requests"]["Filter"] == {"Prefix": "store/capture/"}
    assert rules[f"{ident}capture-captured-requests"]["Expiration"] == {"Days": 90}
    assert rules[f"{ident}datacapture-captured-requests"]["Filter"] == {
        "Prefix": "store/datacapture/"
    }
    snapshots = rules[f"{ident}superseded-snapshots"]
    # Only snapshots cleanup tagged: an untagged (in use) snapshot matches no rule but versions'.
    assert snapshots["Filter"]["And"]["Tags"] == [{"Key": "mlops-superseded", "Value": "true"}]
    assert snapshots["Expiration"] == {"Days": 30}
    assert rules[f"{ident}training-jobs"]["Filter"] == {"Prefix": "store/training-jobs/"}
    noncurrent = rules[f"{ident}noncurrent-versions"]
    assert noncurrent["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert noncurrent["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    # No rule expires a current object under models/: every version in use stays.
    assert not any(
        "Days" in r.get("Expiration", {}) and "models" in json.dumps(r["Filter"])
        for r in rules.values()
    )
    # moto enforces the TLS condition: a plain-HTTP write is refused as S3 would refuse it.
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=scope.bucket, Key="store/x", Body=b"x")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_second_run_changes_nothing_and_writes_nothing(endpoint: str) -> None:
    scope = _scope(_name())
    first = _setup(scope, endpoint)
    assert [c for c in first if c.startswith(WRITES)], first
    before = _settings(endpoint, scope.bucket)
    bucket, calls = _bucket(scope, endpoint)
    assert plan_setup(bucket.read(), scope) == []
    assert bucket.apply([]) == []
    assert not [c for c in calls if c.startswith(WRITES)], calls
    assert _settings(endpoint, scope.bucket) == before


def test_the_command_plans_applies_then_has_nothing_to_change(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    name = _name()
    uri = f"s3://{name}/store"
    code, out = _run_cli(monkeypatch, capfd, "store", "setup", "--store", uri, "--dry-run")
    assert code == 0, out
    assert f"create bucket {name}" in out and "nothing was changed" in out
    assert _get(endpoint, "get_bucket_versioning", name) == {}  # the dry run created nothing
    code, out = _run_cli(monkeypatch, capfd, "store", "setup", "--store", uri)
    assert code == 0, out
    assert "versioning: never enabled -> Enabled" in out and "done: 6 change(s)" in out
    code, out = _run_cli(monkeypatch, capfd, "store", "setup", "--store", uri)
    assert code == 0, out
    assert "nothing to change" in out and "changing" not in out


def test_existing_policy_statements_and_lifecycle_rules_survive(endpoint: str) -> None:
    name = _name()
    s3 = boto_client("s3", endpoint)
    s3.create_bucket(Bucket=name)
    theirs = {
        "Sid": "AnalyticsReads",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{name}/reports/*",
    }
    s3.put_bucket_policy(
        Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [theirs]})
    )
    other_rule = {
        "ID": "reports-expire",
        "Status": "Enabled",
        "Filter": {"Prefix": "reports/"},
        "Expiration": {"Days": 400},
    }
    s3.put_bucket_lifecycle_configuration(
        Bucket=name, LifecycleConfiguration={"Rules": [other_rule]}
    )
    scope = _scope(name)
    _setup(scope, endpoint)
    policy = json.loads(s3.get_bucket_policy(Bucket=name)["Policy"])
    assert theirs in policy["Statement"]
    assert {s.get("Sid") for s in policy["Statement"]} == {"AnalyticsReads", TLS_SID}
    rules = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    assert other_rule in rules
    assert len(rules) == 1 + 5
    # ... and a second run keeps them, changing nothing.
    bucket, _ = _bucket(scope, endpoint)
    assert plan_setup(bucket.read(), scope) == []


def test_the_kms_key_from_the_platform_config_is_the_default(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    """moto records the key and the bucket key switch; it does not encrypt with the key."""
    key_arn = boto_client("kms", endpoint).create_key(Description="store")["KeyMetadata"]["Arn"]
    project_configs(
        monkeypatch,
        tmp_path / "configs",
        {"platform.yaml": {"kms_key_id: null": f"kms_key_id: {key_arn}"}},
    )
    name = _name()
    code, out = _run_cli(monkeypatch, capfd, "store", "setup", "--store", f"s3://{name}")
    assert code == 0, out
    assert f"SSE-KMS {key_arn}" in out
    rule = _get(endpoint, "get_bucket_encryption", name)["ServerSideEncryptionConfiguration"]
    assert rule["Rules"][0]["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": key_arn,
    }
    assert rule["Rules"][0]["BucketKeyEnabled"] is True


# --- bad input: refused before anything changes -------------------------------------------------


def test_another_accounts_bucket_is_refused_before_anything_changes(endpoint: str) -> None:
    """moto ignores ExpectedBucketOwner (it has one account), so S3's answer for a bucket of
    another account, HeadBucket 403, is injected on the client; what moto does prove is that
    nothing was written after it: the bucket's settings are read back unchanged.
    """
    name = _name()
    boto_client("s3", endpoint).create_bucket(Bucket=name)
    before = _settings(endpoint, name)
    scope = _scope(name)
    bucket, calls = _bucket(scope, endpoint)
    owners: list[str] = []

    def foreign(params: dict[str, Any], **_: Any) -> None:
        owners.append(params.get("ExpectedBucketOwner", ""))
        raise ClientError(
            {"Error": {"Code": "403", "Message": "Forbidden"}, "ResponseMetadata": {}},
            "HeadBucket",
        )

    bucket.s3.meta.events.register("before-parameter-build.s3.HeadBucket", foreign)
    with pytest.raises(BucketError, match="not owned by this account") as refused:
        bucket.read()
    assert "Nothing was created or changed" in str(refused.value)
    assert owners == ["123456789012"]  # the check names the caller's account
    assert not [c for c in calls if c.startswith(WRITES)], calls
    assert _settings(endpoint, name) == before


def test_a_name_taken_between_the_read_and_the_create_is_refused(endpoint: str) -> None:
    """moto has one account, so S3's BucketAlreadyExists for a name another account took is
    injected on CreateBucket; moto proves the command wrote nothing after it.
    """
    scope = _scope(_name())
    bucket, calls = _bucket(scope, endpoint)

    def taken(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "BucketAlreadyExists"}}, "CreateBucket")

    bucket.s3.meta.events.register("before-parameter-build.s3.CreateBucket", taken)
    with pytest.raises(BucketError, match="belongs to another account"):
        bucket.apply(plan_setup(bucket.read(), scope))
    assert not [c for c in calls if c.startswith(WRITES)], calls


def test_versioning_that_may_not_be_turned_on_is_refused_with_nothing_changed(
    endpoint: str,
) -> None:
    """moto lets every call through, so the AccessDenied S3 gives a caller without
    s3:PutBucketVersioning is injected on that one call; the bucket is real and read back.
    """
    name = _name()
    s3 = boto_client("s3", endpoint)
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Suspended"})
    before = _settings(endpoint, name)
    scope = _scope(name)
    bucket, calls = _bucket(scope, endpoint)
    attempted: list[str] = []

    def denied(**_: Any) -> None:
        attempted.append("PutBucketVersioning")
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}},
            "PutBucketVersioning",
        )

    bucket.s3.meta.events.register("before-parameter-build.s3.PutBucketVersioning", denied)
    plan = plan_setup(bucket.read(), scope)
    assert next(c.setting for c in plan) == "versioning"  # applied first: refused, nothing else
    with pytest.raises(BucketError) as refused:
        bucket.apply(plan)
    message = str(refused.value)
    assert "Suspended -> Enabled" in message and "nothing was changed" in message
    assert "put-bucket-versioning" in message  # what the owner runs
    assert _settings(endpoint, name) == before
    assert before["get_bucket_versioning"]["Status"] == "Suspended"
    # The refused write was the only one attempted; no write reached the server.
    assert attempted == ["PutBucketVersioning"]
    assert not [c for c in calls if c.startswith(WRITES)], calls


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # An experiment may run 30 days (configs/models): its captures must outlive it.
        ("captured_requests_days: 90", "captured_requests_days: 20"),
        ("training_jobs_days: 7", "training_jobs_days: 2"),
    ],
)
def test_a_bad_retention_is_refused_before_any_call(
    endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: Any,
    edit: str,
    message: str,
) -> None:
    project_configs(monkeypatch, tmp_path / "configs", {"platform.yaml": {edit: message}})
    name = _name()
    code, out = _run_cli(monkeypatch, capfd, "store", "setup", "--store", f"s3://{name}/store")
    assert code == 2, out
    assert "configuration error" in out and message.split(":")[0] in out
    with pytest.raises(ClientError):  # no bucket was created
        boto_client("s3", endpoint).head_bucket(Bucket=name)


# --- the first run against a bucket not set up -------------------------------------------------


@pytest.fixture
def admin(endpoint: str) -> Iterator[Any]:
    yield boto_client("s3", endpoint)


def test_the_first_run_stops_on_a_missing_bucket_naming_setup(endpoint: str) -> None:
    store = S3Store(f"s3://{_name()}/store")
    with pytest.raises(BucketNotReady, match=r"does not exist; run `mlops store setup`"):
        store.put_bytes("snapshots/claim", b"{}", if_none_match=True)


def test_reads_answer_on_a_bucket_not_set_up(endpoint: str, admin: Any) -> None:
    # mlops status and cleanup's plan only read: they still answer, the first write stops.
    name = _name()
    admin.create_bucket(Bucket=name)
    admin.put_object(Bucket=name, Key="store/models/m/latest.json", Body=b"{}")
    store = S3Store(f"s3://{name}/store")
    assert store.list("models/m") == ["models/m/latest.json"]
    assert store.get_bytes("models/m/latest.json") == b"{}"
    with pytest.raises(BucketNotReady, match="versioning never enabled"):
        store.put_bytes("models/m/latest.json", b"{}")


def test_the_first_publish_stops_on_a_bucket_without_versioning_writing_nothing(
    endpoint: str, admin: Any, tmp_path: Path
) -> None:
    name = _name()
    admin.create_bucket(Bucket=name)
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"weights")
    store = S3Store(f"s3://{name}/store")
    with pytest.raises(
        BucketNotReady, match=r"versioning never enabled\); run `mlops store setup`"
    ):
        publish_version(store, "limit_optimiser", {"model.tar.gz": model}, {"snapshot_id": "s"})
    assert admin.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0


# --- superseded snapshots: cleanup tags, the lifecycle rule expires ----------------------------


def test_cleanup_tags_a_superseded_snapshot_so_the_lifecycle_rule_matches_it(
    s3_store_uri: str, moto_server: str
) -> None:
    """moto stores lifecycle rules but never runs them: what is proven is that every file of a
    retired snapshot carries the tag the rule filters on, under the rule's prefix, and still
    exists (its expiry is the bucket's), while a snapshot in use carries no tag.
    """
    store = S3Store(s3_store_uri)
    for sid in ("old", "kept"):
        for name in ("part-00000.parquet", "manifest.json"):
            store.put_bytes(f"snapshots/ds/{sid}/{name}", b"x")
    assert retire_snapshot(store, "ds", "old") == "tagged 2 file(s)"
    scope = _scope(store.bucket)
    (rule,) = [r for r in lifecycle_rules(scope) if r["ID"].endswith("superseded-snapshots")]
    wanted = rule["Filter"]["And"]
    s3 = boto_client("s3", moto_server)
    for sid, tagged in (("old", True), ("kept", False)):
        for name in ("part-00000.parquet", "manifest.json"):
            key = f"store/snapshots/ds/{sid}/{name}"
            assert key.startswith(wanted["Prefix"])
            tags = s3.get_object_tagging(Bucket=store.bucket, Key=key)["TagSet"]
            assert (tags == wanted["Tags"]) is tagged, (key, tags)
            assert s3.head_object(Bucket=store.bucket, Key=key)["ContentLength"] == 1


def test_no_credentials_is_a_one_line_refusal(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    # Before, `mlops store setup` without credentials ended in botocore's traceback.
    import botocore.exceptions

    class NoCredentials:
        def get_caller_identity(self) -> dict[str, str]:
            raise botocore.exceptions.NoCredentialsError()

    def without_credentials(cls: Any, scope: BucketScope, **_: Any) -> StoreBucket:
        return StoreBucket(scope, s3=None, sts=NoCredentials())

    monkeypatch.setattr(StoreBucket, "from_clients_of", classmethod(without_credentials))
    code, output = _run_cli(monkeypatch, capfd, "store", "setup", "--store", f"s3://{_name()}/s")
    assert code == 1, output
    assert "Unable to locate credentials" in output and "AWS_PROFILE" in output
    assert "Traceback" not in output

"""The bucket plan as pure data: what a bucket in each state still needs, and what stays.

``tests/integration/test_bucket_setup.py`` applies these plans on moto server; here every
state is built by hand, so each rule of the plan (order, merging, no downgrade, the checks of
the config) is pinned without a server.
"""

from __future__ import annotations

import json

import pytest

from core.bucket_plan import (
    PUBLIC_ACCESS_BLOCK,
    BucketScope,
    BucketState,
    bucket_kms_key,
    check_capture_retention,
    encryption_rule,
    lifecycle_rules,
    merged_policy,
    plan_setup,
    tls_statement,
)
from core.config import ConfigError
from core.store_config import BucketRetention

KEY = "arn:aws:kms:eu-west-1:123456789012:key/0f0e0d0c-0b0a-0908-0706-050403020100"


def scope(prefix: str = "store", region: str = "eu-west-1", **kw: object) -> BucketScope:
    values: dict[str, object] = dict(
        region=region, kms_key_id=None, retention=BucketRetention(), project_tag="intelli-rate"
    )
    values.update(kw)
    return BucketScope.for_uri(f"s3://bkt/{prefix}", **values)  # type: ignore[arg-type]


def set_up(s: BucketScope, **kw: object) -> BucketState:
    """A bucket exactly as setup leaves it, with ``kw`` replacing some settings."""
    values: dict[str, object] = dict(
        exists=True,
        versioning="Enabled",
        encryption=encryption_rule(s.kms_key_id),
        public_access_block=dict(PUBLIC_ACCESS_BLOCK),
        policy={"Version": "2012-10-17", "Statement": [tls_statement(s.bucket)]},
        lifecycle_rules=lifecycle_rules(s),
    )
    values.update(kw)
    return BucketState(**values)  # type: ignore[arg-type]


def test_a_missing_bucket_is_created_in_its_region_then_versioned_first() -> None:
    plan = plan_setup(BucketState(exists=False), scope())
    assert [c.setting for c in plan] == [
        "bucket",
        "versioning",
        "encryption",
        "public-access-block",
        "policy",
        "lifecycle",
    ]
    assert plan[0].request == {"CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}}


def test_us_east_1_takes_no_location_constraint() -> None:
    # S3 refuses LocationConstraint=us-east-1: the default region is named by omission.
    assert plan_setup(BucketState(exists=False), scope(region="us-east-1"))[0].request == {}


def test_a_set_up_bucket_needs_nothing() -> None:
    s = scope()
    assert plan_setup(set_up(s), s) == []
    k = scope(kms_key_id=KEY)
    assert plan_setup(set_up(k), k) == []


@pytest.mark.parametrize("status", [None, "Suspended"])
def test_versioning_off_or_suspended_is_turned_on(status: str | None) -> None:
    s = scope()
    plan = plan_setup(set_up(s, versioning=status), s)
    assert [c.setting for c in plan] == ["versioning"]
    assert plan[0].request == {"VersioningConfiguration": {"Status": "Enabled"}}


def test_a_bucket_under_kms_is_not_downgraded_when_no_key_is_configured() -> None:
    s = scope()
    assert plan_setup(set_up(s, encryption=encryption_rule(KEY)), s) == []


def test_the_configured_key_replaces_another_key_or_sse_s3_with_the_bucket_key_on() -> None:
    k = scope(kms_key_id=KEY)
    for current in (encryption_rule(None), encryption_rule(KEY.replace("0f0e", "ffff"))):
        (change,) = plan_setup(set_up(k, encryption=current), k)
        rule = change.request["ServerSideEncryptionConfiguration"]["Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == KEY
        assert rule["BucketKeyEnabled"] is True


def test_a_partial_public_access_block_is_completed() -> None:
    s = scope()
    half = dict(PUBLIC_ACCESS_BLOCK, BlockPublicPolicy=False)
    (change,) = plan_setup(set_up(s, public_access_block=half), s)
    assert change.request["PublicAccessBlockConfiguration"] == PUBLIC_ACCESS_BLOCK
    assert "BlockPublicPolicy" in change.summary


def test_the_tls_statement_is_added_beside_other_statements_and_replaces_a_stale_one() -> None:
    theirs = {"Sid": "Reads", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}
    stale = dict(tls_statement("bkt"), Resource="arn:aws:s3:::bkt")  # objects left out
    doc = merged_policy({"Version": "2012-10-17", "Id": "p1", "Statement": [theirs, stale]}, "bkt")
    assert doc is not None
    assert doc["Id"] == "p1"
    assert doc["Statement"] == [theirs, tls_statement("bkt")]
    # A lone statement given as an object, as IAM allows, is kept too.
    doc = merged_policy({"Version": "2012-10-17", "Statement": theirs}, "bkt")
    assert doc is not None and doc["Statement"] == [theirs, tls_statement("bkt")]


def test_a_policy_s3_returns_in_another_spelling_is_the_same_policy() -> None:
    # S3 may answer a one-item list as the item, and lists in another order.
    ours = tls_statement("bkt")
    respelled = dict(ours, Action=["s3:*"], Resource=list(reversed(ours["Resource"])))
    assert merged_policy({"Statement": [respelled]}, "bkt") is None


def test_lifecycle_keeps_other_rules_and_other_stores_rules_and_follows_the_config() -> None:
    s = scope()
    neighbour = lifecycle_rules(scope(prefix="other"))
    account = [{"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}}]
    state = set_up(s, lifecycle_rules=account + neighbour + lifecycle_rules(s))
    assert plan_setup(state, s) == []
    longer = scope(retention=BucketRetention(noncurrent_versions_days=60))
    (change,) = plan_setup(state, longer)
    rules = change.request["LifecycleConfiguration"]["Rules"]
    assert rules[: 1 + len(neighbour)] == account + neighbour
    (noncurrent,) = [r for r in rules if r["ID"] == "intelli-rate:store:noncurrent-versions"]
    assert noncurrent["NoncurrentVersionExpiration"] == {"NoncurrentDays": 60}
    assert f"{1 + len(neighbour)} other rule(s) kept" in change.summary  # 1 + the neighbour's


def test_no_lifecycle_rule_expires_a_current_object_outside_disposable_prefixes() -> None:
    # The argument of docs/aws-account.md as a check: models/, latest.json, experiments and
    # untagged snapshots are never matched by an Expiration in days.
    for rule in lifecycle_rules(scope()):
        if "Days" not in rule.get("Expiration", {}):
            assert set(rule["Expiration"]) <= {"ExpiredObjectDeleteMarker"}
            continue
        text = json.dumps(rule["Filter"])
        assert any(p in text for p in ("capture/", "training-jobs/", "mlops-superseded")), rule


def test_a_store_at_the_bucket_root_scopes_its_rules_to_the_whole_bucket() -> None:
    root = BucketScope.for_uri(
        "s3://bkt",
        region="eu-west-1",
        kms_key_id=None,
        retention=BucketRetention(),
        project_tag="intelli-rate",
    )
    prefixes = {json.dumps(r["Filter"]) for r in lifecycle_rules(root)}
    assert json.dumps({"Prefix": "training-jobs/"}) in prefixes
    assert json.dumps({"Prefix": ""}) in prefixes
    assert root.rule_id_prefix == "intelli-rate:/:"


def test_the_kms_key_comes_from_the_config_or_the_environment_never_two() -> None:
    assert bucket_kms_key(KEY, None) == KEY
    assert bucket_kms_key(None, KEY) == KEY
    assert bucket_kms_key(None, None) is None
    assert bucket_kms_key(KEY, KEY) == KEY
    with pytest.raises(ConfigError, match="different keys"):
        bucket_kms_key(KEY, "alias/other")


def test_captures_must_outlive_every_experiment() -> None:
    retention = BucketRetention(captured_requests_days=30)
    check_capture_retention(retention, {"a": 29})
    with pytest.raises(ConfigError, match=r"'b': 30"):
        check_capture_retention(retention, {"a": 29, "b": 30})


def test_a_uri_without_a_bucket_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        BucketScope.for_uri(
            "s3:///x", region="r", kms_key_id=None, retention=BucketRetention(), project_tag="t"
        )

"""The bucket-setup policy names every action ``mlops store setup`` calls, on the bucket only."""

from __future__ import annotations

import pytest

from adapters.bucket import _WRITES
from adapters.endpoints.iam import RoleError, bucket_setup_policy


def test_the_setup_policy_allows_each_read_and_write_of_setup_on_that_bucket_only() -> None:
    (statement,) = bucket_setup_policy("s3://store-bucket/prefix")["Statement"]
    assert statement["Resource"] == ["arn:aws:s3:::store-bucket"]
    actions = set(statement["Action"])
    # Every write the adapter makes, and its matching read: a missing one is an AccessDenied
    # the first time a person runs setup on a real account.
    for _, action in _WRITES.values():
        assert action in actions
        read = action.replace(":Put", ":Get")
        assert read in actions
    assert {"s3:CreateBucket", "s3:ListBucket"} <= actions
    assert not [a for a in actions if a.endswith(("Object", "*"))]  # no data access


def test_the_setup_policy_needs_an_s3_store() -> None:
    with pytest.raises(RoleError):
        bucket_setup_policy("/var/lib/store")

"""The store's S3 bucket: read its settings, refuse what setup must not touch, apply a plan.

``mlops store setup`` reads the bucket (:meth:`StoreBucket.read`), plans with the pure
:func:`core.bucket_plan.plan_setup` and applies the plan (:meth:`StoreBucket.apply`). Every read
happens, and every refusal is raised, before the first write: a bucket of another account, a
setting these credentials may not read. Writes carry ``ExpectedBucketOwner``, so a bucket that
changed hands between the read and the write is refused by S3 itself.

:func:`require_ready` is the pipeline's side: an :class:`adapters.store.S3Store` calls it once,
before its first listing or write, and a bucket that is missing or not set up (versioning off)
stops the run with "run ``mlops store setup``" instead of a raw ``NoSuchBucket`` or objects
written without versions.
"""

from __future__ import annotations

import json
from typing import Any

from adapters.store_errors import BucketNotReady, StoreError
from core.bucket_plan import BucketScope, BucketState, Change

NOT_FOUND = ("404", "NoSuchBucket", "NotFound")
DENIED = ("403", "AccessDenied", "Forbidden", "AllAccessDisabled")
_ABSENT = {
    "get_bucket_encryption": "ServerSideEncryptionConfigurationNotFoundError",
    "get_public_access_block": "NoSuchPublicAccessBlockConfiguration",
    "get_bucket_policy": "NoSuchBucketPolicy",
    "get_bucket_lifecycle_configuration": "NoSuchLifecycleConfiguration",
}
"""The error each read answers when the bucket has no such setting (not a failure)."""
_WRITES = {
    "versioning": ("put_bucket_versioning", "s3:PutBucketVersioning"),
    "encryption": ("put_bucket_encryption", "s3:PutEncryptionConfiguration"),
    "public-access-block": ("put_public_access_block", "s3:PutBucketPublicAccessBlock"),
    "policy": ("put_bucket_policy", "s3:PutBucketPolicy"),
    "lifecycle": ("put_bucket_lifecycle_configuration", "s3:PutLifecycleConfiguration"),
}
"""Each planned setting's boto3 call and the IAM action it needs."""
PERMISSIONS_HINT = "bucket_setup_policy in adapters/endpoints/iam.py; docs/aws-account.md"


class BucketError(StoreError):
    """The bucket cannot be set up as asked; the message says why and what to do."""


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class StoreBucket:
    """The bucket of one ``s3://`` store, through an S3 and an STS client of one account.

    Args:
        scope: the store's bucket, prefix and the settings the bucket must enforce.
        s3: a boto3 S3 client.
        sts: a boto3 STS client of the same credentials (which account is asking).
    """

    def __init__(self, scope: BucketScope, *, s3: Any, sts: Any) -> None:
        self.scope = scope
        self.s3 = s3
        self.sts = sts
        self._account: str | None = None

    @classmethod
    def from_clients_of(
        cls,
        scope: BucketScope,
        *,
        profile: str | None,
        endpoint_url: str | None,
    ) -> StoreBucket:
        """Build the clients the way every AWS adapter does (:mod:`adapters.aws`)."""
        from adapters.aws import aws_clients

        clients = aws_clients(
            ["s3", "sts"], profile=profile, region=scope.region, endpoint_url=endpoint_url
        )
        return cls(scope, s3=clients["s3"], sts=clients["sts"])

    @property
    def account(self) -> str:
        """The account of the credentials (STS ``GetCallerIdentity``), asked once."""
        if self._account is None:
            try:
                self._account = str(self.sts.get_caller_identity()["Account"])
            except Exception as exc:  # no credentials, no network: say so, in one line
                raise BucketError(
                    f"cannot ask AWS whose credentials these are ({type(exc).__name__}: {exc}); "
                    "set AWS_PROFILE (or credentials allowed to set the bucket up) and run "
                    "`mlops store setup` again. Nothing was created or changed."
                ) from exc
        return self._account

    def read(self) -> BucketState:
        """What the bucket has now; nothing is written.

        Raises:
            BucketError: the bucket is another account's, or a setting may not be read.
        """
        bucket = self.scope.bucket
        owner = {"Bucket": bucket, "ExpectedBucketOwner": self.account}
        try:
            self.s3.head_bucket(**owner)
        except Exception as exc:
            code = _code(exc)
            if code in NOT_FOUND:
                return BucketState(exists=False)
            if code in DENIED:
                raise BucketError(
                    f"bucket {bucket} exists but is not owned by this account ({self.account}), "
                    "or these credentials may not use it (HeadBucket answered 403). Bucket names "
                    "are global: choose another bucket in MLOPS_STORE_URI (or --store), or run "
                    "with credentials of the account that owns it. Nothing was created or changed."
                ) from exc
            raise
        versioning = self._get("get_bucket_versioning", "s3:GetBucketVersioning").get("Status")
        encryption = self._get("get_bucket_encryption", "s3:GetEncryptionConfiguration")
        rules = encryption.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        block = self._get("get_public_access_block", "s3:GetBucketPublicAccessBlock")
        policy = self._get("get_bucket_policy", "s3:GetBucketPolicy").get("Policy")
        lifecycle = self._get("get_bucket_lifecycle_configuration", "s3:GetLifecycleConfiguration")
        return BucketState(
            exists=True,
            versioning=versioning,
            encryption=rules[0] if rules else None,
            public_access_block=block.get("PublicAccessBlockConfiguration"),
            policy=json.loads(policy) if policy else None,
            lifecycle_rules=list(lifecycle.get("Rules", [])),
        )

    def _get(self, call: str, action: str) -> dict[str, Any]:
        """One read of a setting; {} when the bucket has none."""
        try:
            return dict(
                getattr(self.s3, call)(Bucket=self.scope.bucket, ExpectedBucketOwner=self.account)
            )
        except Exception as exc:
            code = _code(exc)
            if code == _ABSENT.get(call):
                return {}
            if code in DENIED:
                raise BucketError(
                    f"these credentials may not read bucket {self.scope.bucket}'s settings "
                    f"({action}: {code}); grant the read actions of {PERMISSIONS_HINT}. "
                    "Nothing was changed."
                ) from exc
            raise

    def apply(self, changes: list[Change]) -> list[str]:
        """Make each change in order; returns the settings changed.

        Raises:
            BucketError: S3 refused a write; the message names what was applied before it.
        """
        done: list[str] = []
        for change in changes:
            try:
                self._write(change)
            except Exception as exc:
                if _code(exc) == "BucketAlreadyExists":  # taken since the read, by someone else
                    raise BucketError(
                        f"bucket name {self.scope.bucket} belongs to another account: choose "
                        "another bucket in MLOPS_STORE_URI (or --store). Nothing was changed."
                    ) from exc
                if _code(exc) not in DENIED:
                    raise
                raise self._refused(change, done, _code(exc)) from exc
            done.append(change.setting)
        return done

    def _write(self, change: Change) -> None:
        bucket = self.scope.bucket
        if change.setting == "bucket":
            self.s3.create_bucket(Bucket=bucket, **change.request)
            # S3 is eventually consistent about a new bucket: wait until it answers HEAD.
            self.s3.get_waiter("bucket_exists").wait(
                Bucket=bucket, WaiterConfig={"Delay": 2, "MaxAttempts": 30}
            )
            return
        call = _WRITES[change.setting][0]
        getattr(self.s3, call)(Bucket=bucket, ExpectedBucketOwner=self.account, **change.request)

    def _refused(self, change: Change, done: list[str], code: str) -> BucketError:
        bucket = self.scope.bucket
        action = _WRITES.get(change.setting, ("", "s3:CreateBucket"))[1]
        before = f"already applied: {', '.join(done)}" if done else "nothing was changed"
        if change.setting == "versioning":
            return BucketError(
                f"bucket {bucket} has no versioning ({change.summary}) "
                f"and these credentials may not turn it on ({action}: {code}); {before}. Ask the "
                f"bucket's owner to run `aws s3api put-bucket-versioning --bucket {bucket} "
                "--versioning-configuration Status=Enabled`, or grant s3:PutBucketVersioning "
                f"({PERMISSIONS_HINT}), then run `mlops store setup` again."
            )
        return BucketError(
            f"S3 refused to change bucket {bucket}'s {change.setting} ({action}: {code}); "
            f"{before}. Grant {action} ({PERMISSIONS_HINT}) and run `mlops store setup` "
            "again: it changes only what is still missing."
        )


def require_ready(client: Any, bucket: str, uri: str) -> None:
    """Stop unless the store's bucket exists with versioning on (what setup does first).

    Credentials that may not read the versioning (a pipeline role without
    ``s3:GetBucketVersioning``) are let through: the check is a guide, not a gate.

    Raises:
        BucketNotReady: the bucket is missing, or its versioning is off or suspended.
    """
    try:
        status = client.get_bucket_versioning(Bucket=bucket).get("Status")
    except Exception as exc:
        code = _code(exc)
        if code in NOT_FOUND:
            raise BucketNotReady(
                f"the store {uri}: bucket {bucket} does not exist; run `mlops store setup` "
                "(with credentials that may create it) before the first run"
            ) from exc
        if code in DENIED:
            return
        raise
    if status != "Enabled":
        raise BucketNotReady(
            f"the store {uri}: bucket {bucket} is not set up (versioning "
            f"{status or 'never enabled'}); run `mlops store setup` before the first run"
        )

"""The SageMaker execution role: least-privilege policy documents as data, and an idempotent ensure.

SageMaker assumes this role to pull the serving image, read the model from the store, write
captured requests back to the store, run the project's training jobs (read a job's channel, write
its model) and send logs and metrics to CloudWatch. The documents are
built by pure functions (tested without AWS); :func:`ensure_role` creates the role or brings an
existing one up to date, so running it on every deploy is safe.

Nothing here runs when ``MLOPS_SAGEMAKER_ROLE_ARN`` is set: the platform team's role is used as is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from adapters.layout import MODELS, TRAINING_JOBS

POLICY_VERSION = "2012-10-17"
ROLE_SUFFIX = "sagemaker-execution"
POLICY_NAME = "serving"

_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[a-z0-9._/-]+?)(?::[\w.-]+|@sha256:[0-9a-f]{64})?$"
)


class RoleError(RuntimeError):
    """The execution role cannot be built or written."""


@dataclass(frozen=True)
class StoreLocation:
    """Bucket and key prefix of the model store (``s3://bucket/prefix``)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> StoreLocation:
        """Split ``s3://bucket/prefix``.

        Raises:
            RoleError: not an ``s3://`` URI; SageMaker reads models from S3 only.
        """
        if not uri.startswith("s3://"):
            raise RoleError(f"SageMaker reads models from S3; the store is {uri!r}")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise RoleError(f"no bucket in {uri!r}")
        return cls(bucket=bucket, prefix=prefix.strip("/"))

    def key(self, *parts: str) -> str:
        """A key under the prefix (no leading slash)."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))


def role_name(project_tag: str) -> str:
    """Name of the project's execution role (IAM allows 64 characters; the tag has 31 at most)."""
    return f"{project_tag}-{ROLE_SUFFIX}"


def trust_policy(account_id: str | None = None) -> dict[str, Any]:
    """Who may assume the role: SageMaker only, and (given the account) only for this account.

    The ``aws:SourceAccount`` condition closes the confused-deputy hole: another account's
    SageMaker cannot be tricked into using this role. The target passes the account from
    ``sts.get_caller_identity()`` (:func:`caller_account`).
    """
    statement: dict[str, Any] = {
        "Sid": "SageMakerAssumesRole",
        "Effect": "Allow",
        "Principal": {"Service": "sagemaker.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }
    if account_id:
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": account_id}}
    return {"Version": POLICY_VERSION, "Statement": [statement]}


def ecr_image(image: str | None) -> bool:
    """Whether ``image`` is an ECR image URI (``<account>.dkr.ecr.<region>.amazonaws.com/...``)."""
    return bool(_ECR_IMAGE.match(image or ""))


def _ecr_repository_arn(image: str | None) -> str:
    match = _ECR_IMAGE.match(image or "")
    if not match:
        # Granting ecr pull on "*" for an image SageMaker cannot pull anyway would be a
        # permission with no use: refuse instead.
        raise RoleError(
            f"serving image {image!r} is not in ECR: SageMaker pulls only from ECR; push it "
            "to <account>.dkr.ecr.<region>.amazonaws.com/<repository>"
        )
    partition = "aws-cn" if ".amazonaws.com.cn/" in (image or "") else "aws"
    return (
        f"arn:{partition}:ecr:{match['region']}:{match['account']}:repository/{match['repository']}"
    )


VPC_STATEMENTS: tuple[dict[str, Any], ...] = (
    {
        # A model or training job with a VpcConfig (core.endpoint_config): SageMaker creates
        # and deletes its instances' network interfaces in the subnets as this role. In the
        # policy whether a VPC is configured or not: the role serves every model and is
        # rewritten on each deploy, so a statement following one model's VPC would come and go.
        # EC2 offers no resource to scope the Describe calls to.
        "Sid": "VpcNetworkInterfaces",
        "Effect": "Allow",
        "Action": [
            "ec2:CreateNetworkInterface",
            "ec2:CreateNetworkInterfacePermission",
            "ec2:DeleteNetworkInterface",
            "ec2:DeleteNetworkInterfacePermission",
            "ec2:DescribeNetworkInterfaces",
            "ec2:DescribeVpcs",
            "ec2:DescribeDhcpOptions",
            "ec2:DescribeSubnets",
            "ec2:DescribeSecurityGroups",
        ],
        "Resource": "*",
    },
)
"""What SageMaker needs, as the execution role, to put a model's or job's instances in a VPC."""

AUTOSCALING_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"
AUTOSCALING_ROLE = "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"


def autoscaling_policy() -> dict[str, Any]:
    """What the identity running rollouts and cleanup needs for endpoint autoscaling.

    Not the execution role's (SageMaker assumes that for the containers, which never call
    Application Auto Scaling): the deployer's, for a platform team to attach beside its
    SageMaker rights. The first ``RegisterScalableTarget`` of an account creates Application
    Auto Scaling's service-linked role for SageMaker, which only that service may assume; the
    target-tracking policy's CloudWatch alarms are made and deleted through it.
    """
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Sid": "EndpointAutoscaling",
                "Effect": "Allow",
                "Action": [
                    "application-autoscaling:RegisterScalableTarget",
                    "application-autoscaling:DeregisterScalableTarget",
                    "application-autoscaling:DescribeScalableTargets",
                    "application-autoscaling:PutScalingPolicy",
                    "application-autoscaling:DeleteScalingPolicy",
                    "application-autoscaling:DescribeScalingPolicies",
                ],
                # Scalable targets have generated ids, not names a policy could list up front.
                "Resource": "*",
            },
            {
                # Application Auto Scaling reads the variant and sets its instance count.
                "Sid": "ScaledEndpoints",
                "Effect": "Allow",
                "Action": [
                    "sagemaker:DescribeEndpoint",
                    "sagemaker:DescribeEndpointConfig",
                    "sagemaker:UpdateEndpointWeightsAndCapacities",
                ],
                "Resource": "*",
            },
            {
                "Sid": "AutoscalingServiceLinkedRole",
                "Effect": "Allow",
                "Action": "iam:CreateServiceLinkedRole",
                "Resource": (
                    f"arn:aws:iam::*:role/aws-service-role/{AUTOSCALING_SERVICE}/{AUTOSCALING_ROLE}"
                ),
                "Condition": {"StringLike": {"iam:AWSServiceName": AUTOSCALING_SERVICE}},
            },
        ],
    }


def permission_policy(
    store_uri: str,
    *,
    region: str,
    serving_image: str | None,
    kms_key_id: str | None = None,
) -> dict[str, Any]:
    """What the role may do, and nothing more.

    Args:
        store_uri: ``s3://bucket/prefix`` of the model store.
        region: region of the endpoints (scopes the log groups).
        serving_image: ECR URI of the serving image; pull rights are scoped to its repository.
        kms_key_id: the store's KMS key; adds decrypt (and data-key rights for captured data).

    Raises:
        RoleError: the store is not on S3.
    """
    store = StoreLocation.parse(store_uri)
    bucket_arn = f"arn:aws:s3:::{store.bucket}"
    models = store.key(MODELS)
    capture = store.key("datacapture")
    jobs = store.key(TRAINING_JOBS)
    statements: list[dict[str, Any]] = [
        {
            # model.tar.gz (or the unpacked S3Prefix) of every published version; nothing else.
            "Sid": "ReadPublishedModels",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"{bucket_arn}/{models}/*"],
        },
        {
            # Only the uncompressed S3Prefix data source lists; limited to the models prefix.
            "Sid": "ListPublishedModels",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [bucket_arn],
            "Condition": {"StringLike": {"s3:prefix": [f"{models}/*"]}},
        },
        {
            # Data capture writes as the model's execution role.
            "Sid": "WriteCapturedRequests",
            "Effect": "Allow",
            "Action": ["s3:PutObject"],
            "Resource": [f"{bucket_arn}/{capture}/*"],
        },
        {
            # A training job (adapters.training) reads its channel and writes model.tar.gz
            # under its own training-jobs/{job}/ prefix; nothing else of the store.
            "Sid": "ReadTrainingChannels",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"{bucket_arn}/{jobs}/*/input/*"],
        },
        {
            # File mode lists the channel's S3Prefix before downloading it.
            "Sid": "ListTrainingChannels",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [bucket_arn],
            "Condition": {"StringLike": {"s3:prefix": [f"{jobs}/*/input/*"]}},
        },
        {
            "Sid": "WriteTrainingOutput",
            "Effect": "Allow",
            "Action": ["s3:PutObject"],
            "Resource": [f"{bucket_arn}/{jobs}/*/output/*"],
        },
        {
            "Sid": "ContainerLogs",
            "Effect": "Allow",
            "Action": [
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "logs:DescribeLogStreams",
            ],
            "Resource": [
                f"arn:aws:logs:{region}:*:log-group:/aws/sagemaker/Endpoints/*",
                f"arn:aws:logs:{region}:*:log-group:/aws/sagemaker/TrainingJobs*",
            ],
        },
        {
            # PutMetricData has no resource-level permissions; the namespace condition narrows it.
            "Sid": "ContainerMetrics",
            "Effect": "Allow",
            "Action": ["cloudwatch:PutMetricData"],
            "Resource": "*",
            "Condition": {"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*"]}},
        },
        {
            # GetAuthorizationToken is account-wide by design: it has no resource to scope.
            "Sid": "EcrLogin",
            "Effect": "Allow",
            "Action": ["ecr:GetAuthorizationToken"],
            "Resource": "*",
        },
        {
            "Sid": "PullServingImage",
            "Effect": "Allow",
            "Action": [
                "ecr:BatchCheckLayerAvailability",
                "ecr:GetDownloadUrlForLayer",
                "ecr:BatchGetImage",
            ],
            # An image outside ECR (or not yet known) cannot be scoped to a repository.
            "Resource": [_ecr_repository_arn(serving_image)],
        },
        *VPC_STATEMENTS,
    ]
    if kms_key_id:
        key: dict[str, Any] = {
            "Sid": "StoreKmsKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
        }
        if kms_key_id.startswith("arn:") and ":key/" in kms_key_id:
            key["Resource"] = [kms_key_id]
        else:
            # A bare key id or an alias has no key ARN to name (aliases are not policy
            # resources); allow the key only when S3 asks for it on the role's behalf.
            key["Resource"] = "*"
            key["Condition"] = {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}
        statements.append(key)
    return {"Version": POLICY_VERSION, "Statement": statements}


BUCKET_SETUP_ACTIONS = (
    "s3:CreateBucket",
    "s3:ListBucket",  # HeadBucket: whether it exists, and whose it is
    "s3:GetBucketLocation",
    "s3:GetBucketVersioning",
    "s3:PutBucketVersioning",
    "s3:GetEncryptionConfiguration",
    "s3:PutEncryptionConfiguration",
    "s3:GetBucketPublicAccessBlock",
    "s3:PutBucketPublicAccessBlock",
    "s3:GetBucketPolicy",
    "s3:PutBucketPolicy",
    "s3:GetLifecycleConfiguration",
    "s3:PutLifecycleConfiguration",
)
"""What ``mlops store setup`` calls on the store's bucket (:mod:`adapters.bucket`)."""


def bucket_setup_policy(store_uri: str) -> dict[str, Any]:
    """What the person or CI job running ``mlops store setup`` may do: the bucket's settings.

    Not part of the execution role: SageMaker never changes the bucket, and neither does the
    pipeline's weekly run, which only checks that versioning is on (``s3:GetBucketVersioning``).

    Raises:
        RoleError: the store is not on S3.
    """
    store = StoreLocation.parse(store_uri)
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Sid": "SetUpStoreBucket",
                "Effect": "Allow",
                "Action": list(BUCKET_SETUP_ACTIONS),
                "Resource": [f"arn:aws:s3:::{store.bucket}"],
            }
        ],
    }


def project_role(
    iam: Any,
    sts: Any,
    project_tag: str,
    store_uri: str,
    *,
    region: str,
    serving_image: str | None,
    kms_key_id: str | None = None,
) -> str:
    """The project's execution role, created or brought up to date; its ARN.

    One role serves the endpoints and the training jobs (:func:`permission_policy`); only
    SageMaker acting for this account may assume it (the confused deputy).

    Raises:
        RoleError: the store is not on S3, the image is not in ECR, or STS or IAM refused.
    """
    permissions = permission_policy(
        store_uri, region=region, serving_image=serving_image, kms_key_id=kms_key_id
    )
    if sts is None:
        raise RoleError(
            "no STS client: the role's trust policy needs this account's id "
            "(aws:SourceAccount); build the client with from_settings"
        )
    return ensure_role(
        iam,
        role_name(project_tag),
        trust_policy(caller_account(sts)),
        permissions,
        {"project": project_tag},
    )


def caller_account(sts: Any) -> str:
    """The AWS account id of the credentials in use (``sts.get_caller_identity()``).

    Raises:
        RoleError: STS refused (no credentials, or no network).
    """
    try:
        return str(sts.get_caller_identity()["Account"])
    except Exception as exc:
        raise RoleError(f"cannot read the AWS account (sts get-caller-identity): {exc}") from exc


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _as_dict(document: Any) -> Any:
    # IAM returns policy documents URL-decoded as dicts through boto3, as strings elsewhere.
    return json.loads(document) if isinstance(document, str) else document


def ensure_role(
    iam: Any,
    name: str,
    trust: dict[str, Any],
    permissions: dict[str, Any],
    tags: dict[str, str],
) -> str:
    """Create the role or bring it up to date; return its ARN.

    Idempotent: an existing role gets the trust document and the inline policy rewritten only
    when they differ, so a retry or a second deploy changes nothing.

    Args:
        iam: a boto3 IAM client.
        name: role name.
        trust: the trust (assume-role) policy document.
        permissions: the inline permission policy document.
        tags: tags for a newly created role (the ``project`` tag at least).

    Raises:
        RoleError: IAM refused.
    """
    try:
        try:
            role = iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(trust),
                Description="SageMaker execution role of the MLOps pipeline's endpoints",
                Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())],
            )["Role"]
            # IAM's own waiter: the role is readable everywhere before anything uses it (the
            # model creation retries further while SageMaker cannot assume it yet).
            iam.get_waiter("role_exists").wait(
                RoleName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
            )
        except Exception as exc:
            if _code(exc) != "EntityAlreadyExists":
                raise
            role = iam.get_role(RoleName=name)["Role"]
            if _as_dict(role.get("AssumeRolePolicyDocument")) != trust:
                iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
        try:
            current = _as_dict(
                iam.get_role_policy(RoleName=name, PolicyName=POLICY_NAME)["PolicyDocument"]
            )
        except Exception as exc:
            if _code(exc) != "NoSuchEntity":
                raise
            current = None
        if current != permissions:
            iam.put_role_policy(
                RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(permissions)
            )
    except RoleError:
        raise
    except Exception as exc:
        raise RoleError(f"cannot create or update IAM role {name!r}: {exc}") from exc
    return str(role["Arn"])

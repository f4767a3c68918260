"""The SageMaker endpoint target: real-time or serverless endpoints through boto3.

One endpoint per model, named ``{project_tag}-{model}``, moved between endpoint configs by
SageMaker's blue/green update. Every model and endpoint config is named
``{project_tag}-{model}-{version}-{hash}``, where the hash covers what the resource holds (the
version's manifest sha256, image, role and data source for a model; the variant and data capture
for a config). The same deploy therefore always asks for the same names: a retry finds its own
resources ("already exists" with a matching definition counts as created) instead of making
duplicates, and a changed instance type gets a new config rather than an error.

A rollout ends one of two ways:

- the endpoint is ``InService`` on the new config: success;
- anything else raises :class:`~adapters.endpoints.RolloutFailed`, after putting things back: an
  endpoint created by this attempt is deleted, an updated one is left on the config SageMaker
  rolled it back to, and the config and model made for the attempt are deleted unless an endpoint
  still references them.

SageMaker's automatic rollback ends ``InService`` on the *old* config, which the
``endpoint_in_service`` waiter reports as success; the wait here is a poll loop that reports
progress and compares ``EndpointConfigName`` and ``FailureReason`` once the endpoint settles.

Clients are built by :meth:`SageMakerTarget.from_settings` (or passed in); nothing happens at
import time.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from adapters.endpoints import Resource, RolloutFailed, Serving, VersionToServe
from adapters.endpoints.iam import (
    RoleError,
    ensure_role,
    permission_policy,
    role_name,
    trust_policy,
)

if TYPE_CHECKING:
    from core.config import DeploymentStrategy, EndpointConfig, PlatformConfig
    from core.settings import Settings

VARIANT = "AllTraffic"
"""The single production variant. Blue/green updates need the same variant name in both configs."""

MAX_NAME = 63
SETTLING = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"})
"""Statuses SageMaker moves out of by itself; anything else is where the endpoint stays."""
NOT_SERVING = frozenset({"Failed", "OutOfService", "Deleting"})
"""Statuses in which an endpoint answers nothing, whichever config it still names."""

MIN_EXECUTION_TIMEOUT = 600
MAX_EXECUTION_TIMEOUT = 28800
PROVISIONING_ALLOWANCE = 600
"""Seconds allowed for the new fleet to come up, on top of the strategy's own waits."""

TAG_PROJECT = "project"
TAG_MODEL = "model"
TAG_VERSION = "version"

_TAG_VALUE = re.compile(r"[^\w.:/=+\-@ ]")

Progress = Callable[[str], None]


# --- names, costs and deployment configs: pure ----------------------------------------------------


def _slug(text: str) -> str:
    """SageMaker names allow letters, digits and single hyphens only."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def _digest(*parts: Any, size: int = 10) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:size]


def endpoint_name(project_tag: str, model: str) -> str:
    """The model's stable endpoint name, ``{project_tag}-{model}`` (underscores to hyphens).

    A name past 63 characters is cut and completed with a hash of the full name, so it stays
    unique per model.
    """
    full = _slug(f"{project_tag}-{model}")
    if len(full) <= MAX_NAME:
        return full
    suffix = f"-{_digest(full, size=8)}"
    return full[: MAX_NAME - len(suffix)].rstrip("-") + suffix


def resource_name(project_tag: str, model: str, version: str, content_hash: str) -> str:
    """``{project_tag}-{model}-{version}-{hash}`` within 63 characters.

    The project and model part is cut first when too long; the version and hash always survive,
    and the project tag (at most 31 characters) stays the prefix that listing relies on.
    """
    suffix = f"-{_slug(version)}-{content_hash}"
    head = _slug(f"{project_tag}-{model}")[: MAX_NAME - len(suffix)].rstrip("-")
    return head + suffix


def monthly_cost(endpoint: EndpointConfig, platform: PlatformConfig) -> float | None:
    """USD per month of an always-on instance endpoint; None for serverless or an unpriced type.

    Serverless is billed per use (GB-seconds of compute), so it has no fixed monthly figure.
    """
    if endpoint.serverless is not None:
        return None
    hourly = platform.pricing.instance_hourly_usd.get(endpoint.instance_type)
    if hourly is None:
        return None
    return round(hourly * endpoint.instance_count * platform.pricing.hours_per_month, 2)


def cost_line(endpoint: EndpointConfig, platform: PlatformConfig, region: str) -> str:
    """One sentence on what the endpoint costs, printed before anything is created."""
    pricing = platform.pricing
    where = f"{pricing.region} on-demand"
    if pricing.region != region:
        where += f"; the endpoint runs in {region}, prices there may differ"
    if endpoint.serverless is not None:
        gb = endpoint.serverless.memory_mb / 1024
        per_hour = gb * 3600 * pricing.serverless_gb_second_usd
        return (
            f"serverless {endpoint.serverless.memory_mb} MB, up to "
            f"{endpoint.serverless.max_concurrency} concurrent: billed per use, "
            f"${pricing.serverless_gb_second_usd}/GB-second (${per_hour:.3f} per busy hour per "
            f"concurrent request; {where})"
        )
    cost = monthly_cost(endpoint, platform)
    if cost is None:
        return (
            f"{endpoint.instance_count} x {endpoint.instance_type}: no price in "
            f"configs/platform.yaml (pricing.instance_hourly_usd), cost unknown"
        )
    hourly = pricing.instance_hourly_usd[endpoint.instance_type]
    return (
        f"{endpoint.instance_count} x {endpoint.instance_type} at ${hourly}/hour: about "
        f"${cost:,.2f} per month ({where}); a blue/green update runs both fleets while it lasts"
    )


def _shift_waits(strategy: DeploymentStrategy) -> int:
    """How many ``wait_seconds`` intervals a traffic shift takes."""
    if strategy.type == "linear":
        return -(-100 // strategy.linear_step_percent)
    if strategy.type == "canary":
        return 2
    return 1


def execution_timeout(strategy: DeploymentStrategy) -> int:
    """``MaximumExecutionTimeoutInSeconds``: every wait, the baking period and provisioning.

    SageMaker wants it above the sum of its waits and within 600..28800 seconds; past it
    SageMaker rolls the update back by itself.
    """
    total = (
        _shift_waits(strategy) * strategy.wait_seconds
        + strategy.baking_seconds
        + PROVISIONING_ALLOWANCE
    )
    return max(MIN_EXECUTION_TIMEOUT, min(MAX_EXECUTION_TIMEOUT, total))


def deployment_config(strategy: DeploymentStrategy) -> dict[str, Any]:
    """SageMaker's ``DeploymentConfig`` (blue/green) for ``strategy``.

    ``wait_seconds`` is the interval between traffic shifts (for all-at-once, the time the new
    fleet takes all traffic with alarms watched), ``baking_seconds`` the wait before the old fleet
    is terminated. Alarms, when named, roll the update back when they fire.
    """
    routing: dict[str, Any] = {
        "Type": {"all_at_once": "ALL_AT_ONCE", "canary": "CANARY", "linear": "LINEAR"}[
            strategy.type
        ],
        "WaitIntervalInSeconds": strategy.wait_seconds,
    }
    if strategy.type == "canary":
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": strategy.canary_percent}
    elif strategy.type == "linear":
        routing["LinearStepSize"] = {
            "Type": "CAPACITY_PERCENT",
            "Value": strategy.linear_step_percent,
        }
    config: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": strategy.baking_seconds,
            "MaximumExecutionTimeoutInSeconds": execution_timeout(strategy),
        }
    }
    if strategy.alarms:
        config["AutoRollbackConfiguration"] = {
            "Alarms": [{"AlarmName": name} for name in strategy.alarms]
        }
    return config


def _tag_value(value: str) -> str:
    # SageMaker tag values: 256 characters of letters, digits, spaces and _.:/=+-@.
    return _TAG_VALUE.sub("_", str(value))[:256]


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k[:128], "Value": _tag_value(v)} for k, v in sorted(tags.items())]


def _tag_dict(tags: list[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags}


# --- boto3 error helpers ------------------------------------------------------------------------


def _error(exc: Exception) -> tuple[str, str]:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", exc))


def _is_client_error(exc: Exception) -> bool:
    return bool(getattr(exc, "response", None))


def _already_exists(exc: Exception) -> bool:
    code, message = _error(exc)
    return code == "ValidationException" and "already exist" in message.lower()


def _not_found(exc: Exception) -> bool:
    code, message = _error(exc)
    return code in ("ValidationException", "ResourceNotFound") and (
        "could not find" in message.lower() or "does not exist" in message.lower()
    )


@dataclass(frozen=True)
class Names:
    """The three names one deploy uses."""

    endpoint: str
    config: str
    model: str


@dataclass
class _Live:
    """What live endpoints reference right now (current and pending configs, their models)."""

    configs: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_descriptions: dict[str, dict[str, Any]] = field(default_factory=dict)


class _StillSettling(Exception):
    def __init__(self, description: dict[str, Any], elapsed: float) -> None:
        super().__init__(description.get("EndpointStatus"))
        self.description = description
        self.elapsed = elapsed


class SageMakerTarget:
    """Serve model versions from SageMaker endpoints (see the module docstring).

    Args:
        sagemaker: boto3 ``sagemaker`` client.
        runtime: boto3 ``sagemaker-runtime`` client.
        iam: boto3 ``iam`` client (only used when no role ARN is given).
        cloudwatch: boto3 ``cloudwatch`` client (idle days).
        platform: project tag, pricing, retention.
        store_uri: ``s3://bucket/prefix`` of the model store (role policy, data capture).
        region: the region the clients talk to.
        serving_image: ECR URI of the serving image.
        role_arn: an existing execution role; when None the project's role is ensured.
        kms_key_id: the store's KMS key (role policy, captured data).
        poll_seconds: pause between status polls.
        timeout_seconds: longest wait for the endpoint to settle; default each model's
            ``endpoint.timeout_seconds``.
        heartbeat_seconds: report "still waiting" this often when the status does not change.
        sleep: pause function (tests pass a fast one).
        clock: monotonic clock.
    """

    kind = "sagemaker"

    def __init__(
        self,
        *,
        sagemaker: Any,
        runtime: Any,
        iam: Any,
        cloudwatch: Any,
        platform: PlatformConfig,
        store_uri: str,
        region: str,
        serving_image: str | None,
        role_arn: str | None = None,
        kms_key_id: str | None = None,
        poll_seconds: float = 15.0,
        timeout_seconds: float | None = None,
        heartbeat_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sm = sagemaker
        self.runtime = runtime
        self.iam = iam
        self.cloudwatch = cloudwatch
        self.platform = platform
        self.store_uri = store_uri.rstrip("/")
        self.region = region
        self.serving_image = serving_image
        self.role_arn = role_arn
        self.kms_key_id = kms_key_id
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self._sleep = sleep
        self._clock = clock
        self.prefix = f"{platform.project_tag}-"

    @classmethod
    def from_settings(
        cls, settings: Settings, platform: PlatformConfig, **options: Any
    ) -> SageMakerTarget:
        """Build the clients from settings: region, ``AWS_ENDPOINT_URL`` and profile.

        Args:
            settings: where AWS is and which image and role to use.
            platform: project tag, pricing, retention.
            **options: passed to the constructor (``poll_seconds``, ``timeout_seconds``...).
        """
        import boto3  # local: importing the target must not cost boto3's import
        from botocore.config import Config

        session = boto3.session.Session(
            profile_name=settings.aws_profile, region_name=settings.aws_region
        )
        # Standard retries back off on throttling, which a busy account's SageMaker API does;
        # the read timeout leaves room for SageMaker's 60 s invocation limit.
        config = Config(
            retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=70
        )

        url = settings.aws_endpoint_url
        return cls(
            sagemaker=session.client("sagemaker", endpoint_url=url, config=config),
            runtime=session.client("sagemaker-runtime", endpoint_url=url, config=config),
            iam=session.client("iam", endpoint_url=url, config=config),
            cloudwatch=session.client("cloudwatch", endpoint_url=url, config=config),
            platform=platform,
            store_uri=settings.store,
            region=settings.aws_region,
            serving_image=settings.serving_image,
            role_arn=settings.sagemaker_role_arn,
            kms_key_id=settings.kms_key_id,
            **{"poll_seconds": settings.sagemaker_poll_seconds, **options},
        )

    # --- names and request bodies ----------------------------------------------------------------

    def _environment(self, target: VersionToServe) -> dict[str, str]:
        return {
            "MLOPS_MODEL_NAME": target.model,
            "MLOPS_MODEL_VERSION": target.version,
            "MLOPS_MODEL_CONTENTS_SHA256": target.contents_sha256,
        }

    def _container(self, target: VersionToServe) -> dict[str, Any]:
        container: dict[str, Any] = {
            "Image": self.serving_image,
            "Environment": self._environment(target),
        }
        if target.endpoint.model_data == "uncompressed":
            container["ModelDataSource"] = {
                "S3DataSource": {
                    "S3Uri": f"{target.version_uri.rstrip('/')}/model/",
                    "S3DataType": "S3Prefix",
                    "CompressionType": "None",
                }
            }
        else:
            container["ModelDataUrl"] = target.model_data_uri
        return container

    def _variant(self, endpoint: EndpointConfig, model_name: str) -> dict[str, Any]:
        variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name}
        if endpoint.serverless is not None:
            variant["ServerlessConfig"] = {
                "MemorySizeInMB": endpoint.serverless.memory_mb,
                "MaxConcurrency": endpoint.serverless.max_concurrency,
            }
        else:
            variant.update(
                InstanceType=endpoint.instance_type,
                InitialInstanceCount=endpoint.instance_count,
                InitialVariantWeight=1.0,
            )
        return variant

    def _data_capture(self, target: VersionToServe) -> dict[str, Any] | None:
        percent = target.endpoint.data_capture_percent
        # Serverless endpoints do not support data capture.
        if percent == 0 or target.endpoint.serverless is not None:
            return None
        capture: dict[str, Any] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": percent,
            "DestinationS3Uri": f"{self.store_uri}/datacapture/{target.model}",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        }
        if self.kms_key_id:
            capture["KmsKeyId"] = self.kms_key_id
        return capture

    def names_for(self, target: VersionToServe, role_arn: str | None = None) -> Names:
        """The endpoint, endpoint-config and model names ``target`` deploys to."""
        tag = self.platform.project_tag
        role = role_arn if role_arn is not None else (self.role_arn or "")
        model = resource_name(
            tag,
            target.model,
            target.version,
            _digest(
                target.manifest_sha256,
                self._container(target),
                role,
                target.endpoint.serverless is None,
            ),
        )
        config = resource_name(
            tag,
            target.model,
            target.version,
            _digest(self._variant(target.endpoint, model), self._data_capture(target)),
        )
        return Names(endpoint=endpoint_name(tag, target.model), config=config, model=model)

    def _tags(self, target: VersionToServe) -> dict[str, str]:
        return {
            **target.tags,
            TAG_PROJECT: self.platform.project_tag,
            TAG_MODEL: target.model,
            TAG_VERSION: target.version,
            "family": target.family,
            "manifest_sha256": target.manifest_sha256,
            "contents_sha256": target.contents_sha256,
        }

    # --- reads -----------------------------------------------------------------------------------

    @staticmethod
    def _found(describe: Any, **name: str) -> dict[str, Any] | None:
        """``describe(**name)`` as a dict; None when SageMaker says there is no such thing."""
        try:
            return dict(describe(**name))
        except Exception as exc:
            if _is_client_error(exc) and _not_found(exc):
                return None
            raise

    def _describe_endpoint(self, name: str) -> dict[str, Any] | None:
        return self._found(self.sm.describe_endpoint, EndpointName=name)

    def _describe_config(self, name: str) -> dict[str, Any] | None:
        return self._found(self.sm.describe_endpoint_config, EndpointConfigName=name)

    def _describe_model(self, name: str) -> dict[str, Any] | None:
        return self._found(self.sm.describe_model, ModelName=name)

    def _list_tags(self, arn: str) -> dict[str, str]:
        tags: list[dict[str, str]] = []
        token: str | None = None
        while True:
            page = self.sm.list_tags(ResourceArn=arn, **({"NextToken": token} if token else {}))
            tags += page.get("Tags", [])
            token = page.get("NextToken")
            if not token:
                return _tag_dict(tags)

    def _config_version(self, config: dict[str, Any] | None) -> str | None:
        """The version an endpoint config serves: its tag, else its model's tag."""
        if config is None:
            return None
        tags = self._list_tags(config["EndpointConfigArn"])
        if tags.get(TAG_VERSION):
            return tags[TAG_VERSION]
        for variant in config.get("ProductionVariants", []):
            model = self._describe_model(variant["ModelName"])
            if model is not None:
                version = self._list_tags(model["ModelArn"]).get(TAG_VERSION)
                if version:
                    return version
        return None

    def _serving(self, model: str, desc: dict[str, Any]) -> Serving:
        """What the endpoint described by ``desc`` serves.

        A ``Failed`` (or out of service) endpoint still names its last config but answers
        nothing: its version is None, so a restore recreates it and status flags it instead
        of taking the config's version for the version served.
        """
        config_name = desc.get("EndpointConfigName")
        config = self._describe_config(config_name) if config_name else None
        serves = desc["EndpointStatus"] not in NOT_SERVING
        version = self._config_version(config) if serves else None
        models = {
            v["VariantName"]: v.get("ModelName")
            for v in (config or {}).get("ProductionVariants", [])
        }
        variants = {
            v["VariantName"]: {
                "version": version,
                "model": models.get(v["VariantName"]),
                "weight": v.get("CurrentWeight"),
                "instances": v.get("CurrentInstanceCount"),
                "serverless": v.get("CurrentServerlessConfig"),
            }
            for v in desc.get("ProductionVariants", [])
        }
        return Serving(
            model=model,
            endpoint_name=desc["EndpointName"],
            status=desc["EndpointStatus"],
            version=version,
            address=desc["EndpointArn"],
            config_name=config_name,
            variants=variants,
        )

    def describe(self, model: str) -> Serving | None:
        """What the model's endpoint serves now; None when it has no endpoint.

        The version comes from the tags of the endpoint's current config (or of its model);
        it is None while the endpoint is ``Failed``, ``OutOfService`` or ``Deleting``.
        """
        desc = self._describe_endpoint(endpoint_name(self.platform.project_tag, model))
        return None if desc is None else self._serving(model, desc)

    def monthly_cost(self, endpoint: EndpointConfig, platform: PlatformConfig) -> float | None:
        """Estimated USD per month of an endpoint with this config; None when unpriced."""
        return monthly_cost(endpoint, platform)

    # --- waiting ---------------------------------------------------------------------------------

    def _timeout(self, endpoint: EndpointConfig) -> float:
        if self.timeout_seconds is not None:
            return self.timeout_seconds
        return endpoint.timeout_seconds

    def _wait(self, name: str, timeout: float, progress: Progress) -> dict[str, Any]:
        """Poll until the endpoint leaves the settling statuses; return its description.

        Raises:
            _StillSettling: still settling after ``timeout`` seconds.
            RolloutFailed: (``wait``) the endpoint disappeared.
        """
        start = self._clock()
        reported: str | None = None
        last_report = start
        while True:
            desc = self._describe_endpoint(name)
            elapsed = self._clock() - start
            if desc is None:
                raise RolloutFailed("wait", f"endpoint {name} disappeared while waiting")
            status = desc["EndpointStatus"]
            if status != reported:
                progress(f"{name}: {status} after {elapsed:.0f}s")
                reported, last_report = status, self._clock()
            elif self._clock() - last_report >= self.heartbeat_seconds:
                progress(f"{name}: still {status} after {elapsed:.0f}s (limit {timeout:.0f}s)")
                last_report = self._clock()
            if status not in SETTLING:
                return desc
            if elapsed >= timeout:
                raise _StillSettling(desc, elapsed)
            self._sleep(self.poll_seconds)

    # --- creating resources ----------------------------------------------------------------------

    def _role(self) -> str:
        if self.role_arn:
            return self.role_arn
        permissions = permission_policy(
            self.store_uri,
            region=self.region,
            serving_image=self.serving_image,
            kms_key_id=self.kms_key_id,
        )
        self.role_arn = ensure_role(
            self.iam,
            role_name(self.platform.project_tag),
            trust_policy(),
            permissions,
            {TAG_PROJECT: self.platform.project_tag},
        )
        return self.role_arn

    def _create_model(
        self, name: str, target: VersionToServe, role: str, progress: Progress
    ) -> None:
        container = self._container(target)
        # Network isolation: the container needs no network (SageMaker fetches the model and
        # captures data itself). Serverless endpoints do not support it.
        isolated = target.endpoint.serverless is None
        try:
            self.sm.create_model(
                ModelName=name,
                PrimaryContainer=container,
                ExecutionRoleArn=role,
                EnableNetworkIsolation=isolated,
                Tags=_tag_list(self._tags(target)),
            )
            progress(f"created model {name}")
            return
        except Exception as exc:
            if not (_is_client_error(exc) and _already_exists(exc)):
                raise
        existing = self._describe_model(name) or {}
        found = existing.get("PrimaryContainer", {})
        wanted = {k: container[k] for k in container}
        differs = [k for k, v in wanted.items() if found.get(k) != v]
        if existing.get("ExecutionRoleArn") != role:
            differs.append("ExecutionRoleArn")
        if differs:
            raise RolloutFailed(
                "create-model",
                f"model {name} exists with a different {', '.join(differs)}; "
                "it was not made by this deploy: delete it or publish a new version",
            )
        progress(f"model {name} exists already (same definition), reused")

    def _create_config(self, names: Names, target: VersionToServe, progress: Progress) -> None:
        variant = self._variant(target.endpoint, names.model)
        capture = self._data_capture(target)
        request: dict[str, Any] = {
            "EndpointConfigName": names.config,
            "ProductionVariants": [variant],
            "Tags": _tag_list(self._tags(target)),
        }
        if capture:
            request["DataCaptureConfig"] = capture
        try:
            self.sm.create_endpoint_config(**request)
            progress(f"created endpoint config {names.config}")
            return
        except Exception as exc:
            if not (_is_client_error(exc) and _already_exists(exc)):
                raise
        existing = self._describe_config(names.config) or {}
        found = (existing.get("ProductionVariants") or [{}])[0]
        differs = [k for k, v in variant.items() if found.get(k) != v]
        found_capture = existing.get("DataCaptureConfig") or {}
        for key in ("InitialSamplingPercentage", "DestinationS3Uri"):
            if (capture or {}).get(key) != found_capture.get(key):
                differs.append(f"DataCaptureConfig.{key}")
        if differs:
            raise RolloutFailed(
                "create-endpoint-config",
                f"endpoint config {names.config} exists with a different {', '.join(differs)}; "
                "it was not made by this deploy: delete it or publish a new version",
            )
        progress(f"endpoint config {names.config} exists already (same definition), reused")

    # --- cleaning up -----------------------------------------------------------------------------

    def _live(self) -> _Live:
        """Every configuration and model a live endpoint of this project references."""
        live = _Live()
        for summary in self._paginate("list_endpoints", "Endpoints", NameContains=self.prefix):
            name = summary["EndpointName"]
            if not name.startswith(self.prefix):
                continue
            desc = self._describe_endpoint(name)
            if desc is None:
                continue
            live.endpoints[name] = desc
            if desc["EndpointStatus"] == "Deleting":
                # On its way out: what it used may go (cleanup deletes endpoint, then config).
                continue
            for config_name in self._endpoint_configs(desc):
                live.configs.add(config_name)
                config = self._describe_config(config_name)
                if config is None:
                    continue
                live.config_descriptions[config_name] = config
                live.models.update(v["ModelName"] for v in config.get("ProductionVariants", []))
        return live

    @staticmethod
    def _endpoint_configs(desc: dict[str, Any]) -> list[str]:
        """The current config, and the one an update in flight is moving to."""
        names = [desc.get("EndpointConfigName")]
        names.append((desc.get("PendingDeploymentSummary") or {}).get("EndpointConfigName"))
        return [n for n in names if n]

    def _discard(self, names: Names, progress: Progress) -> list[str]:
        """Delete the attempt's config and model unless an endpoint references them.

        Returns:
            What was left behind, and why (empty when everything went).
        """
        left: list[str] = []
        try:
            live = self._live()
        except Exception as exc:
            # Without knowing what is in use nothing is safe to delete.
            return [f"{names.config} and {names.model} (cannot list endpoints: {exc})"]
        for kind, name, in_use, delete in (
            (
                "endpoint config",
                names.config,
                live.configs,
                lambda n: self.sm.delete_endpoint_config(EndpointConfigName=n),
            ),
            ("model", names.model, live.models, lambda n: self.sm.delete_model(ModelName=n)),
        ):
            if name in in_use:
                left.append(f"{kind} {name} (an endpoint references it)")
                continue
            try:
                delete(name)
                progress(f"deleted {kind} {name}")
            except Exception as exc:
                if not (_is_client_error(exc) and _not_found(exc)):
                    left.append(f"{kind} {name} ({_error(exc)[1]})")
        return left

    def _delete_endpoint_and_wait(self, name: str, timeout: float, progress: Progress) -> None:
        try:
            self.sm.delete_endpoint(EndpointName=name)
        except Exception as exc:
            if _is_client_error(exc) and _not_found(exc):
                return
            raise
        progress(f"deleting endpoint {name}")
        start = self._clock()
        while self._describe_endpoint(name) is not None:
            if self._clock() - start >= timeout:
                progress(f"{name}: still deleting after {timeout:.0f}s; SageMaker finishes it")
                return
            self._sleep(self.poll_seconds)

    def _fail(
        self,
        step: str,
        reason: str,
        names: Names,
        progress: Progress,
        *,
        delete_endpoint: bool,
        timeout: float,
    ) -> RolloutFailed:
        """Put things back after a failed attempt and build the error to raise."""
        if delete_endpoint:
            try:
                self._delete_endpoint_and_wait(names.endpoint, timeout, progress)
            except Exception as exc:
                reason += f"; could not delete endpoint {names.endpoint}: {_error(exc)[1]}"
        left = self._discard(names, progress)
        if left:
            reason += f"; left behind: {'; '.join(left)}"
        return RolloutFailed(step, reason)

    # --- deploy ----------------------------------------------------------------------------------

    def deploy(self, target: VersionToServe, progress: Progress) -> Serving:
        """Create or update the model's endpoint to serve ``target``; wait until it does.

        Raises:
            RolloutFailed: the endpoint does not serve ``target``. It serves what it served
                before (a new endpoint is deleted), and the config and model made for this
                attempt are deleted unless an endpoint still references them.
        """
        endpoint = target.endpoint
        timeout = self._timeout(endpoint)
        cost = cost_line(endpoint, self.platform, self.region)
        progress(f"{target.model} {target.version} on SageMaker: {cost}")
        if not self.serving_image:
            raise RolloutFailed(
                "prepare",
                "no serving image: build docker/serving.Dockerfile, push it to ECR and set "
                "MLOPS_SERVING_IMAGE",
            )
        if not target.model_data_uri.startswith("s3://"):
            raise RolloutFailed(
                "prepare", f"SageMaker reads models from S3; got {target.model_data_uri}"
            )
        if endpoint.data_capture_percent and endpoint.serverless is not None:
            progress("data capture is not supported on serverless endpoints: not enabled")
        try:
            role = self._role()
        except RoleError as exc:
            raise RolloutFailed("prepare", str(exc)) from exc
        names = self.names_for(target, role)

        before = self._settled_endpoint(names.endpoint, timeout, progress)
        if before is not None and self._serves(before, names):
            progress(f"{names.endpoint} already serves {target.version} ({names.config})")
            return self._serving(target.model, before)

        steps = (
            ("create-model", lambda: self._create_model(names.model, target, role, progress)),
            ("create-endpoint-config", lambda: self._create_config(names, target, progress)),
        )
        for step, create in steps:
            try:
                create()
            except RolloutFailed:
                raise
            except Exception as exc:
                raise self._fail(
                    step, _error(exc)[1], names, progress, delete_endpoint=False, timeout=timeout
                ) from exc

        if before is None:
            before = self._create_endpoint(names, target, progress, timeout)
            if before is None:
                return self._await_new_endpoint(names, target, progress, timeout)
            if self._serves(before, names):
                return self._serving(target.model, before)
        return self._update_endpoint(names, target, before, progress, timeout)

    @staticmethod
    def _serves(desc: dict[str, Any], names: Names) -> bool:
        return (
            desc["EndpointStatus"] == "InService" and desc.get("EndpointConfigName") == names.config
        )

    def _settled_endpoint(
        self, name: str, timeout: float, progress: Progress
    ) -> dict[str, Any] | None:
        """The endpoint as it stands once nothing is in flight; None when there is none.

        An update in flight (a crashed earlier run's, say) is waited for, so a retry decides on
        the outcome instead of colliding with it. A ``Failed`` endpoint cannot be updated, and
        serves nothing: it is deleted so the deploy creates it afresh.
        """
        desc = self._describe_endpoint(name)
        if desc is None:
            return None
        if desc["EndpointStatus"] in SETTLING:
            progress(f"{name} is {desc['EndpointStatus']}: waiting for it before deploying")
            try:
                desc = self._wait(name, timeout, progress)
            except _StillSettling as exc:
                raise RolloutFailed(
                    "wait",
                    f"{name} still {exc.description['EndpointStatus']} after {exc.elapsed:.0f}s "
                    "from an earlier operation; nothing was changed",
                ) from exc
        if desc["EndpointStatus"] == "Failed":
            progress(
                f"{name} is Failed ({desc.get('FailureReason', 'no reason given')}) and serves "
                "nothing: deleting it to create it again"
            )
            self._delete_endpoint_and_wait(name, timeout, progress)
            return None
        return desc

    def _create_endpoint(
        self, names: Names, target: VersionToServe, progress: Progress, timeout: float
    ) -> dict[str, Any] | None:
        """Create the endpoint. Returns None, or the settled endpoint another deploy created."""
        try:
            self.sm.create_endpoint(
                EndpointName=names.endpoint,
                EndpointConfigName=names.config,
                Tags=_tag_list({TAG_PROJECT: self.platform.project_tag, TAG_MODEL: target.model}),
            )
            progress(f"creating endpoint {names.endpoint} on {names.config}")
            return None
        except Exception as exc:
            if _is_client_error(exc) and _already_exists(exc):
                # A lost response or a concurrent deploy: decide on what is there once settled.
                progress(f"endpoint {names.endpoint} exists already")
                existing = self._settled_endpoint(names.endpoint, timeout, progress)
                if existing is None:
                    return self._create_endpoint(names, target, progress, timeout)
                return existing
            raise self._fail(
                "create", _error(exc)[1], names, progress, delete_endpoint=False, timeout=timeout
            ) from exc

    def _await_new_endpoint(
        self, names: Names, target: VersionToServe, progress: Progress, timeout: float
    ) -> Serving:
        try:
            desc = self._wait(names.endpoint, timeout, progress)
        except _StillSettling as exc:
            raise self._fail(
                "wait",
                f"{names.endpoint} still {exc.description['EndpointStatus']} after "
                f"{exc.elapsed:.0f}s; the new endpoint was deleted",
                names,
                progress,
                delete_endpoint=True,
                timeout=timeout,
            ) from exc
        if desc["EndpointStatus"] == "InService" and desc.get("EndpointConfigName") == names.config:
            progress(f"{names.endpoint} serves {target.version}")
            return self._serving(target.model, desc)
        reason = desc.get("FailureReason") or f"ended {desc['EndpointStatus']}"
        raise self._fail(
            "create",
            f"{names.endpoint}: {reason}; the new endpoint was deleted",
            names,
            progress,
            delete_endpoint=True,
            timeout=timeout,
        )

    def _update_endpoint(
        self,
        names: Names,
        target: VersionToServe,
        before: dict[str, Any],
        progress: Progress,
        timeout: float,
    ) -> Serving:
        strategy = target.endpoint.deployment
        old = before.get("EndpointConfigName")
        config = deployment_config(strategy)
        if timeout < config["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"]:
            progress(
                f"note: the wait ({timeout:.0f}s) is shorter than the deployment's own limit "
                f"({config['BlueGreenUpdatePolicy']['MaximumExecutionTimeoutInSeconds']}s)"
            )
        try:
            self.sm.update_endpoint(
                EndpointName=names.endpoint,
                EndpointConfigName=names.config,
                DeploymentConfig=config,
            )
        except Exception as exc:
            raise self._fail(
                "update",
                f"{names.endpoint}: {_error(exc)[1]}; {old} still serves",
                names,
                progress,
                delete_endpoint=False,
                timeout=timeout,
            ) from exc
        progress(
            f"update requested: {names.endpoint} from {old} to {names.config} "
            f"({strategy.type.replace('_', ' ')} blue/green)"
        )
        try:
            desc = self._wait(names.endpoint, timeout, progress)
        except _StillSettling as exc:
            raise self._fail(
                "wait",
                f"{names.endpoint} still {exc.description['EndpointStatus']} after "
                f"{exc.elapsed:.0f}s; {old} serves until SageMaker completes or rolls back the "
                "update (it rolls back by itself past MaximumExecutionTimeoutInSeconds)",
                names,
                progress,
                delete_endpoint=False,
                timeout=timeout,
            ) from exc
        now = desc.get("EndpointConfigName")
        status = desc["EndpointStatus"]
        if status == "InService" and now == names.config:
            progress(f"{names.endpoint} serves {target.version}")
            return self._serving(target.model, desc)
        why = desc.get("FailureReason") or "no reason given"
        if status == "InService" and now == old:
            reason = f"{names.endpoint} rolled back to {old}: {why}"
        else:
            reason = f"{names.endpoint} ended {status} on {now}: {why}"
        raise self._fail("update", reason, names, progress, delete_endpoint=False, timeout=timeout)

    def remove(self, model: str, progress: Progress | None = None) -> None:
        """Delete the model's endpoint and the configs and models it used.

        For a rollout whose endpoint was new and failed after the deploy (the smoke test): the
        model served nothing before, so nothing of it should stay.
        """
        say = progress or (lambda _message: None)
        name = endpoint_name(self.platform.project_tag, model)
        desc = self._describe_endpoint(name)
        if desc is None:
            return
        configs = {c: self._describe_config(c) for c in self._endpoint_configs(desc)}
        timeout = self.timeout_seconds if self.timeout_seconds is not None else 1800.0
        self._delete_endpoint_and_wait(name, timeout, say)
        live = self._live()
        for config_name, config in configs.items():
            if config is None or config_name in live.configs:
                continue
            self.sm.delete_endpoint_config(EndpointConfigName=config_name)
            for variant in config.get("ProductionVariants", []):
                if variant["ModelName"] not in live.models:
                    try:
                        self.sm.delete_model(ModelName=variant["ModelName"])
                    except Exception as exc:
                        if not (_is_client_error(exc) and _not_found(exc)):
                            raise

    # --- invoke ----------------------------------------------------------------------------------

    def invoke(self, model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Send ``{"instances": records}`` to the model's endpoint; return the parsed answer.

        Raises:
            RolloutFailed: (``smoke-test``) an error answer, a non-2xx status or a body that is
                not a JSON object.
        """
        name = endpoint_name(self.platform.project_tag, model)
        try:
            response = self.runtime.invoke_endpoint(
                EndpointName=name,
                ContentType="application/json",
                Accept="application/json",
                Body=json.dumps({"instances": records}).encode(),
            )
        except Exception as exc:
            if not _is_client_error(exc):
                raise RolloutFailed("smoke-test", f"cannot reach {name}: {exc}") from exc
            code, message = _error(exc)
            original = getattr(exc, "response", {}).get("OriginalMessage")
            detail = f"{message} ({original})" if original else message
            raise RolloutFailed("smoke-test", f"{name} answered {code}: {detail}") from exc
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 200))
        body = response["Body"].read()
        if not 200 <= status < 300:
            raise RolloutFailed("smoke-test", f"{name} answered HTTP {status}: {body[:200]!r}")
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise RolloutFailed(
                "smoke-test", f"{name} answered a body that is not JSON: {body[:200]!r}"
            ) from exc
        if not isinstance(answer, dict):
            raise RolloutFailed(
                "smoke-test", f"{name} answered {type(answer).__name__}, not an object"
            )
        return answer

    # --- inventory -------------------------------------------------------------------------------

    def _paginate(self, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in self.sm.get_paginator(operation).paginate(**kwargs):
            items += page.get(key, [])
        return items

    def _idle_days(
        self, name: str, created: datetime, variants: list[str], now: datetime
    ) -> int | None:
        """Days since the endpoint's last invocation, looking back ``retention.idle_days``.

        No invocation in the window: the window (or the endpoint's age, when younger), i.e. "at
        least this many days". None when CloudWatch cannot be read.
        """
        window = self.platform.retention.idle_days
        age = max(0, (now - created).days)
        last: datetime | None = None
        try:
            for variant in variants or [VARIANT]:
                stats = self.cloudwatch.get_metric_statistics(
                    Namespace="AWS/SageMaker",
                    MetricName="Invocations",
                    Dimensions=[
                        {"Name": "EndpointName", "Value": name},
                        {"Name": "VariantName", "Value": variant},
                    ],
                    StartTime=now - timedelta(days=window),
                    EndTime=now,
                    Period=86400,
                    Statistics=["Sum"],
                )
                for point in stats.get("Datapoints", []):
                    if point.get("Sum", 0) > 0 and (last is None or point["Timestamp"] > last):
                        last = point["Timestamp"]
        except Exception:
            return None
        if last is None:
            return min(window, age)
        return max(0, (now - last).days)

    def _endpoint_cost(self, desc: dict[str, Any], config: dict[str, Any] | None) -> float | None:
        pricing = self.platform.pricing
        total = 0.0
        counts = {
            v["VariantName"]: v.get("CurrentInstanceCount")
            for v in desc.get("ProductionVariants", [])
        }
        for variant in (config or {}).get("ProductionVariants", []):
            if "ServerlessConfig" in variant:
                return None
            hourly = pricing.instance_hourly_usd.get(variant.get("InstanceType", ""))
            if hourly is None:
                return None
            count = counts.get(variant["VariantName"]) or variant.get("InitialInstanceCount", 1)
            total += hourly * count * pricing.hours_per_month
        return round(total, 2) if config else None

    def _ours(self, tags: dict[str, str]) -> bool:
        """Whether a resource carries this project's tag (the name prefix alone is not enough:
        ``intelli-rate-`` is also the prefix of a project tagged ``intelli-rate-staging``)."""
        return tags.get(TAG_PROJECT) == self.platform.project_tag

    def _owner(self, name: str, tags: dict[str, str]) -> tuple[str, str | None]:
        """Model and version of a resource: from its tags, else from its name."""
        model = tags.get(TAG_MODEL)
        if not model:
            rest = name[len(self.prefix) :]
            match = re.match(r"^(.*?)(?:-(v\d+)-[0-9a-f]+)?$", rest)
            model = (match.group(1) if match else rest).replace("-", "_")
        return model, tags.get(TAG_VERSION)

    def resources(self) -> list[Resource]:
        """Every endpoint, endpoint config and model of this project, ``in_use`` filled in.

        A config or model is in use when a live endpoint references it (its current config, or
        the one an update in flight moves to). Endpoints are always in use; their details carry
        the status, monthly cost and idle days (from CloudWatch ``Invocations``).
        """
        now = datetime.now(UTC)
        live = self._live()
        found: list[Resource] = []
        for name, desc in sorted(live.endpoints.items()):
            config = live.config_descriptions.get(desc.get("EndpointConfigName", ""))
            tags = self._list_tags(desc["EndpointArn"])
            if not self._ours(tags):
                continue
            model, _ = self._owner(name, tags)
            version = self._config_version(config)
            created = desc["CreationTime"]
            variants = [v["VariantName"] for v in desc.get("ProductionVariants", [])]
            details = {
                "status": desc["EndpointStatus"],
                "config": desc.get("EndpointConfigName"),
                "created": created.isoformat(),
                "idle_days": self._idle_days(name, created, variants, now),
                "monthly_cost_usd": self._endpoint_cost(desc, config),
            }
            found.append(Resource("endpoint", name, model, version, True, details))
        listings = (
            ("endpoint-config", "list_endpoint_configs", "EndpointConfig", live.configs),
            ("model", "list_models", "Model", live.models),
        )
        for kind, call, noun, used in listings:
            for summary in self._paginate(call, f"{noun}s", NameContains=self.prefix):
                name = summary[f"{noun}Name"]
                if not name.startswith(self.prefix):
                    continue
                tags = self._list_tags(summary[f"{noun}Arn"])
                if not self._ours(tags):
                    continue
                model, version = self._owner(name, tags)
                created = {"created": summary["CreationTime"].isoformat()}
                found.append(Resource(kind, name, model, version, name in used, created))
        return found

    def delete(self, resource: Resource) -> None:
        """Delete one resource of this project.

        Configs and models a live endpoint references are refused, checked against SageMaker
        now rather than the (possibly stale) ``resource.in_use``. An endpoint is deleted when
        asked: cleanup asks only for endpoints of models no longer configured.

        Raises:
            ValueError: the resource is in use, or is not this project's.
        """
        if not resource.name.startswith(self.prefix):
            raise ValueError(f"{resource.name} is not a {self.platform.project_tag} resource")
        if resource.kind == "endpoint":
            self.sm.delete_endpoint(EndpointName=resource.name)
            return
        live = self._live()
        if resource.kind == "endpoint-config":
            if resource.name in live.configs:
                raise ValueError(f"endpoint config {resource.name} is in use by a live endpoint")
            self.sm.delete_endpoint_config(EndpointConfigName=resource.name)
        elif resource.kind == "model":
            if resource.name in live.models:
                raise ValueError(f"model {resource.name} is in use by a live endpoint")
            self.sm.delete_model(ModelName=resource.name)
        else:
            raise ValueError(f"unknown resource kind {resource.kind!r}")

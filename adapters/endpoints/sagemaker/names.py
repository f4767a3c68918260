"""What a deploy asks SageMaker for, what it is called, and what it costs: pure functions.

Every model and endpoint config is named ``{project_tag}-{model}-{version}-{hash}``, where the
hash covers what the resource holds (the version's manifest sha256, image, role, data source,
network isolation and VPC for a model; the variant and data capture for a config), so the same
deploy always asks for the same names, and a changed network setting is a new model. The
endpoint itself is ``{project_tag}-{model}``, one per model.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config import DeploymentStrategy, EndpointConfig, PlatformConfig, VpcConfig
    from core.endpoint import VersionToServe

VARIANT = "AllTraffic"
"""The single production variant. Blue/green updates need the same variant name in both configs."""

MAX_NAME = 63

MIN_EXECUTION_TIMEOUT = 600
MAX_EXECUTION_TIMEOUT = 28800
PROVISIONING_ALLOWANCE = 600
"""Seconds allowed for the new fleet to come up, on top of the strategy's own waits."""

TAG_PROJECT = "project"
TAG_MODEL = "model"
TAG_VERSION = "version"

_TAG_VALUE = re.compile(r"[^\w.:/=+\-@ ]")


# --- names ---------------------------------------------------------------------------------------


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


def name_prefix(project_tag: str) -> str:
    """What the name of every resource of the project starts with (listing filters on it)."""
    return f"{project_tag}-"


def resource_name(project_tag: str, model: str, version: str, content_hash: str) -> str:
    """``{project_tag}-{model}-{version}-{hash}`` within 63 characters.

    The project and model part is cut first when too long; the version and hash always survive,
    and the project tag (at most 31 characters) stays the prefix that listing relies on.
    """
    suffix = f"-{_slug(version)}-{content_hash}"
    head = _slug(f"{project_tag}-{model}")[: MAX_NAME - len(suffix)].rstrip("-")
    return head + suffix


@dataclass(frozen=True)
class Names:
    """The three names one deploy uses."""

    endpoint: str
    config: str
    model: str


# --- tags ----------------------------------------------------------------------------------------


def _tag_value(value: str) -> str:
    # SageMaker tag values: 256 characters of letters, digits, spaces and _.:/=+-@.
    return _TAG_VALUE.sub("_", str(value))[:256]


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """``tags`` as SageMaker's ``Tags`` list, keys and values cut and cleaned to its limits."""
    return [{"Key": k[:128], "Value": _tag_value(v)} for k, v in sorted(tags.items())]


def tag_dict(tags: list[dict[str, str]]) -> dict[str, str]:
    """SageMaker's ``Tags`` list as a dict."""
    return {t["Key"]: t["Value"] for t in tags}


def resource_tags(target: VersionToServe, project_tag: str) -> dict[str, str]:
    """Tags of a model or endpoint config: lineage, then the project, model and version."""
    return {
        **target.tags,
        TAG_PROJECT: project_tag,
        TAG_MODEL: target.model,
        TAG_VERSION: target.version,
        "family": target.family,
        "manifest_sha256": target.manifest_sha256,
        "contents_sha256": target.contents_sha256,
    }


# --- request bodies ------------------------------------------------------------------------------


def container(target: VersionToServe, serving_image: str | None) -> dict[str, Any]:
    """The model's ``PrimaryContainer``: the serving image, the version's identity, its data."""
    body: dict[str, Any] = {
        "Image": serving_image,
        "Environment": {
            "MLOPS_MODEL_NAME": target.model,
            "MLOPS_MODEL_VERSION": target.version,
            "MLOPS_MODEL_CONTENTS_SHA256": target.contents_sha256,
        },
    }
    if target.endpoint.model_data == "uncompressed":
        body["ModelDataSource"] = {
            "S3DataSource": {
                "S3Uri": f"{target.version_uri.rstrip('/')}/model/",
                "S3DataType": "S3Prefix",
                "CompressionType": "None",
            }
        }
    else:
        body["ModelDataUrl"] = target.model_data_uri
    return body


def variant(endpoint: EndpointConfig, model_name: str) -> dict[str, Any]:
    """The endpoint config's one production variant: instances or serverless."""
    body: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name}
    if endpoint.serverless is not None:
        body["ServerlessConfig"] = {
            "MemorySizeInMB": endpoint.serverless.memory_mb,
            "MaxConcurrency": endpoint.serverless.max_concurrency,
        }
    else:
        body.update(
            InstanceType=endpoint.instance_type,
            InitialInstanceCount=endpoint.instance_count,
            InitialVariantWeight=1.0,
        )
    return body


def data_capture(
    target: VersionToServe, store_uri: str, kms_key_id: str | None
) -> dict[str, Any] | None:
    """``DataCaptureConfig`` writing requests and answers under the store; None when off."""
    percent = target.endpoint.data_capture_percent
    # Serverless endpoints do not support data capture.
    if percent == 0 or target.endpoint.serverless is not None:
        return None
    capture: dict[str, Any] = {
        "EnableCapture": True,
        "InitialSamplingPercentage": percent,
        "DestinationS3Uri": f"{store_uri}/datacapture/{target.model}",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }
    if kms_key_id:
        capture["KmsKeyId"] = kms_key_id
    return capture


@dataclass(frozen=True)
class Definition:
    """Everything one deploy asks SageMaker to create, and the names that hash it.

    Attributes:
        names: endpoint, endpoint-config and model names.
        role: the execution role ARN the model runs as.
        container: the model's ``PrimaryContainer``.
        variant: the endpoint config's production variant.
        data_capture: its ``DataCaptureConfig``, None when capture is off.
        tags: tags of the model and endpoint config.
        network_isolation: the model's ``EnableNetworkIsolation``.
        vpc: the model's ``VpcConfig``, None for SageMaker's own network.
    """

    names: Names
    role: str
    container: dict[str, Any]
    variant: dict[str, Any]
    data_capture: dict[str, Any] | None
    tags: dict[str, str]
    network_isolation: bool = True
    vpc: dict[str, list[str]] | None = None

    def model_request(self) -> dict[str, Any]:
        """``CreateModel``'s arguments (the model of a deploy, or an experiment's challenger)."""
        request: dict[str, Any] = {
            "ModelName": self.names.model,
            "PrimaryContainer": self.container,
            "ExecutionRoleArn": self.role,
            "EnableNetworkIsolation": self.network_isolation,
            "Tags": tag_list(self.tags),
        }
        if self.vpc is not None:
            request["VpcConfig"] = self.vpc
        return request


def network(
    endpoint: EndpointConfig, default_vpc: VpcConfig | None
) -> tuple[bool, dict[str, list[str]] | None]:
    """The model's network isolation and ``VpcConfig``: the model's own VPC, else the default.

    Serverless endpoints support neither (SageMaker refuses both), so they get neither.
    """
    if endpoint.serverless is not None:
        return False, None
    vpc = endpoint.vpc or default_vpc
    return endpoint.network_isolation, vpc.request() if vpc is not None else None


def define(
    target: VersionToServe,
    *,
    project_tag: str,
    serving_image: str | None,
    role: str,
    store_uri: str,
    kms_key_id: str | None,
    default_vpc: VpcConfig | None = None,
) -> Definition:
    """The names and request bodies that serving ``target`` takes.

    Args:
        target: the version to serve.
        project_tag: the project's name prefix and tag.
        serving_image: ECR URI of the serving image.
        role: the execution role ARN ("" when not known yet: names only).
        store_uri: ``s3://bucket/prefix`` of the model store (data capture goes under it).
        kms_key_id: the store's KMS key, for captured data.
        default_vpc: the platform's VPC (``network.vpc``), for a model naming none.
    """
    body = container(target, serving_image)
    isolation, vpc = network(target.endpoint, default_vpc)
    # Isolation was hashed before VPCs existed (as "not serverless", the same value by default):
    # the VPC joins the hash only when there is one, so names without one stay as they were.
    hashed: list[Any] = [target.manifest_sha256, body, role, isolation]
    model = resource_name(
        project_tag, target.model, target.version, _digest(*hashed, *([vpc] if vpc else []))
    )
    production = variant(target.endpoint, model)
    capture = data_capture(target, store_uri, kms_key_id)
    config = resource_name(project_tag, target.model, target.version, _digest(production, capture))
    return Definition(
        names=Names(endpoint=endpoint_name(project_tag, target.model), config=config, model=model),
        role=role,
        container=body,
        variant=production,
        data_capture=capture,
        tags=resource_tags(target, project_tag),
        network_isolation=isolation,
        vpc=vpc,
    )


# --- costs and deployment configs ----------------------------------------------------------------


def fleet_bounds(endpoint: EndpointConfig) -> tuple[int, int]:
    """Fewest and most instances the endpoint runs: its autoscaling bounds, else its count."""
    if endpoint.autoscaling is not None:
        return endpoint.autoscaling.min_instances, endpoint.autoscaling.max_instances
    return endpoint.instance_count, endpoint.instance_count


def monthly_cost(
    endpoint: EndpointConfig, platform: PlatformConfig, instances: int | None = None
) -> float | None:
    """USD per month of an always-on instance endpoint; None for serverless or an unpriced type.

    At ``instances``, by default the fewest it runs (with autoscaling, ``min_instances``: what
    it costs when idle). Serverless is billed per use (GB-seconds of compute), so it has no
    fixed monthly figure.
    """
    if endpoint.serverless is not None:
        return None
    hourly = platform.pricing.instance_hourly_usd.get(endpoint.instance_type)
    if hourly is None:
        return None
    count = fleet_bounds(endpoint)[0] if instances is None else instances
    return round(hourly * count * platform.pricing.hours_per_month, 2)


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
    fewest, most = fleet_bounds(endpoint)
    fleet = f"{endpoint.instance_count} x {endpoint.instance_type}"
    if most != fewest:
        fleet += f" (autoscaled {fewest}-{most})"
    cost = monthly_cost(endpoint, platform)
    if cost is None:
        return (
            f"{fleet}: no price in configs/platform.yaml (pricing.instance_hourly_usd), "
            "cost unknown"
        )
    hourly = pricing.instance_hourly_usd[endpoint.instance_type]
    amount = f"about ${cost:,.2f} per month"
    if most != fewest:
        amount = (
            f"${cost:,.2f} to ${monthly_cost(endpoint, platform, most) or 0:,.2f} per month "
            f"({fewest} to {most} instances)"
        )
    return (
        f"{fleet} at ${hourly}/hour: {amount} ({where}); a blue/green update runs both fleets "
        "while it lasts"
    )


def endpoint_cost(
    desc: dict[str, Any], config: dict[str, Any] | None, platform: PlatformConfig
) -> float | None:
    """USD per month of a live endpoint (``desc``) on ``config``; None when serverless or unpriced.

    Each variant is priced at its current instance count, else the config's initial count.
    """
    pricing = platform.pricing
    total = 0.0
    counts = {
        v["VariantName"]: v.get("CurrentInstanceCount") for v in desc.get("ProductionVariants", [])
    }
    for production in (config or {}).get("ProductionVariants", []):
        if "ServerlessConfig" in production:
            return None
        hourly = pricing.instance_hourly_usd.get(production.get("InstanceType", ""))
        if hourly is None:
            return None
        count = counts.get(production["VariantName"]) or production.get("InitialInstanceCount", 1)
        total += hourly * count * pricing.hours_per_month
    return round(total, 2) if config else None


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


def rollback_alarms(strategy: DeploymentStrategy, own: Sequence[str] = ()) -> list[str]:
    """The alarms that roll an update back: the project's ``own`` first, then the user's."""
    return list(dict.fromkeys([*own, *strategy.alarms.names]))


def deployment_config(strategy: DeploymentStrategy, own: Sequence[str] = ()) -> dict[str, Any]:
    """SageMaker's ``DeploymentConfig`` (blue/green) for ``strategy``.

    ``wait_seconds`` is the interval between traffic shifts (for all-at-once, the time the new
    fleet takes all traffic with alarms watched), ``baking_seconds`` the wait before the old fleet
    is terminated. The alarms (``own``: the project's for this endpoint, see
    :mod:`.alarms`; and the ones the config names) roll the update back when one fires.
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
    alarms = rollback_alarms(strategy, own)
    if alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": n} for n in alarms]}
    return config

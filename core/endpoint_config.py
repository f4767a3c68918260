"""Where and how a model runs on SageMaker: its endpoint, its training job, their network.

Part of the model config (:mod:`core.config` re-exports every class here). The rules SageMaker
enforces only when a request reaches it are checked at load instead, each refusal with its
reason: autoscaling needs instances (not serverless) and an initial count within its bounds;
canary and linear traffic shifting need two instances or more; a VPC needs both subnets and
security groups.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from core.strict import Strict

SUBNET = r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$"
"""A subnet id as EC2 gives it: ``subnet-`` and 8 or 17 hexadecimal digits."""
SECURITY_GROUP = r"^sg-[0-9a-f]{8}([0-9a-f]{9})?$"
"""A security group id as EC2 gives it: ``sg-`` and 8 or 17 hexadecimal digits."""
SHIFTING = ("canary", "linear")
"""Strategies that shift capacity in steps of the fleet (SageMaker's blue/green guardrails)."""


class VpcConfig(Strict):
    """Subnets and security groups SageMaker attaches a model's or a training job's instances to.

    SageMaker's ``VpcConfig``: both lists or no VPC at all (then SageMaker's own network).
    """

    subnets: list[str] = Field(
        min_length=1,
        max_length=16,
        description="Subnet ids (subnet-xxxxxxxx), at most 16; spread over zones for endpoints.",
    )
    security_group_ids: list[str] = Field(
        min_length=1, max_length=5, description="Security group ids (sg-xxxxxxxx), at most 5."
    )

    @model_validator(mode="before")
    @classmethod
    def _both_or_neither(cls, value: Any) -> Any:
        if isinstance(value, dict):
            given = [k for k in ("subnets", "security_group_ids") if value.get(k)]
            if len(given) == 1:
                missing = "security_group_ids" if given == ["subnets"] else "subnets"
                raise ValueError(
                    f"vpc has {given[0]} but no {missing}: SageMaker's VpcConfig takes both "
                    "(instances need a subnet to live in and a security group to filter their "
                    "traffic); give both, or leave vpc out for SageMaker's own network"
                )
        return value

    @field_validator("subnets")
    @classmethod
    def _subnet_ids(cls, value: list[str]) -> list[str]:
        return _ids(value, SUBNET, "subnet")

    @field_validator("security_group_ids")
    @classmethod
    def _group_ids(cls, value: list[str]) -> list[str]:
        return _ids(value, SECURITY_GROUP, "security group")

    def request(self) -> dict[str, list[str]]:
        """SageMaker's ``VpcConfig`` body (ids sorted: the same set is the same request)."""
        return {
            "SecurityGroupIds": sorted(self.security_group_ids),
            "Subnets": sorted(self.subnets),
        }


def _ids(values: list[str], pattern: str, what: str) -> list[str]:
    import re

    bad = [v for v in values if not re.fullmatch(pattern, v)]
    if bad:
        raise ValueError(f"{what} id(s) {bad} do not look like {pattern}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} ids repeat: {values}")
    return values


class NetworkConfig(Strict):
    """The platform's network for SageMaker (``configs/platform.yaml``, ``network:``)."""

    vpc: VpcConfig | None = Field(
        default=None,
        description=(
            "Default VPC of every model's endpoint and training job; a model's own "
            "endpoint.vpc or training.vpc replaces it. None: SageMaker's own network."
        ),
    )


class AutoscalingConfig(Strict):
    """Application Auto Scaling of an endpoint's instances: target tracking on invocations.

    Registered after a rollout is ``InService`` (``sagemaker:variant:DesiredInstanceCount``),
    with a target-tracking policy on ``SageMakerVariantInvocationsPerInstance``.
    """

    min_instances: int = Field(
        default=1, ge=1, le=100, description="Fewest instances it scales in to."
    )
    max_instances: int = Field(ge=1, le=100, description="Most instances it scales out to.")
    target_invocations_per_instance: float = Field(
        gt=0,
        le=100_000,
        description=(
            "Invocations per instance per minute the policy holds the fleet at "
            "(SageMakerVariantInvocationsPerInstance); measure one instance's peak first."
        ),
    )
    scale_in_cooldown_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="Wait after a scale-in before the next one (slow: instances take minutes).",
    )
    scale_out_cooldown_seconds: int = Field(
        default=60, ge=0, le=3600, description="Wait after a scale-out before the next one."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"autoscaling.min_instances {self.min_instances} is above max_instances "
                f"{self.max_instances}"
            )
        return self


class ServerlessConfig(Strict):
    """A SageMaker serverless variant instead of instances."""

    memory_mb: Literal[1024, 2048, 3072, 4096, 5120, 6144] = Field(
        default=2048, description="Memory of the serverless variant."
    )
    max_concurrency: int = Field(default=5, ge=1, le=200, description="Concurrent invocations.")


class AlarmConfig(Strict):
    """The CloudWatch alarms that watch a SageMaker endpoint and roll a bad update back.

    With ``create`` on, every rollout puts two alarms per production variant (p99
    ``ModelLatency`` and the ``Invocation5XXErrors`` rate) and names them, with ``names``, in the
    ``AutoRollbackConfiguration`` of every blue/green update. On the local endpoint the same
    thresholds make the model's Prometheus alert rules (``mlops prometheus-rules``).
    """

    names: list[str] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Alarms of your own (already in CloudWatch, same region) that also roll an update "
            "back; at most 8, as SageMaker takes 10 and the project's own use 2."
        ),
    )
    create: bool = Field(
        default=True, description="Create the p99 latency and 5xx-rate alarms with the endpoint."
    )
    p99_latency_ms: float = Field(
        default=1000.0,
        gt=0,
        le=60000,
        description="Alarm when the variant's p99 ModelLatency stays above this (milliseconds).",
    )
    error_rate: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Alarm when this share of invocations or more is answered 5xx.",
    )
    period_seconds: Literal[10, 30, 60, 300] = Field(
        default=60, description="Length of one evaluated period."
    )
    evaluation_periods: int = Field(
        default=3,
        ge=1,
        le=30,
        description="Consecutive periods over the threshold before the alarm fires.",
    )


class DeploymentStrategy(Strict):
    """How an existing endpoint moves to a new config (SageMaker ``DeploymentConfig``)."""

    type: Literal["all_at_once", "canary", "linear"] = Field(
        default="all_at_once",
        description="Blue/green traffic shift: all at once, a canary slice first, or linear steps.",
    )
    canary_percent: int = Field(
        default=10, ge=1, le=50, description="Share of capacity the canary gets first."
    )
    linear_step_percent: int = Field(
        default=25, ge=5, le=50, description="Share of capacity moved per linear step."
    )
    wait_seconds: int = Field(
        default=300, ge=0, le=3600, description="Wait between traffic-shift steps."
    )
    baking_seconds: int = Field(
        default=600,
        ge=0,
        le=3600,
        description="Time the new fleet serves all traffic, alarms watched, before the old goes.",
    )
    alarms: AlarmConfig = Field(
        default_factory=lambda: AlarmConfig(),
        description=(
            "CloudWatch alarms that roll the deployment back when they fire: the project's own "
            "(p99 latency and 5xx rate per variant, created with the endpoint) and any named."
        ),
    )

    @field_validator("alarms", mode="before")
    @classmethod
    def _alarm_names_only(cls, value: Any) -> Any:
        """The form written before thresholds existed, ``alarms: [name, ...]``, still loads."""
        if isinstance(value, list | tuple):
            return {"names": list(value)}
        return value


class EndpointConfig(Strict):
    """Where and how a promoted model is served."""

    enabled: bool = Field(default=True, description="Roll out on promotion.")
    instance_type: str = Field(
        default="ml.m5.large",
        pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$",
        description="SageMaker instance type (priced from configs/platform.yaml).",
    )
    instance_count: int = Field(
        default=1,
        ge=1,
        le=20,
        description="Instances per variant; with autoscaling, the count a new fleet starts at.",
    )
    autoscaling: AutoscalingConfig | None = Field(
        default=None,
        description="Scale the instances with the load; none: instance_count, fixed.",
    )
    serverless: ServerlessConfig | None = Field(
        default=None, description="Serverless variant; instance settings are then ignored."
    )
    data_capture_percent: int = Field(
        default=0, ge=0, le=100, description="Share of requests captured to S3; 0 turns it off."
    )
    deployment: DeploymentStrategy = DeploymentStrategy()
    timeout_seconds: int = Field(
        default=1800, ge=10, le=7200, description="Longest wait for the endpoint to settle."
    )
    model_data: Literal["tarball", "uncompressed"] = Field(
        default="tarball",
        description=(
            "What SageMaker loads: model.tar.gz, or the unpacked files published under "
            "{version}/model/ (an S3Prefix data source: no download-and-untar on instance start, "
            "for large models)."
        ),
    )
    vpc: VpcConfig | None = Field(
        default=None,
        description="The model's VPC (CreateModel VpcConfig); none: the platform's network.vpc.",
    )
    network_isolation: bool = Field(
        default=True,
        description=(
            "EnableNetworkIsolation: the serving container gets no network (SageMaker fetches "
            "the model and captures data itself). Ignored for serverless, which lacks it."
        ),
    )

    @model_validator(mode="after")
    def _instances_fit(self) -> EndpointConfig:
        """Refuse what SageMaker would refuse, or run badly, once a deploy reaches it."""
        if self.serverless is not None:
            if self.autoscaling is not None:
                raise ValueError(
                    "autoscaling is for instance endpoints: a serverless endpoint scales by "
                    "itself up to serverless.max_concurrency (Application Auto Scaling's "
                    "DesiredInstanceCount does not apply to it); drop one of the two"
                )
            if self.vpc is not None:
                raise ValueError(
                    "vpc: SageMaker serverless endpoints do not run in a VPC; serve on "
                    "instances, or leave vpc out"
                )
            return self
        scaling = self.autoscaling
        if scaling is not None and not (
            scaling.min_instances <= self.instance_count <= scaling.max_instances
        ):
            raise ValueError(
                f"instance_count {self.instance_count} is outside autoscaling's "
                f"[{scaling.min_instances}, {scaling.max_instances}]: a new fleet starts at "
                "instance_count, and Application Auto Scaling keeps it within its bounds"
            )
        kind = self.deployment.type
        # With autoscaling the fleet may scale in to min_instances (at most instance_count).
        fewest = scaling.min_instances if scaling else self.instance_count
        if kind in SHIFTING and fewest < 2:
            what = "autoscaling.min_instances" if scaling else "instance_count"
            raise ValueError(
                f"deployment {kind} needs at least 2 instances, {what} is {fewest}: SageMaker "
                f"shifts {kind} traffic in steps of the fleet's capacity, and one instance "
                "cannot be split (the first step would be all of it); set instance_count (and "
                "autoscaling.min_instances) to 2 or more, or use all_at_once"
            )
        return self


class TrainingConfig(Strict):
    """Where a model trains: in the flow's own process, or as a SageMaker training job."""

    target: Literal["local", "sagemaker"] = Field(
        default="local",
        description=(
            "local: in the flow's process. sagemaker: a training job on the project's image "
            "(needs an s3:// store, MLOPS_SERVING_IMAGE and MLOPS_SAGEMAKER_ROLE_ARN)."
        ),
    )
    instance_type: str = Field(
        default="ml.m5.xlarge",
        pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$",
        description="SageMaker training instance type (sagemaker target only).",
    )
    max_runtime_seconds: int = Field(
        default=3600,
        ge=60,
        le=432_000,
        description="StoppingCondition.MaxRuntimeInSeconds: SageMaker stops the job after this.",
    )
    volume_size_gb: int = Field(
        default=30, ge=1, le=16384, description="Training instance's EBS volume (the channel)."
    )
    vpc: VpcConfig | None = Field(
        default=None,
        description="The job's VPC (CreateTrainingJob VpcConfig); none: platform network.vpc.",
    )
    network_isolation: bool = Field(
        default=True,
        description=(
            "EnableNetworkIsolation: the training container gets no network; SageMaker still "
            "downloads the channel and uploads the model (the entry point needs nothing else)."
        ),
    )

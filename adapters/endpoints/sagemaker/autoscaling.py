"""Application Auto Scaling of an endpoint's instances: register, track, put back, deregister.

A model whose ``endpoint.autoscaling`` is set has its production variant registered as a
scalable target (``sagemaker:variant:DesiredInstanceCount`` of
``endpoint/{endpoint}/variant/{variant}``, the config's min and max instances) once a rollout
is ``InService``, with one target-tracking policy on ``SageMakerVariantInvocationsPerInstance``
(``{endpoint}-{variant}-invocations``). Each step reads what Application Auto Scaling holds
first and writes only what differs, so a retry or a second rollout changes nothing.

SageMaker's rules (docs: "Update endpoints that use auto scaling", "Delete endpoints configured
for auto scaling"), and what the rollout does about them:

- an ``UpdateEndpoint`` that changes the instance type of a registered variant, or removes a
  registered variant, fails: such variants are deregistered (policies deleted first) before the
  update, and put back as they were if the update fails or rolls back;
- an update that keeps the variant and its instance type (a new model, the usual new version)
  is allowed with the registration in place;
- deleting an endpoint deregisters its variants when the caller may; the project deregisters
  them itself first (a failed first deploy, a ``Failed`` endpoint recreated, cleanup), so no
  registration outlives its endpoint even with a narrow policy.

boto3 only, on a client passed in (``application-autoscaling``); nothing at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.endpoints.sagemaker.api import described

if TYPE_CHECKING:
    from core.config import AutoscalingConfig
    from core.endpoint import Progress

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
POLICY_TYPE = "TargetTrackingScaling"


def resource_id(endpoint: str, variant: str) -> str:
    """Application Auto Scaling's id of one production variant."""
    return f"endpoint/{endpoint}/variant/{variant}"


def policy_name(endpoint: str, variant: str) -> str:
    """The project's target-tracking policy of one variant."""
    return f"{endpoint}-{variant}-invocations"


def policy_configuration(config: AutoscalingConfig) -> dict[str, Any]:
    """``TargetTrackingScalingPolicyConfiguration`` for ``config``."""
    return {
        "TargetValue": float(config.target_invocations_per_instance),
        "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
        "ScaleInCooldown": config.scale_in_cooldown_seconds,
        "ScaleOutCooldown": config.scale_out_cooldown_seconds,
    }


KEEP_FLEET_SIZE = {
    "RetainAllVariantProperties": True,
    "ExcludeRetainedVariantProperties": [
        {"VariantPropertyType": "DesiredWeight"},
        {"VariantPropertyType": "DataCaptureConfig"},
    ],
}
"""``UpdateEndpoint`` arguments for a scaled variant that stays registered: the new fleet starts
at the instance count autoscaling reached, not the config's ``instance_count`` (SageMaker's
default would shrink a fleet grown under load at every rollout); weight and capture still come
from the new config."""


def _same_policy(found: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """Whether a policy read back holds every setting asked for (AWS adds defaults of its own)."""
    if found is None:
        return False
    return all(found.get(key) == value for key, value in wanted.items())


def _missing(exc: Exception) -> bool:
    """Whether Application Auto Scaling answered that the target or policy is not there."""
    details = getattr(exc, "response", {}).get("Error", {})
    code, message = str(details.get("Code", "")), str(details.get("Message", "")).lower()
    return code == "ObjectNotFoundException" or (
        code == "ValidationException" and "no scalable target" in message
    )


@dataclass(frozen=True)
class Registration:
    """What Application Auto Scaling holds for one variant: bounds and policies."""

    endpoint: str
    variant: str
    min_capacity: int
    max_capacity: int
    policies: tuple[tuple[str, dict[str, Any]], ...] = ()


class EndpointScaling:
    """Reads and writes the scalable targets and policies of the project's endpoints.

    Args:
        client: boto3 ``application-autoscaling`` client.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def registration(self, endpoint: str, variant: str) -> Registration | None:
        """What is registered for ``variant`` of ``endpoint``; None when nothing is."""
        rid = resource_id(endpoint, variant)
        targets = self.client.describe_scalable_targets(
            ServiceNamespace=NAMESPACE, ResourceIds=[rid], ScalableDimension=DIMENSION
        )["ScalableTargets"]
        target = next((t for t in targets if t["ResourceId"] == rid), None)
        if target is None:
            return None
        pages = self.client.get_paginator("describe_scaling_policies").paginate(
            ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION
        )
        policies = tuple(
            (p["PolicyName"], dict(p.get("TargetTrackingScalingPolicyConfiguration") or {}))
            for page in pages
            for p in page.get("ScalingPolicies", [])
            if p.get("ResourceId") == rid and p.get("PolicyType") == POLICY_TYPE
        )
        return Registration(
            endpoint, variant, int(target["MinCapacity"]), int(target["MaxCapacity"]), policies
        )

    def registered_variants(self, endpoint: str) -> list[str]:
        """Every variant of ``endpoint`` with a scalable target (whatever registered it)."""
        prefix = resource_id(endpoint, "")
        pages = self.client.get_paginator("describe_scalable_targets").paginate(
            ServiceNamespace=NAMESPACE, ScalableDimension=DIMENSION
        )
        return sorted(
            t["ResourceId"][len(prefix) :]
            for page in pages
            for t in page.get("ScalableTargets", [])
            if t["ResourceId"].startswith(prefix)
        )

    def apply(self, endpoint: str, variant: str, config: AutoscalingConfig) -> list[str]:
        """Register ``variant`` with ``config``'s bounds and policy; write only what differs.

        Returns:
            What was changed, one phrase each (empty: it was all in place).
        """
        rid = resource_id(endpoint, variant)
        current = self.registration(endpoint, variant)
        changed: list[str] = []
        bounds = (config.min_instances, config.max_instances)
        if current is None or (current.min_capacity, current.max_capacity) != bounds:
            self.client.register_scalable_target(
                ServiceNamespace=NAMESPACE,
                ResourceId=rid,
                ScalableDimension=DIMENSION,
                MinCapacity=config.min_instances,
                MaxCapacity=config.max_instances,
            )
            changed.append(f"{rid} scales between {bounds[0]} and {bounds[1]} instances")
        name = policy_name(endpoint, variant)
        wanted = policy_configuration(config)
        found = dict(current.policies).get(name) if current else None
        if not _same_policy(found, wanted):
            self._put_policy(name, rid, wanted)
            changed.append(
                f"policy {name} holds {config.target_invocations_per_instance:g} invocations "
                f"per instance a minute (cooldowns: in {config.scale_in_cooldown_seconds}s, "
                f"out {config.scale_out_cooldown_seconds}s)"
            )
        return changed

    def remove(self, endpoint: str, variant: str) -> Registration | None:
        """Delete ``variant``'s policies, then deregister it; what was there (None: nothing)."""
        current = self.registration(endpoint, variant)
        if current is None:
            return None
        rid = resource_id(endpoint, variant)
        where = {"ServiceNamespace": NAMESPACE, "ResourceId": rid, "ScalableDimension": DIMENSION}
        for name, _ in current.policies:
            self._ignore_missing(self.client.delete_scaling_policy, PolicyName=name, **where)
        self._ignore_missing(self.client.deregister_scalable_target, **where)
        return current

    def remove_endpoint(self, endpoint: str) -> list[Registration]:
        """Deregister every variant of ``endpoint`` (before it is deleted)."""
        gone = [self.remove(endpoint, v) for v in self.registered_variants(endpoint)]
        return [r for r in gone if r is not None]

    def restore(self, registration: Registration) -> None:
        """Put a removed registration back as it was (after an update that did not happen)."""
        rid = resource_id(registration.endpoint, registration.variant)
        self.client.register_scalable_target(
            ServiceNamespace=NAMESPACE,
            ResourceId=rid,
            ScalableDimension=DIMENSION,
            MinCapacity=registration.min_capacity,
            MaxCapacity=registration.max_capacity,
        )
        for name, configuration in registration.policies:
            self._put_policy(name, rid, configuration)

    def _put_policy(self, name: str, rid: str, configuration: dict[str, Any]) -> None:
        """Create or replace the target-tracking policy ``name`` of the variant ``rid``."""
        self.client.put_scaling_policy(
            PolicyName=name,
            ServiceNamespace=NAMESPACE,
            ResourceId=rid,
            ScalableDimension=DIMENSION,
            PolicyType=POLICY_TYPE,
            TargetTrackingScalingPolicyConfiguration=configuration,
        )

    @staticmethod
    def _ignore_missing(call: Callable[..., Any], **request: Any) -> None:
        try:
            call(**request)
        except Exception as exc:
            if not _missing(exc):
                raise


def blocking_update(
    registered: list[str], old_variants: list[dict[str, Any]], new_variants: list[dict[str, Any]]
) -> list[str]:
    """Registered variants an ``UpdateEndpoint`` from ``old_variants`` to ``new_variants`` blocks.

    SageMaker refuses the update while a variant it removes, or whose instance type it changes
    (serverless included), is registered for autoscaling. A variant whose old instance type is
    not known (its config is gone) counts as changing: releasing it costs a re-registration,
    keeping it could cost the update.
    """
    old = {v["VariantName"]: v.get("InstanceType") for v in old_variants}
    new = {v["VariantName"]: v.get("InstanceType") for v in new_variants}
    unknown = object()
    return [v for v in registered if v not in new or old.get(v, unknown) != new[v]]


class RolloutScaling:
    """The autoscaling steps of one rollout, which :class:`~.deploy.Rollout` calls.

    Args:
        scaling: the Application Auto Scaling reads and writes.
        endpoint: the endpoint rolled out.
        variant: its production variant's name.
        config: the model's ``endpoint.autoscaling``; None: a fixed instance count.
        progress: where to report each step.
    """

    def __init__(
        self,
        scaling: EndpointScaling,
        endpoint: str,
        variant: str,
        config: AutoscalingConfig | None,
        progress: Progress,
    ) -> None:
        self.scaling = scaling
        self.endpoint = endpoint
        self.variant = variant
        self.config = config
        self.progress = progress

    def release_for_update(
        self, old_config: dict[str, Any] | None, new_variants: list[dict[str, Any]]
    ) -> list[Registration]:
        """Deregister the variants SageMaker would refuse to update; what was released.

        A model without autoscaling whose deployer may not read Application Auto Scaling goes
        on as if nothing were registered (what it has always done); with autoscaling, the error
        is raised.
        """
        try:
            registered = self.scaling.registered_variants(self.endpoint)
        except Exception as exc:
            if self.config is not None:
                raise
            self.progress(f"note: autoscaling of {self.endpoint} not read ({described(exc)})")
            return []
        old_variants = (old_config or {}).get("ProductionVariants", [])
        blocking = blocking_update(registered, old_variants, new_variants)
        released = [r for r in (self.scaling.remove(self.endpoint, v) for v in blocking) if r]
        if released:
            self.progress(
                f"deregistered {', '.join(r.variant for r in released)} of {self.endpoint} from "
                "autoscaling: SageMaker refuses an update that changes a scaled variant's "
                "instance type or removes it"
            )
        return released

    def put_back(self, released: list[Registration]) -> None:
        """Restore what :meth:`release_for_update` released (the update did not happen)."""
        for registration in released:
            try:
                self.scaling.restore(registration)
                self.progress(f"autoscaling of {self.endpoint}/{registration.variant} restored")
            except Exception as exc:
                self.progress(
                    f"warning: could not restore autoscaling of {self.endpoint}/"
                    f"{registration.variant} ({described(exc)}): it runs at a fixed count until "
                    "the next rollout"
                )

    def after_serving(self) -> None:
        """Bring the serving variant's autoscaling to the config: registered, or not at all.

        A failure is reported, not raised: the endpoint serves the new version (at its fixed
        instance count), and the next rollout, or a retry of this one, tries again.
        """
        if self.config is None:
            try:
                if self.scaling.remove(self.endpoint, self.variant):
                    self.progress(
                        f"autoscaling off: {self.endpoint}/{self.variant} deregistered; it keeps "
                        "its current instance count until a config with instance_count rolls out"
                    )
            except Exception as exc:
                self.progress(f"note: autoscaling of {self.endpoint} not read ({described(exc)})")
            return
        try:
            changes = self.scaling.apply(self.endpoint, self.variant, self.config)
        except Exception as exc:
            self.progress(
                f"warning: autoscaling of {self.endpoint}/{self.variant} not applied "
                f"({described(exc)}): it serves at a fixed instance count; a retry applies it"
            )
            return
        what = "; ".join(changes) if changes else "already as configured, nothing changed"
        self.progress(f"autoscaling of {self.endpoint}/{self.variant}: {what}")

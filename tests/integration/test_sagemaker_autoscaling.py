"""Endpoint autoscaling against moto server over real HTTP: Application Auto Scaling and SageMaker.

moto implements Application Auto Scaling's scalable targets and scaling policies (register,
describe, put, delete, deregister); SageMaker's states come from
:mod:`tests.fixtures.sagemaker_moto`. Proven here: what a rollout registers (read back from
moto), that a second rollout sends no write, the order of deregister / ``UpdateEndpoint`` /
register when the instance type changes, the registration put back after a rolled-back update,
deregistration before an endpoint is deleted, and the experiment's challenger left unscaled.
Not proven (moto does neither): that SageMaker refuses an update of a registered variant whose
instance type changes, and any scaling at all (no CloudWatch alarms fire, no instance is added).
"""

from __future__ import annotations

from typing import Any

import pytest

from adapters.endpoints.sagemaker.autoscaling import (
    DIMENSION,
    METRIC,
    NAMESPACE,
    policy_name,
    resource_id,
)
from adapters.endpoints.sagemaker.names import endpoint_name
from adapters.endpoints.sagemaker.target import SageMakerTarget
from core.config import AutoscalingConfig, DeploymentStrategy, EndpointConfig
from core.endpoint import Resource, RolloutFailed, TrafficPlan
from tests.fixtures.moto import boto_client
from tests.integration import test_sagemaker_target
from tests.integration.test_sagemaker_target import MODEL, Log, make_target, version

env = test_sagemaker_target.env
"""The SageMaker target tests' fixture: settings on moto, a project tag of the test's own."""

pytestmark = pytest.mark.integration

WRITES = frozenset(
    {
        "RegisterScalableTarget",
        "PutScalingPolicy",
        "DeleteScalingPolicy",
        "DeregisterScalableTarget",
        "UpdateEndpoint",
        "CreateEndpoint",
        "DeleteEndpoint",
    }
)

SCALED = EndpointConfig(
    instance_count=3,
    autoscaling=AutoscalingConfig(
        min_instances=2,
        max_instances=6,
        target_invocations_per_instance=750,
        scale_in_cooldown_seconds=400,
        scale_out_cooldown_seconds=90,
    ),
    deployment=DeploymentStrategy(type="canary", canary_percent=20),
)


class Requests(list[str]):
    """Names of the write requests two boto3 clients send, in the order they send them."""

    def watch(self, *clients: Any) -> Requests:
        for client in clients:
            client.meta.events.register("before-call.*.*", self._seen)
        return self

    def _seen(self, model: Any, **_: Any) -> None:
        if model.name in WRITES:
            self.append(model.name)


def scaled_target(env: dict[str, Any]) -> tuple[SageMakerTarget, Any, Requests]:
    """A target with an autoscaling client, the client, and the writes both send."""
    url = env["settings"].aws_endpoint_url
    client = boto_client("application-autoscaling", url)
    target = make_target(env, autoscaling=client)
    return target, client, Requests().watch(client, target.sm)


def registered(client: Any, endpoint: str, variant: str = "AllTraffic") -> dict[str, Any]:
    """Bounds and target-tracking policies Application Auto Scaling holds for the variant."""
    rid = resource_id(endpoint, variant)
    targets = client.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[rid], ScalableDimension=DIMENSION
    )["ScalableTargets"]
    policies = client.describe_scaling_policies(
        ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION
    )["ScalingPolicies"]
    return {
        "bounds": [(t["MinCapacity"], t["MaxCapacity"]) for t in targets],
        "policies": {
            p["PolicyName"]: (p["PolicyType"], p["TargetTrackingScalingPolicyConfiguration"])
            for p in policies
            if p["ResourceId"] == rid
        },
    }


def test_a_rollout_registers_the_variant_and_a_second_changes_nothing(env: dict[str, Any]) -> None:
    target, client, requests = scaled_target(env)
    name = endpoint_name(env["tag"], MODEL)

    log = Log()
    target.deploy(version(env, 1, SCALED), log)

    # The cost printed before anything is created spans the bounds (0.115 $/h x 730 h x 2..6).
    assert "3 x ml.m5.large (autoscaled 2-6) at $0.115/hour: $167.90 to $503.70 per month" in log[0]
    assert target.monthly_cost(SCALED, env["platform"]) == 167.90
    assert registered(client, name) == {
        "bounds": [(2, 6)],
        "policies": {
            policy_name(name, "AllTraffic"): (
                "TargetTrackingScaling",
                {
                    "TargetValue": 750.0,
                    "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
                    "ScaleInCooldown": 400,
                    "ScaleOutCooldown": 90,
                },
            )
        },
    }
    # Registered once the endpoint is InService, not before.
    assert requests == ["CreateEndpoint", "RegisterScalableTarget", "PutScalingPolicy"]
    # The variant starts at instance_count, within the bounds.
    config = target.sm.describe_endpoint_config(
        EndpointConfigName=target.names_for(version(env, 1, SCALED)).config
    )
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 3

    requests.clear()
    log = Log()
    target.deploy(version(env, 1, SCALED), log)
    assert requests == []  # a retry writes nothing, to SageMaker or to Application Auto Scaling
    assert any("already as configured, nothing changed" in m for m in log)

    # A new version on the same instance type: SageMaker allows the update with the variant
    # registered, so nothing is deregistered and nothing needs registering again.
    requests.clear()
    target.deploy(version(env, 2, SCALED), Log())
    assert requests == ["UpdateEndpoint"]
    assert registered(client, name)["bounds"] == [(2, 6)]
    # The new fleet starts at the size autoscaling reached, not at instance_count; weight and
    # data capture come from the new config.
    [(_, update)] = env["sim"].actions("UpdateEndpoint")
    assert update["RetainAllVariantProperties"] is True
    assert update["ExcludeRetainedVariantProperties"] == [
        {"VariantPropertyType": "DesiredWeight"},
        {"VariantPropertyType": "DataCaptureConfig"},
    ]


def test_changed_bounds_reach_autoscaling_without_a_new_version(env: dict[str, Any]) -> None:
    target, client, requests = scaled_target(env)
    name = endpoint_name(env["tag"], MODEL)
    target.deploy(version(env, 1, SCALED), Log())
    assert SCALED.autoscaling is not None
    wider = SCALED.model_copy(
        update={"autoscaling": SCALED.autoscaling.model_copy(update={"max_instances": 9})}
    )
    requests.clear()
    target.deploy(version(env, 1, wider), Log())
    # Same endpoint config (autoscaling is not part of it): only the bounds are written.
    assert requests == ["RegisterScalableTarget"]
    assert registered(client, name)["bounds"] == [(2, 9)]

    # Autoscaling turned off: the variant is deregistered, its policy with it.
    fixed = wider.model_copy(
        update={"autoscaling": None, "deployment": DeploymentStrategy(), "instance_count": 3}
    )
    requests.clear()
    target.deploy(version(env, 1, fixed), Log())
    assert requests == ["DeleteScalingPolicy", "DeregisterScalableTarget"]
    assert registered(client, name) == {"bounds": [], "policies": {}}


def test_an_instance_type_change_deregisters_before_the_update(env: dict[str, Any]) -> None:
    target, client, requests = scaled_target(env)
    name = endpoint_name(env["tag"], MODEL)
    target.deploy(version(env, 1, SCALED), Log())
    bigger = SCALED.model_copy(update={"instance_type": "ml.m5.xlarge"})

    # SageMaker refuses to change the instance type of a registered variant: released first;
    # the update rolls back, and the registration is put back as it was.
    env["sim"].roll_back_next_update("alarm fired")
    requests.clear()
    with pytest.raises(RolloutFailed, match="rolled back"):
        target.deploy(version(env, 2, bigger), Log())
    assert requests[:3] == ["DeleteScalingPolicy", "DeregisterScalableTarget", "UpdateEndpoint"]
    assert requests[3:] == ["RegisterScalableTarget", "PutScalingPolicy"]
    assert registered(client, name)["bounds"] == [(2, 6)]
    assert len(registered(client, name)["policies"]) == 1

    requests.clear()
    serving = target.deploy(version(env, 2, bigger), Log())
    assert serving.version == "v2"
    assert requests == [
        "DeleteScalingPolicy",
        "DeregisterScalableTarget",
        "UpdateEndpoint",
        "RegisterScalableTarget",
        "PutScalingPolicy",
    ]
    assert registered(client, name)["bounds"] == [(2, 6)]
    # A released variant has no fleet size to keep: the new one starts at instance_count.
    assert all(
        "RetainAllVariantProperties" not in u for _, u in env["sim"].actions("UpdateEndpoint")
    )


def test_deleting_the_endpoint_deregisters_it_first(env: dict[str, Any]) -> None:
    target, client, requests = scaled_target(env)
    name = endpoint_name(env["tag"], MODEL)
    target.deploy(version(env, 1, SCALED), Log())
    requests.clear()
    # A rollout whose new endpoint failed after the deploy (the smoke test) removes it.
    target.remove(MODEL, Log())
    assert requests == ["DeleteScalingPolicy", "DeregisterScalableTarget", "DeleteEndpoint"]
    assert registered(client, name) == {"bounds": [], "policies": {}}

    # Cleanup's path: the endpoint of a model no longer configured.
    target.deploy(version(env, 1, SCALED), Log())
    assert registered(client, name)["bounds"] == [(2, 6)]
    requests.clear()
    target.delete(Resource("endpoint", name, MODEL, "v1", True))
    assert requests == ["DeleteScalingPolicy", "DeregisterScalableTarget", "DeleteEndpoint"]
    assert registered(client, name) == {"bounds": [], "policies": {}}


def test_a_failed_first_deploy_leaves_no_registration(env: dict[str, Any]) -> None:
    target, client, _ = scaled_target(env)
    name = endpoint_name(env["tag"], MODEL)
    env["sim"].fail_next_create("capacity error")
    with pytest.raises(RolloutFailed, match="capacity error"):
        target.deploy(version(env, 1, SCALED), Log())
    assert registered(client, name) == {"bounds": [], "policies": {}}
    assert target.describe(MODEL) is None


def test_the_challenger_of_an_experiment_does_not_scale(env: dict[str, Any]) -> None:
    target, client, _ = scaled_target(env)
    name = endpoint_name(env["tag"], MODEL)
    v1, v2 = version(env, 1, SCALED), version(env, 2, SCALED)
    target.deploy(v1, Log())
    target.start_experiment(TrafficPlan(MODEL, "ab", v1, v2, 10.0, "exp-ab"), Log())
    # The champion keeps its registration (same variant, same instance type); the challenger
    # runs its fixed instance_count for the experiment's length.
    assert registered(client, name)["bounds"] == [(2, 6)]
    assert registered(client, name, "Challenger") == {"bounds": [], "policies": {}}
    target.stop_experiment(MODEL, Log())
    assert registered(client, name)["bounds"] == [(2, 6)]


def test_autoscaling_without_a_client_is_refused_before_anything_is_created(
    env: dict[str, Any],
) -> None:
    target = make_target(env)
    with pytest.raises(RolloutFailed, match="no application-autoscaling client"):
        target.deploy(version(env, 1, SCALED), Log())
    assert target.describe(MODEL) is None


class Denied:
    """An Application Auto Scaling client for a deployer whose policy grants none of it."""

    def __getattr__(self, operation: str) -> Any:
        from botocore.exceptions import ClientError

        def refuse(*_: Any, **__: Any) -> Any:
            error = {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}
            raise ClientError(error, operation)  # type: ignore[arg-type]

        return refuse


def test_a_model_without_autoscaling_needs_no_autoscaling_rights(env: dict[str, Any]) -> None:
    # Rollouts check for registrations (a variant turned off, an instance-type change): a deployer
    # who may not read Application Auto Scaling still deploys and updates a fixed fleet.
    target = make_target(env, autoscaling=Denied())
    target.deploy(version(env, 1), Log())
    log = Log()
    bigger = EndpointConfig(instance_type="ml.m5.xlarge")
    assert target.deploy(version(env, 2, bigger), log).version == "v2"
    assert any("not read (AccessDeniedException: not authorized)" in m for m in log)
    target.remove(MODEL, log)
    assert target.describe(MODEL) is None
    # With autoscaling configured the same refusal stops the rollout before any update.
    # (A new endpoint serves even when its registration is refused: a warning, not a failure.)
    target.deploy(version(env, 3, SCALED), log)
    assert any("not applied (AccessDeniedException" in m for m in log)
    bigger_scaled = SCALED.model_copy(update={"instance_type": "ml.m5.xlarge"})
    with pytest.raises(RolloutFailed, match=r"cannot deregister .* AccessDeniedException"):
        target.deploy(version(env, 4, bigger_scaled), Log())
    assert target.describe(MODEL).version == "v3"  # type: ignore[union-attr]

"""Experiments on the SageMaker target against moto server over real HTTP.

moto keeps production-variant weights and implements ``UpdateEndpointWeightsAndCapacities``;
:mod:`tests.fixtures.sagemaker_moto` adds ``UpdateEndpoint``, keeps ``ShadowProductionVariants``
and answers ``TargetVariant``. Proven here: the endpoint config SageMaker is asked for (two
weighted variants, or one and a shadow; Data Capture on), the switch and the switch back, the
weights changed in place, the cleanup, and a start SageMaker rolls back. Not proven (moto runs
no model): SageMaker's copies to the shadow and the files Data Capture writes.
"""

from __future__ import annotations

from typing import Any

import pytest

from adapters.endpoints.sagemaker.experiment import SageMakerExperiments
from adapters.endpoints.sagemaker.names import endpoint_name
from core.endpoint import RolloutFailed, TrafficPlan
from tests.fixtures.moto import boto_client
from tests.integration import test_sagemaker_target
from tests.integration.test_sagemaker_alarms import project_alarms, tags_of
from tests.integration.test_sagemaker_target import (
    Log,
    make_target,
    project_configs,
    project_models,
    sm,
    version,
)

env = test_sagemaker_target.env
"""The SageMaker target tests' fixture: settings on moto, a project tag of the test's own."""

pytestmark = pytest.mark.integration

MODEL = "limit_optimiser"


def started(env: dict[str, Any]) -> tuple[Any, TrafficPlan, TrafficPlan]:
    """A target serving v1, and an A/B and a shadow plan for v2."""
    target = make_target(env)
    v1, v2 = version(env, 1), version(env, 2)
    target.deploy(v1, Log())
    ab = TrafficPlan(MODEL, "ab", v1, v2, 10.0, "exp-ab")
    shadow = TrafficPlan(MODEL, "shadow", v1, v2, 20.0, "exp-shadow")
    return target, ab, shadow


def test_ab_runs_two_weighted_variants_with_capture_and_stop_returns_to_one(
    env: dict[str, Any],
) -> None:
    target, plan, _ = started(env)
    name = endpoint_name(env["tag"], MODEL)
    before = sm(env).describe_endpoint(EndpointName=name)["EndpointConfigName"]
    configs, models = project_configs(env), project_models(env)

    said = Log()
    target.start_experiment(plan, said)
    # SageMaker cannot switch TargetVariant off: the start says so rather than pretend.
    assert any("cannot refuse InvokeEndpoint's TargetVariant" in line for line in said)

    traffic = target.traffic(MODEL)
    assert traffic is not None
    assert (traffic["mode"], traffic["experiment_id"], traffic["shadow"]) == ("ab", "exp-ab", None)
    assert [(v["name"], v["version"], v["weight"], v["arm"]) for v in traffic["variants"]] == [
        ("AllTraffic", "v1", 90.0, "champion"),
        ("Challenger", "v2", 10.0, "challenger"),
    ]
    now = sm(env).describe_endpoint(EndpointName=name)["EndpointConfigName"]
    capture = sm(env).describe_endpoint_config(EndpointConfigName=now)["DataCaptureConfig"]
    assert capture["EnableCapture"] and capture["InitialSamplingPercentage"] == 100
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}
    assert capture["DestinationS3Uri"] == target.capture_prefix(MODEL)
    assert target.capture_prefix(MODEL) == f"{env['store']}/datacapture/{MODEL}"
    # Status still reports the champion's version for the endpoint.
    serving = target.describe(MODEL)
    assert serving is not None and serving.version == "v1"
    # The challenger's model is in use while it serves: cleanup keeps it.
    challenger_model = next(m for m in project_models(env) if m not in models)
    assert all(r.in_use for r in target.resources() if r.name == challenger_model)
    # Its variant is watched like the champion's: p99 latency and 5xx rate, tagged with it.
    alarms = project_alarms(env)
    assert set(alarms) == {f"{name}-{v}-{k}" for v in ("AllTraffic", "Challenger")
                           for k in ("p99-latency", "5xx-rate")}  # fmt: skip
    watched = alarms[f"{name}-Challenger-p99-latency"]
    assert {"Name": "VariantName", "Value": "Challenger"} in watched["Dimensions"]
    tags = tags_of(env, watched["AlarmArn"])
    assert (tags["variant"], tags["version"], tags["project"]) == ("Challenger", "v2", env["tag"])

    # A caller can name the challenger (InvokeEndpoint's TargetVariant).
    runtime = boto_client("sagemaker-runtime", env["settings"].aws_endpoint_url)
    answer = runtime.invoke_endpoint(
        EndpointName=name, Body=b'{"instances": [{}]}', ContentType="application/json",
        TargetVariant="Challenger",
    )  # fmt: skip
    assert answer["InvokedProductionVariant"] == "Challenger"
    assert b'"version": "v2"' in answer["Body"].read()

    # The share changes in place: UpdateEndpointWeightsAndCapacities, no new config.
    SageMakerExperiments(target).set_share(MODEL, 30.0, Log())
    traffic = target.traffic(MODEL)
    assert traffic is not None and [v["weight"] for v in traffic["variants"]] == [70.0, 30.0]
    assert sm(env).describe_endpoint(EndpointName=name)["EndpointConfigName"] == now

    # A second experiment on the same model is refused; nothing changes.
    with pytest.raises(RolloutFailed, match="already runs experiment exp-ab"):
        target.start_experiment(plan, Log())

    target.stop_experiment(MODEL, Log())
    target.stop_experiment(MODEL, Log())  # idempotent

    assert sm(env).describe_endpoint(EndpointName=name)["EndpointConfigName"] == before
    after = target.traffic(MODEL)
    assert after is not None and after["mode"] is None
    assert [(v["name"], v["version"]) for v in after["variants"]] == [("AllTraffic", "v1")]
    # The experiment's config, the challenger's model and its alarms are gone.
    assert (project_configs(env), project_models(env)) == (configs, models)
    assert set(project_alarms(env)) == {f"{name}-AllTraffic-p99-latency",
                                        f"{name}-AllTraffic-5xx-rate"}  # fmt: skip


def test_shadow_is_a_shadow_production_variant_sampling_its_share(env: dict[str, Any]) -> None:
    target, _, plan = started(env)
    name = endpoint_name(env["tag"], MODEL)
    configs, models = project_configs(env), project_models(env)

    target.start_experiment(plan, Log())

    config_name = sm(env).describe_endpoint(EndpointName=name)["EndpointConfigName"]
    config = sm(env).describe_endpoint_config(EndpointConfigName=config_name)
    assert [v["InitialVariantWeight"] for v in config["ProductionVariants"]] == [1.0]
    (shadow,) = config["ShadowProductionVariants"]
    assert (shadow["VariantName"], shadow["InitialVariantWeight"]) == ("Shadow", 0.2)
    traffic = target.traffic(MODEL)
    assert traffic is not None and traffic["mode"] == "shadow"
    assert traffic["shadow"] == {"name": "Shadow", "version": "v2", "percent": 20.0}
    assert [v["version"] for v in traffic["variants"]] == ["v1"]
    assert f"{name}-Shadow-5xx-rate" in project_alarms(env)

    target.stop_experiment(MODEL, Log())
    after = target.traffic(MODEL)
    assert after is not None and after["shadow"] is None
    assert (project_configs(env), project_models(env)) == (configs, models)
    assert not [a for a in project_alarms(env) if "-Shadow-" in a]


def test_a_start_sagemaker_rolls_back_leaves_the_champion_and_nothing_behind(
    env: dict[str, Any],
) -> None:
    target, plan, _ = started(env)
    name = endpoint_name(env["tag"], MODEL)
    before = sm(env).describe_endpoint(EndpointName=name)["EndpointConfigName"]
    configs, models = project_configs(env), project_models(env)
    env["sim"].roll_back_next_update("Challenger failed its health check")

    with pytest.raises(RolloutFailed, match="health check; the champion serves 100 %"):
        target.start_experiment(plan, Log())

    desc = sm(env).describe_endpoint(EndpointName=name)
    assert (desc["EndpointStatus"], desc["EndpointConfigName"]) == ("InService", before)
    assert (project_configs(env), project_models(env)) == (configs, models)
    assert not [a for a in project_alarms(env) if "-Challenger-" in a]
    traffic = target.traffic(MODEL)
    assert traffic is not None and traffic["experiment_id"] is None


def test_a_promotion_during_an_experiment_ends_it_and_leaves_no_experiment_config(
    env: dict[str, Any],
) -> None:
    # The evaluate flow promotes by rolling the challenger out, then stops the experiment.
    target, plan, _ = started(env)
    v1_configs, v1_models = project_configs(env), project_models(env)
    target.start_experiment(plan, Log())
    v2 = version(env, 2)
    names = target.names_for(v2)

    target.deploy(v2, Log())
    target.stop_experiment(MODEL, Log())  # a no-op now: the endpoint left the experiment

    traffic = target.traffic(MODEL)
    assert traffic is not None and traffic["experiment_id"] is None
    assert [v["version"] for v in traffic["variants"]] == ["v2"]
    # What is left: v1's config and model (the rollback target) and v2's; not the
    # experiment's two-variant config, which nothing would use again.
    assert sorted(project_configs(env)) == sorted([*v1_configs, names.config])
    assert sorted(project_models(env)) == sorted([*v1_models, names.model])
    # Nor the alarms on the challenger's variant, which watch nothing now.
    assert not [a for a in project_alarms(env) if "-Challenger-" in a]

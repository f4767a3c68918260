"""The CloudWatch alarms of SageMaker endpoints, on moto server over real HTTP.

CloudWatch alarms are moto's own (``PutMetricAlarm``, ``DescribeAlarms``, ``SetAlarmState``,
tags); SageMaker's blue/green guardrail, which reads the alarms named in an update's
``AutoRollbackConfiguration`` while it bakes, is simulated by :mod:`tests.fixtures.sagemaker_moto`
(moto has none). Each test uses its own project tag, as in ``test_sagemaker_target``, whose
``env`` fixture and helpers these tests share.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.endpoints.sagemaker.target import SageMakerTarget
from core.cleanup_plan import Inventory, ModelInventory, plan_cleanup
from core.config import AlarmConfig, DeploymentStrategy, EndpointConfig, RetentionPolicy
from core.endpoint import Resource, RolloutFailed
from tests.fixtures.moto import boto_client
from tests.fixtures.sagemaker_moto import SageMakerSim
from tests.integration.test_sagemaker_target import (
    MODEL,
    RECORDS,
    Log,
    make_env,
    make_target,
    version,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def env(
    moto_server: str,
    s3_store_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    sagemaker_sim: SageMakerSim,
    tmp_path: Path,
) -> dict[str, Any]:
    """Settings pointing at moto, a unique project tag, the simulated SageMaker."""
    return make_env(moto_server, s3_store_uri, monkeypatch, sagemaker_sim, tmp_path)


def cloudwatch(env: dict[str, Any]) -> Any:
    return boto_client("cloudwatch", env["settings"].aws_endpoint_url)


def project_alarms(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The alarms under the test's tag, by name."""
    found = cloudwatch(env).describe_alarms(AlarmNamePrefix=f"{env['tag']}-")["MetricAlarms"]
    return {a["AlarmName"]: a for a in found}


def tags_of(env: dict[str, Any], arn: str) -> dict[str, str]:
    answer = cloudwatch(env).list_tags_for_resource(ResourceARN=arn)
    return {t["Key"]: t["Value"] for t in answer["Tags"]}


def cfg(**alarms: Any) -> EndpointConfig:
    strategy = DeploymentStrategy(type="all_at_once", alarms=AlarmConfig(**alarms))
    return EndpointConfig(deployment=strategy)


def test_alarms_are_put_with_the_endpoint_and_named_in_every_update(env: dict[str, Any]) -> None:
    sim: SageMakerSim = env["sim"]
    target = make_target(env)
    cw = cloudwatch(env)
    # The user's own alarm, made outside the project: it must keep working beside ours.
    pager = f"pager-{uuid.uuid4().hex[:8]}"
    cw.put_metric_alarm(
        AlarmName=pager,
        Namespace="AWS/SageMaker",
        MetricName="OverheadLatency",
        Statistic="Average",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    serving = target.deploy(version(env, 1, cfg(names=[pager], p99_latency_ms=300)), Log())
    endpoint = serving.endpoint_name
    latency, errors = f"{endpoint}-AllTraffic-p99-latency", f"{endpoint}-AllTraffic-5xx-rate"

    alarms = project_alarms(env)
    assert set(alarms) == {latency, errors}  # ours only: the user's is not renamed or copied
    dims = [
        {"Name": "EndpointName", "Value": endpoint},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]
    p99 = alarms[latency]
    assert (p99["Namespace"], p99["MetricName"], p99["ExtendedStatistic"]) == (
        "AWS/SageMaker",
        "ModelLatency",
        "p99",
    )
    assert p99["Dimensions"] == dims
    assert p99["Threshold"] == 300_000.0  # 300 ms in ModelLatency's microseconds
    assert p99["ComparisonOperator"] == "GreaterThanThreshold"
    assert (p99["Period"], p99["EvaluationPeriods"]) == (60, 3)
    assert p99["TreatMissingData"] == "notBreaching"  # no traffic is not a failure
    rate = alarms[errors]
    assert (rate["MetricName"], rate["Statistic"], rate["Threshold"]) == (
        "Invocation5XXErrors",
        "Average",
        0.05,
    )
    assert rate["Dimensions"] == dims
    tags = tags_of(env, p99["AlarmArn"])
    assert tags["project"] == env["tag"] and tags["model"] == MODEL
    assert tags["endpoint"] == endpoint and tags["version"] == "v1"
    assert tags["snapshot_id"] == "snap-1"  # lineage, as on the model and config

    # The next rollout, thresholds changed in the config: the same alarms, updated; the update
    # names ours and the user's.
    target.deploy(version(env, 2, cfg(names=[pager], p99_latency_ms=800, error_rate=0.1)), Log())
    alarms = project_alarms(env)
    assert set(alarms) == {latency, errors}
    assert alarms[latency]["Threshold"] == 800_000.0 and alarms[errors]["Threshold"] == 0.1
    assert tags_of(env, alarms[latency]["AlarmArn"])["version"] == "v2"
    [(_, params)] = sim.actions("UpdateEndpoint")
    assert params["DeploymentConfig"]["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": latency}, {"AlarmName": errors}, {"AlarmName": pager}]
    }
    assert sim.alarms_checked == [[latency, errors, pager]]  # what the guardrail watched

    # Switched off: no alarm of ours is named (the user's still is); the existing ones stay
    # until their endpoint goes.
    target.deploy(version(env, 3, cfg(names=[pager], create=False)), Log())
    _, params = sim.actions("UpdateEndpoint")[-1]
    assert params["DeploymentConfig"]["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": pager}]
    }
    cw.delete_alarms(AlarmNames=[pager])


def test_an_alarm_firing_during_the_update_rolls_it_back(env: dict[str, Any]) -> None:
    """The issue's point: by default, a bad deploy that is InService is rolled back."""
    target = make_target(env)
    serving = target.deploy(version(env, 1), Log())  # default config: alarms on, none named
    latency = f"{serving.endpoint_name}-AllTraffic-p99-latency"
    cw = cloudwatch(env)
    log = Log()

    def progress(message: str) -> None:
        log(message)
        if message.startswith("update requested"):
            # v2 is slow: CloudWatch puts the p99 alarm in ALARM while the update bakes.
            cw.set_alarm_state(
                AlarmName=latency, StateValue="ALARM", StateReason="p99 4100 ms > 1000 ms"
            )

    with pytest.raises(RolloutFailed) as info:
        target.deploy(version(env, 2), progress)

    assert info.value.step == "update"
    assert f"rolled back to {serving.config_name}" in info.value.reason
    assert latency in info.value.reason  # the rollout names the alarm that undid it
    assert any("RollingBack" in m for m in log)
    assert any("rolled back if any alarm fires" in m and latency in m for m in log)
    now = target.describe(MODEL)
    assert now is not None and now.version == "v1" and now.status == "InService"
    assert target.invoke(MODEL, RECORDS)["version"] == "v1"  # the previous version serves
    # The alarms stay: they watch the endpoint, which still serves v1.
    assert latency in project_alarms(env)


def test_cleanup_deletes_alarms_only_with_their_endpoint(env: dict[str, Any]) -> None:
    sim: SageMakerSim = env["sim"]
    target = make_target(env)
    serving = target.deploy(version(env, 1), Log())
    ours = sorted(project_alarms(env))
    # Another project whose tag starts like ours: its alarms are not ours to list or delete.
    other = f"{env['tag']}-staging"
    theirs = [f"{other}-limit-optimiser-AllTraffic-5xx-rate"]
    cloudwatch(env).put_metric_alarm(
        AlarmName=theirs[0],
        Namespace="AWS/SageMaker",
        MetricName="Invocation5XXErrors",
        Statistic="Average",
        Period=60,
        EvaluationPeriods=1,
        Threshold=0.05,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        Tags=[
            {"Key": "project", "Value": other},
            {"Key": "endpoint", "Value": f"{other}-limit-optimiser"},
        ],
    )

    alarms = [r for r in target.resources() if r.kind == "alarm"]
    assert sorted(r.name for r in alarms) == ours
    assert all(r.in_use and r.details["endpoint"] == serving.endpoint_name for r in alarms)
    inventory = Inventory(
        models={MODEL: ModelInventory(model=MODEL, configured=True, champion="v1")},
        resources=target.resources(),
        now=datetime.now(UTC),
    )
    plan = [p for p in plan_cleanup(inventory, RetentionPolicy()) if p.kind == "alarm"]
    assert [(p.action, p.reason) for p in plan] == [("keep", "watches a live endpoint")] * 2
    # Asked anyway (a stale plan): refused while the endpoint lives.
    stale = Resource("alarm", ours[0], MODEL, None, in_use=False)
    with pytest.raises(ValueError, match="in use"):
        target.delete(stale)
    with pytest.raises(ValueError, match="not a"):
        target.delete(Resource("alarm", theirs[0], MODEL, None, in_use=False))

    # The endpoint deleted behind the project's back: its alarms are left, and cleanup takes them.
    boto_client("sagemaker", env["settings"].aws_endpoint_url).delete_endpoint(
        EndpointName=serving.endpoint_name
    )
    left = [r for r in target.resources() if r.kind == "alarm"]
    assert sorted(r.name for r in left) == ours and not any(r.in_use for r in left)
    inventory.resources = target.resources()
    plan = [p for p in plan_cleanup(inventory, RetentionPolicy()) if p.kind == "alarm"]
    assert {p.action for p in plan} == {"delete"}
    for resource in left:
        target.delete(resource)
    assert sorted(project_alarms(env)) == theirs

    # A first rollout that fails leaves no alarm behind (nor anything else). Deleting an endpoint
    # through the target takes its alarms too: test_sagemaker_target's resources test.
    sim.fail_next_create("The primary container did not pass the ping health check")
    with pytest.raises(RolloutFailed):
        target.deploy(version(env, 2, model="abuse_detector"), Log())
    assert sorted(project_alarms(env)) == theirs
    cloudwatch(env).delete_alarms(AlarmNames=theirs)


def test_health_reads_the_endpoints_cloudwatch_metrics(env: dict[str, Any]) -> None:
    target: SageMakerTarget = make_target(env)
    assert target.health(MODEL) is None  # no endpoint: cannot tell
    serving = target.deploy(version(env, 1), Log())
    quiet = target.health(MODEL)
    assert quiet is not None and quiet.source == "cloudwatch"
    assert (quiet.requests_per_second, quiet.error_rate, quiet.p99_ms) == (0.0, None, None)

    dims = [
        {"Name": "EndpointName", "Value": serving.endpoint_name},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]
    when = datetime.now(UTC) - timedelta(seconds=90)
    # What SageMaker publishes for 120 invocations, 6 answered 5xx, latency in microseconds:
    # 118 fast, 2 slow, so the p99 (nearest rank 119 of 120) is a slow one.
    cloudwatch(env).put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {"MetricName": "Invocations", "Dimensions": dims, "Timestamp": when, "Value": 120.0},
            {
                "MetricName": "Invocation5XXErrors",
                "Dimensions": dims,
                "Timestamp": when,
                "Values": [0.0, 1.0],
                "Counts": [114.0, 6.0],
            },
            {
                "MetricName": "ModelLatency",
                "Dimensions": dims,
                "Timestamp": when,
                "Values": [20_000.0, 900_000.0],
                "Counts": [118.0, 2.0],
                "Unit": "Microseconds",
            },
        ],
    )
    health = target.health(MODEL)
    assert health is not None
    assert health.window_seconds == 300.0
    assert health.requests_per_second == pytest.approx(120 / 300)
    assert health.error_rate == pytest.approx(0.05)
    assert health.p99_ms == pytest.approx(900.0)

"""The SageMaker endpoint target against moto server over real HTTP, SageMaker's states simulated.

moto's SageMaker is extended by :mod:`tests.fixtures.sagemaker_moto` (status transitions,
``UpdateEndpoint``, "already exists", injected failures, serving-app answers). Each test uses
its own project tag, so the resources of one test are invisible to the others on the shared
server: listing by tag/prefix is part of what is tested.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.endpoints import open_target
from adapters.endpoints.iam import (
    ensure_role,
    permission_policy,
    role_name,
    trust_policy,
)
from adapters.endpoints.sagemaker.names import (
    MAX_NAME,
    deployment_config,
    endpoint_name,
    resource_name,
)
from adapters.endpoints.sagemaker.target import SageMakerTarget
from core.cleanup_plan import Inventory, ModelInventory, plan_cleanup
from core.config import (
    DeploymentStrategy,
    EndpointConfig,
    RetentionPolicy,
    ServerlessConfig,
    load_platform_config,
)
from core.endpoint import Resource, RolloutFailed, VersionToServe
from core.settings import PROJECT_ROOT, load_settings
from tests.fixtures.home import isolated_env
from tests.fixtures.moto import boto_client, use_moto_env
from tests.fixtures.sagemaker_moto import SageMakerSim, tagged_names

pytestmark = pytest.mark.integration

MODEL = "limit_optimiser"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/intelli-rate-serving:1.0"
RECORDS = [{"client_id": "c1", "requests": 10}, {"client_id": "c2", "requests": 20}]
M5_LARGE_MONTHLY = round(0.115 * 730, 2)


class Crash(BaseException):
    """Stands for the process dying mid-rollout: no handler of the target catches it."""


def crash_on(words: str) -> Callable[[str], None]:
    """A progress callback that kills the 'process' at the first message containing ``words``."""

    def progress(message: str) -> None:
        if words in message:
            raise Crash(message)

    return progress


class Log(list[str]):
    """A progress callback that keeps the messages."""

    def __call__(self, message: str) -> None:
        self.append(message)


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


def make_env(
    moto_server: str,
    s3_store_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    sagemaker_sim: SageMakerSim,
    tmp_path: Path,
) -> dict[str, Any]:
    """What :func:`env` gives (other SageMaker test modules build their ``env`` with it)."""
    # Nothing from the shell (no role, no KMS key, no home); that also clears the endpoint
    # URL s3_store_uri set, so point boto3 at moto again.
    isolated_env(monkeypatch, tmp_path / "home", endpoint_target="sagemaker")
    use_moto_env(monkeypatch, moto_server)
    monkeypatch.setenv("MLOPS_STORE_URI", s3_store_uri)
    monkeypatch.setenv("MLOPS_SERVING_IMAGE", IMAGE)
    tag = f"t{uuid.uuid4().hex[:10]}"
    return {
        "settings": load_settings(),
        # The project's price table, under a tag of this test's own.
        "platform": load_platform_config(PROJECT_ROOT / "configs").model_copy(
            update={"project_tag": tag}
        ),
        "store": s3_store_uri,
        "sim": sagemaker_sim,
        "tag": tag,
    }


def make_target(env: dict[str, Any], **options: Any) -> SageMakerTarget:
    """A target on moto with fast polling.

    Built with the constructor and clients of the fixtures' shared session: a boto3 session of
    its own per test (what ``from_settings`` makes, tested separately) costs a few tenths of a
    second of model loading each time.
    """
    settings = env["settings"]
    url = settings.aws_endpoint_url
    options = {"poll_seconds": 0.01, "timeout_seconds": 2.0, **options}
    return SageMakerTarget(
        sagemaker=boto_client("sagemaker", url),
        runtime=boto_client("sagemaker-runtime", url),
        iam=boto_client("iam", url),
        cloudwatch=boto_client("cloudwatch", url),
        sts=boto_client("sts", url),
        platform=env["platform"],
        store_uri=settings.store,
        region=settings.aws_region,
        serving_image=settings.serving_image,
        role_arn=settings.sagemaker_role_arn,
        kms_key_id=settings.kms_key_id,
        **options,
    )


@pytest.fixture
def target(env: dict[str, Any]) -> SageMakerTarget:
    return make_target(env)


def version(
    env: dict[str, Any], n: int, endpoint: EndpointConfig | None = None, model: str = MODEL
) -> VersionToServe:
    """A published version: its model.tar.gz put in moto S3, the rest as the store would say."""
    store = env["store"]
    bucket, _, prefix = store[len("s3://") :].partition("/")
    key = f"{prefix}/models/{model}/v{n}/model.tar.gz"
    boto_client("s3", env["settings"].aws_endpoint_url).put_object(
        Bucket=bucket, Key=key, Body=f"weights {n}".encode()
    )
    return VersionToServe(
        model=model,
        version=f"v{n}",
        family=model,
        version_uri=f"{store}/models/{model}/v{n}",
        model_data_uri=f"s3://{bucket}/{key}",
        manifest_sha256=hashlib.sha256(f"manifest {n}".encode()).hexdigest(),
        contents_sha256=hashlib.sha256(f"contents {n}".encode()).hexdigest(),
        example_request=RECORDS,
        endpoint=endpoint or EndpointConfig(),
        tags={"snapshot_id": f"snap-{n}", "flow_run_id": str(uuid.UUID(int=n))},
    )


def sm(env: dict[str, Any]) -> Any:
    return boto_client("sagemaker", env["settings"].aws_endpoint_url)


def project_models(env: dict[str, Any]) -> list[str]:
    return tagged_names(sm(env), "model", env["tag"])


def project_configs(env: dict[str, Any]) -> list[str]:
    return tagged_names(sm(env), "endpoint-config", env["tag"])


def project_endpoints(env: dict[str, Any]) -> list[str]:
    return tagged_names(sm(env), "endpoint", env["tag"])


# --- names and deployment configs --------------------------------------------------------------


def test_names_are_stable_short_and_derived_from_content(env: dict[str, Any]) -> None:
    target = make_target(env)
    v1 = version(env, 1)
    names = target.names_for(v1, "arn:aws:iam::123456789012:role/r")
    # The same version asks for the same names every time: that is what makes a retry a no-op.
    assert names == target.names_for(v1, "arn:aws:iam::123456789012:role/r")
    assert names.endpoint == f"{env['tag']}-limit-optimiser"
    assert names.model.startswith(f"{env['tag']}-limit-optimiser-v1-")
    assert names.config.startswith(f"{env['tag']}-limit-optimiser-v1-")
    # Another version, or another instance type for the same version, gets other names.
    assert target.names_for(version(env, 2), "r").model != target.names_for(v1, "r").model
    bigger = version(env, 1, EndpointConfig(instance_type="ml.m5.xlarge"))
    assert target.names_for(bigger, "r").config != target.names_for(v1, "r").config

    # SageMaker allows 63 characters; the longest tag and model names still fit and stay apart.
    tag, long_model = "a" * 31, "m" * 41
    assert len(endpoint_name(tag, long_model)) <= MAX_NAME
    assert endpoint_name(tag, long_model) != endpoint_name(tag, long_model[:-1] + "n")
    name = resource_name(tag, long_model, "v123", "0123456789")
    assert len(name) <= MAX_NAME and name.startswith(tag) and name.endswith("-v123-0123456789")


def test_deployment_config_follows_the_strategy() -> None:
    canary = deployment_config(
        DeploymentStrategy(
            type="canary",
            canary_percent=10,
            wait_seconds=300,
            baking_seconds=600,
            alarms=["p99-latency", "5xx"],
        )
    )
    policy = canary["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == {
        "Type": "CANARY",
        "WaitIntervalInSeconds": 300,
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
    }
    assert policy["TerminationWaitInSeconds"] == 600
    # Longer than every wait together (2 x 300 + 600), so SageMaker never cuts a healthy rollout.
    assert policy["MaximumExecutionTimeoutInSeconds"] > 2 * 300 + 600
    assert canary["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": "p99-latency"}, {"AlarmName": "5xx"}]
    }
    linear = deployment_config(DeploymentStrategy(type="linear", linear_step_percent=25))
    routing = linear["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["LinearStepSize"] == {"Type": "CAPACITY_PERCENT", "Value": 25}
    assert "AutoRollbackConfiguration" not in linear  # no alarms named, none sent
    quick = deployment_config(DeploymentStrategy(wait_seconds=0, baking_seconds=0))
    # SageMaker's floor for the execution timeout is 600 s.
    assert quick["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"] == 600
    longest = deployment_config(
        DeploymentStrategy(
            type="linear", linear_step_percent=5, wait_seconds=3600, baking_seconds=3600
        )
    )
    assert longest["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"] == 28800


# --- rollouts ----------------------------------------------------------------------------------


def test_first_rollout_creates_the_endpoint_and_serves_the_version(env: dict[str, Any]) -> None:
    sim: SageMakerSim = env["sim"]
    target = open_target(env["settings"], env["platform"])
    assert isinstance(target, SageMakerTarget)  # chosen by settings, clients built inside
    target.poll_seconds, target.timeout_seconds = 0.01, 2.0
    calls_at_first_message: list[int] = []
    log = Log()

    def progress(message: str) -> None:
        calls_at_first_message.append(len(sim.calls))
        log(message)

    v1 = version(env, 1)
    serving = target.deploy(v1, progress)

    # The cost is printed before anything is created.
    assert f"${M5_LARGE_MONTHLY:,.2f} per month" in log[0] and calls_at_first_message[0] == 0
    assert serving.version == "v1" and serving.status == "InService"
    assert serving.endpoint_name == f"{env['tag']}-limit-optimiser"
    assert any("Creating" in m for m in log)  # it waited through Creating, reporting it
    names = target.names_for(v1)
    assert serving.config_name == names.config
    assert project_models(env) == [names.model]
    assert project_configs(env) == [names.config]

    client = sm(env)
    model = client.describe_model(ModelName=names.model)
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE and container["ModelDataUrl"] == v1.model_data_uri
    assert container["Environment"] == {
        "MLOPS_MODEL_NAME": MODEL,
        "MLOPS_MODEL_VERSION": "v1",
        "MLOPS_MODEL_CONTENTS_SHA256": v1.contents_sha256,
    }
    # The role was created by the target (no MLOPS_SAGEMAKER_ROLE_ARN) and is the one used.
    assert model["ExecutionRoleArn"].endswith(f":role/{role_name(env['tag'])}")
    config = client.describe_endpoint_config(EndpointConfigName=names.config)
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    assert "DataCaptureConfig" not in config or not config["DataCaptureConfig"]
    tags = {
        t["Key"]: t["Value"]
        for t in client.list_tags(ResourceArn=config["EndpointConfigArn"])["Tags"]
    }
    assert tags["project"] == env["tag"] and tags["version"] == "v1"
    assert tags["manifest_sha256"] == v1.manifest_sha256 and tags["snapshot_id"] == "snap-1"

    described = target.describe(MODEL)
    assert described is not None and described.version == "v1"
    assert described.variants["AllTraffic"]["model"] == names.model
    answer = target.invoke(MODEL, RECORDS)
    assert answer == {"predictions": [0.0, 1.0], "model": MODEL, "version": "v1"}
    assert sim.invocations[-1] == (serving.endpoint_name, {"instances": RECORDS})
    assert target.describe("abuse_detector") is None  # no endpoint, no error


def test_update_to_a_new_version_uses_the_configured_blue_green_strategy(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    sim: SageMakerSim = env["sim"]
    strategy = DeploymentStrategy(
        type="canary", canary_percent=20, wait_seconds=60, baking_seconds=120, alarms=["errors"]
    )
    cfg = EndpointConfig(instance_count=2, deployment=strategy)
    target.deploy(version(env, 1, cfg), Log())
    log = Log()
    serving = target.deploy(version(env, 2, cfg), log)

    assert serving.version == "v2" and serving.status == "InService"
    [(name, params)] = sim.actions("UpdateEndpoint")
    assert name == serving.endpoint_name
    assert params["EndpointConfigName"] == serving.config_name
    # The endpoint's own alarms roll it back, then the ones the config names.
    own = [f"{name}-AllTraffic-p99-latency", f"{name}-AllTraffic-5xx-rate"]
    assert params["DeploymentConfig"] == deployment_config(strategy, own)
    assert [
        a["AlarmName"] for a in params["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]
    ] == [*own, "errors"]
    assert any("Updating" in m for m in log) and any("canary blue/green" in m for m in log)
    assert target.invoke(MODEL, RECORDS)["version"] == "v2"
    # v1's config and model stay for a rollback until cleanup removes them; nothing else exists.
    assert len(project_configs(env)) == 2 and len(project_models(env)) == 2
    assert project_endpoints(env) == [serving.endpoint_name]


def test_deploying_what_already_serves_changes_nothing(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    sim: SageMakerSim = env["sim"]
    v1 = version(env, 1)
    target.deploy(v1, Log())
    before = list(sim.calls)
    log = Log()
    assert target.deploy(v1, log).version == "v1"
    assert sim.calls == before  # no create, no update
    assert any("already serves v1" in m for m in log)


def test_silent_rollback_is_a_failed_rollout(env: dict[str, Any], target: SageMakerTarget) -> None:
    sim: SageMakerSim = env["sim"]
    v1, v2 = version(env, 1), version(env, 2)
    target.deploy(v1, Log())
    sim.roll_back_next_update("Alarm errors fired during the baking period")
    log = Log()
    with pytest.raises(RolloutFailed) as info:
        target.deploy(v2, log)

    # SageMaker ended InService (a waiter would call that success), but on the old config.
    assert info.value.step == "update"
    assert "rolled back" in info.value.reason and "Alarm errors fired" in info.value.reason
    assert any("RollingBack" in m for m in log)
    serving = target.describe(MODEL)
    assert serving is not None and serving.version == "v1" and serving.status == "InService"
    assert target.invoke(MODEL, RECORDS)["version"] == "v1"
    # What the attempt created is gone; v1's resources are untouched.
    names1, names2 = target.names_for(v1), target.names_for(v2)
    assert project_models(env) == [names1.model]
    assert project_configs(env) == [names1.config]
    assert names2.model not in project_models(env)


def test_update_that_ends_failed_is_reported(env: dict[str, Any], target: SageMakerTarget) -> None:
    sim: SageMakerSim = env["sim"]
    target.deploy(version(env, 1), Log())
    sim.fail_next_update("insufficient capacity for ml.m5.large")
    with pytest.raises(RolloutFailed) as info:
        target.deploy(version(env, 2), Log())
    assert info.value.step == "update" and "insufficient capacity" in info.value.reason
    assert "Failed" in info.value.reason


def test_failed_create_deletes_the_endpoint_config_and_model(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    sim: SageMakerSim = env["sim"]
    sim.fail_next_create("The primary container did not pass the ping health check")
    with pytest.raises(RolloutFailed) as info:
        target.deploy(version(env, 1), Log())
    assert info.value.step == "create"
    assert "ping health check" in info.value.reason
    # A first endpoint that failed serves nothing and is deleted, with what was made for it.
    assert target.describe(MODEL) is None
    assert project_endpoints(env) == [] and project_configs(env) == [] and project_models(env) == []
    assert target.resources() == []
    # The next attempt starts clean and succeeds.
    assert target.deploy(version(env, 1), Log()).version == "v1"


def test_timeout_of_a_new_endpoint_deletes_it(env: dict[str, Any]) -> None:
    sim: SageMakerSim = env["sim"]
    target = make_target(env, timeout_seconds=0.3)
    sim.never_settle_next_create()
    with pytest.raises(RolloutFailed) as info:
        target.deploy(version(env, 1), Log())
    assert info.value.step == "wait" and "still Creating" in info.value.reason
    assert project_endpoints(env) == [] and project_configs(env) == [] and project_models(env) == []


def test_timeout_of_an_update_leaves_the_old_version_serving(env: dict[str, Any]) -> None:
    sim: SageMakerSim = env["sim"]
    target = make_target(env, timeout_seconds=0.3)
    v1, v2 = version(env, 1), version(env, 2)
    target.deploy(v1, Log())
    sim.never_settle_next_update()
    with pytest.raises(RolloutFailed) as info:
        target.deploy(v2, Log())
    assert info.value.step == "wait" and "still Updating" in info.value.reason
    serving = target.describe(MODEL)
    assert serving is not None and serving.version == "v1" and serving.status == "Updating"
    # The update in flight still references v2's config and model: they are not pulled from
    # under it, and the error says so.
    assert "left behind" in info.value.reason
    assert target.names_for(v2).config in project_configs(env)
    in_use = {(r.kind, r.name): r.in_use for r in target.resources()}
    assert in_use[("endpoint-config", target.names_for(v2).config)] is True


def test_refused_update_request_cleans_up(env: dict[str, Any], target: SageMakerTarget) -> None:
    sim: SageMakerSim = env["sim"]
    v1, v2 = version(env, 1), version(env, 2)
    target.deploy(v1, Log())
    sim.reject_next_update("The variant name AllTraffic is not present in the old config")
    with pytest.raises(RolloutFailed) as info:
        target.deploy(v2, Log())
    assert info.value.step == "update" and "variant name" in info.value.reason
    assert target.describe(MODEL).version == "v1"  # type: ignore[union-attr]
    assert project_models(env) == [target.names_for(v1).model]
    assert project_configs(env) == [target.names_for(v1).config]


def test_failed_smoke_test(env: dict[str, Any], target: SageMakerTarget) -> None:
    sim: SageMakerSim = env["sim"]
    serving = target.deploy(version(env, 1), Log())
    sim.answer_error(serving.endpoint_name, 500, "KeyError: 'requests'")
    with pytest.raises(RolloutFailed) as info:
        target.invoke(MODEL, RECORDS)
    assert info.value.step == "smoke-test"
    assert "ModelError" in info.value.reason and "KeyError: 'requests'" in info.value.reason

    sim.answer_body(serving.endpoint_name, b"<html>502 Bad Gateway</html>", "text/html")
    with pytest.raises(RolloutFailed, match="not JSON") as info:
        target.invoke(MODEL, RECORDS)
    assert info.value.step == "smoke-test"

    sim.answer_body(serving.endpoint_name, b"[1, 2]")
    with pytest.raises(RolloutFailed, match="not an object"):
        target.invoke(MODEL, RECORDS)

    # Failing the smoke test of a new endpoint: the rollout flow removes it and what it used.
    target.remove(MODEL)
    assert project_endpoints(env) == [] and project_configs(env) == [] and project_models(env) == []
    with pytest.raises(RolloutFailed, match="smoke-test"):
        target.invoke(MODEL, RECORDS)  # no endpoint at all: still the smoke test's failure


# --- retries after a crash ---------------------------------------------------------------------


def test_retry_after_a_crash_between_model_and_config(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    sim: SageMakerSim = env["sim"]
    v1 = version(env, 1)
    with pytest.raises(Crash):
        target.deploy(v1, crash_on("created model"))
    names = target.names_for(v1)
    assert project_models(env) == [names.model] and project_configs(env) == []

    log = Log()
    assert target.deploy(v1, log).version == "v1"
    # The retry met its own model ("already exists", same definition) and carried on.
    assert [n for n, _ in sim.actions("CreateModel")] == [names.model, names.model]
    assert any("exists already (same definition)" in m for m in log)
    assert project_models(env) == [names.model] and project_configs(env) == [names.config]


def test_retry_after_a_crash_mid_update_waits_for_it(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    sim: SageMakerSim = env["sim"]
    target.deploy(version(env, 1), Log())
    v2 = version(env, 2)
    with pytest.raises(Crash):
        target.deploy(v2, crash_on("update requested"))
    assert (
        sm(env).describe_endpoint(EndpointName=target.names_for(v2).endpoint)["EndpointStatus"]
        == "Updating"
    )

    log = Log()
    serving = target.deploy(v2, log)
    assert serving.version == "v2"
    assert len(sim.actions("UpdateEndpoint")) == 1  # the in-flight update was awaited, not repeated
    assert any("waiting for it before deploying" in m for m in log)
    assert len(project_configs(env)) == 2 and len(project_models(env)) == 2


def test_retry_after_a_crash_finds_a_failed_endpoint_and_recreates_it(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    sim: SageMakerSim = env["sim"]
    v1 = version(env, 1)
    sim.fail_next_create("The primary container did not pass the ping health check")
    with pytest.raises(Crash):
        target.deploy(v1, crash_on("Creating"))
    name = target.names_for(v1).endpoint
    client = sm(env)
    while client.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating":
        pass  # the dead run's endpoint goes on to fail on its own
    log = Log()
    # A Failed endpoint cannot be updated and serves nothing: it is replaced.
    assert target.deploy(v1, log).version == "v1"
    assert any("is Failed" in m and "ping health check" in m for m in log)
    assert [n for n, _ in sim.actions("CreateEndpoint")] == [name, name]


def test_existing_resource_with_another_definition_is_refused(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    v1 = version(env, 1)
    target.deploy(v1, Log())  # creates the role, so names_for below uses the same role
    v2 = version(env, 2)
    names = target.names_for(v2, target.role_arn)
    sm(env).create_model(
        ModelName=names.model,
        ExecutionRoleArn=target.role_arn,
        PrimaryContainer={"Image": "somebody/else:latest", "ModelDataUrl": v2.model_data_uri},
    )
    with pytest.raises(RolloutFailed) as info:
        target.deploy(v2, Log())
    assert info.value.step == "create-model" and "different Image" in info.value.reason
    assert target.describe(MODEL).version == "v1"  # type: ignore[union-attr]


# --- inventory and cleanup ---------------------------------------------------------------------


def test_resources_mark_what_is_in_use_and_delete_refuses_it(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    v1, v2 = version(env, 1), version(env, 2)
    target.deploy(v1, Log())
    target.deploy(v2, Log())
    # Another project's endpoint on the same account is neither listed nor deletable.
    other_platform = env["platform"].model_copy(update={"project_tag": f"o{env['tag']}"})
    other = make_target({**env, "platform": other_platform})
    other.deploy(version(env, 7), Log())

    n1, n2 = target.names_for(v1), target.names_for(v2)
    found = {(r.kind, r.name): r for r in target.resources()}
    assert set(found) == {
        ("endpoint", n2.endpoint),
        ("alarm", f"{n2.endpoint}-AllTraffic-p99-latency"),
        ("alarm", f"{n2.endpoint}-AllTraffic-5xx-rate"),
        ("endpoint-config", n1.config),
        ("endpoint-config", n2.config),
        ("model", n1.model),
        ("model", n2.model),
    }
    assert (
        found[("endpoint", n2.endpoint)].in_use and found[("endpoint", n2.endpoint)].version == "v2"
    )
    assert found[("endpoint-config", n2.config)].in_use
    assert found[("model", n2.model)].in_use
    assert not found[("endpoint-config", n1.config)].in_use
    assert not found[("model", n1.model)].in_use
    assert {r.model for r in found.values()} == {MODEL}
    assert found[("model", n1.model)].version == "v1"
    assert "created" in found[("model", n1.model)].details

    with pytest.raises(ValueError, match="in use"):
        target.delete(found[("endpoint-config", n2.config)])
    # A stale inventory saying "not in use" does not fool it: use is checked on SageMaker now.
    stale = Resource("model", n2.model, MODEL, "v2", in_use=False)
    with pytest.raises(ValueError, match="in use"):
        target.delete(stale)
    with pytest.raises(ValueError, match="not a"):
        target.delete(Resource("model", other.names_for(version(env, 7)).model, MODEL, "v7", False))

    target.delete(found[("endpoint-config", n1.config)])
    target.delete(found[("model", n1.model)])
    assert project_configs(env) == [n2.config] and project_models(env) == [n2.model]
    target.delete(found[("endpoint", n2.endpoint)])
    assert target.describe(MODEL) is None
    # Its alarms went with it.
    assert not any(r.kind == "alarm" for r in target.resources())
    # With the endpoint gone nothing is in use any more, and everything can go.
    rest = target.resources()
    assert rest and not any(r.in_use for r in rest)
    for resource in rest:
        target.delete(resource)
    assert target.resources() == []
    assert other.describe(MODEL) is not None  # the other project's endpoint still serves


def test_idle_endpoint_is_listed_with_its_cost(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    sim: SageMakerSim = env["sim"]
    serving = target.deploy(version(env, 1), Log())
    sim.age_endpoint(serving.endpoint_name, 30)
    [endpoint] = [r for r in target.resources() if r.kind == "endpoint"]
    # No invocation within retention.idle_days (14): idle for at least that long.
    assert endpoint.details["idle_days"] == 14
    assert endpoint.details["monthly_cost_usd"] == M5_LARGE_MONTHLY
    assert endpoint.details["status"] == "InService"

    inventory = Inventory(
        models={MODEL: ModelInventory(model=MODEL, configured=True, champion="v1")},
        resources=target.resources(),
        now=datetime.now(UTC),
    )
    plan = plan_cleanup(inventory, RetentionPolicy(idle_days=14))
    [idle] = [p for p in plan if p.kind == "idle-endpoint"]
    assert idle.name == serving.endpoint_name and idle.action == "keep"
    assert idle.details["monthly_cost_usd"] == M5_LARGE_MONTHLY

    # Invoked two days ago: not idle.
    boto_client("cloudwatch", env["settings"].aws_endpoint_url).put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {
                "MetricName": "Invocations",
                "Dimensions": [
                    {"Name": "EndpointName", "Value": serving.endpoint_name},
                    {"Name": "VariantName", "Value": "AllTraffic"},
                ],
                "Timestamp": datetime.now(UTC) - timedelta(days=2, hours=1),
                "Value": 12.0,
            }
        ],
    )
    [endpoint] = [r for r in target.resources() if r.kind == "endpoint"]
    assert endpoint.details["idle_days"] == 2


# --- variants of the endpoint ------------------------------------------------------------------


def test_serverless_endpoint_without_data_capture(
    env: dict[str, Any], target: SageMakerTarget
) -> None:
    cfg = EndpointConfig(
        serverless=ServerlessConfig(memory_mb=3072, max_concurrency=4), data_capture_percent=50
    )
    log = Log()
    serving = target.deploy(version(env, 1, cfg), log)
    assert "billed per use" in log[0]
    assert any("data capture is not supported on serverless" in m for m in log)
    config = sm(env).describe_endpoint_config(EndpointConfigName=serving.config_name)
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": 3072,
        "MaxConcurrency": 4,
    }
    assert not config.get("DataCaptureConfig")
    assert target.monthly_cost(cfg, env["platform"]) is None  # billed per use, no fixed figure
    [endpoint] = [r for r in target.resources() if r.kind == "endpoint"]
    assert endpoint.details["monthly_cost_usd"] is None


def test_data_capture_and_uncompressed_model_data(env: dict[str, Any]) -> None:
    target = make_target(env)
    v1 = version(env, 1, EndpointConfig(data_capture_percent=20, model_data="uncompressed"))
    serving = target.deploy(v1, Log())
    client = sm(env)
    config = client.describe_endpoint_config(EndpointConfigName=serving.config_name)
    capture = config["DataCaptureConfig"]
    assert capture["EnableCapture"] and capture["InitialSamplingPercentage"] == 20
    assert capture["DestinationS3Uri"] == f"{env['store']}/datacapture/{MODEL}"
    model = client.describe_model(ModelName=target.names_for(v1).model)
    assert model["PrimaryContainer"]["ModelDataSource"] == {
        "S3DataSource": {
            "S3Uri": f"{v1.version_uri}/model/",
            "S3DataType": "S3Prefix",
            "CompressionType": "None",
        }
    }
    assert "ModelDataUrl" not in model["PrimaryContainer"]


def test_missing_image_fails_before_creating_anything(env: dict[str, Any]) -> None:
    target = make_target(env)
    target.serving_image = None
    with pytest.raises(RolloutFailed, match="MLOPS_SERVING_IMAGE") as info:
        target.deploy(version(env, 1), Log())
    assert info.value.step == "prepare"
    assert env["sim"].calls == []


def test_monthly_cost_from_the_price_table(env: dict[str, Any], target: SageMakerTarget) -> None:
    platform = env["platform"]
    assert target.monthly_cost(EndpointConfig(instance_count=2), platform) == round(
        2 * M5_LARGE_MONTHLY, 2
    )
    assert target.monthly_cost(EndpointConfig(instance_type="ml.p4d.24xlarge"), platform) is None


# --- the execution role ------------------------------------------------------------------------


def test_execution_role_is_idempotent_and_least_privilege(env: dict[str, Any]) -> None:
    iam = boto_client("iam", env["settings"].aws_endpoint_url)
    name = role_name(env["tag"])
    store = env["store"]
    bucket = store[len("s3://") :].split("/")[0]
    policy = permission_policy(store, region="us-east-1", serving_image=IMAGE)
    arn = ensure_role(iam, name, trust_policy(), policy, {"project": env["tag"]})
    assert ensure_role(iam, name, trust_policy(), policy, {"project": env["tag"]}) == arn
    assert [r["RoleName"] for r in iam.list_roles()["Roles"]].count(name) == 1

    role = iam.get_role(RoleName=name)["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "sagemaker.amazonaws.com"
    }
    statements = {
        s["Sid"]: s
        for s in iam.get_role_policy(RoleName=name, PolicyName="serving")["PolicyDocument"][
            "Statement"
        ]
    }
    # Reads only the models prefix of the store bucket; pulls only the serving repository.
    assert statements["ReadPublishedModels"]["Resource"] == [
        f"arn:aws:s3:::{bucket}/store/models/*"
    ]
    assert statements["PullServingImage"]["Resource"] == [
        "arn:aws:ecr:us-east-1:123456789012:repository/intelli-rate-serving"
    ]
    assert "StoreKmsKey" not in statements

    # A KMS key configured later: the same call updates the policy in place.
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with_kms = permission_policy(store, region="us-east-1", serving_image=IMAGE, kms_key_id=key_arn)
    assert ensure_role(iam, name, trust_policy("123456789012"), with_kms, {}) == arn
    statements = {
        s["Sid"]: s
        for s in iam.get_role_policy(RoleName=name, PolicyName="serving")["PolicyDocument"][
            "Statement"
        ]
    }
    assert statements["StoreKmsKey"]["Resource"] == [key_arn]
    assert statements["StoreKmsKey"]["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Condition"] == {
        "StringEquals": {"aws:SourceAccount": "123456789012"}
    }


def test_the_created_role_trusts_only_this_accounts_sagemaker(env: dict[str, Any]) -> None:
    """Review finding 9: the docs promised aws:SourceAccount; the created role lacked it."""
    url = env["settings"].aws_endpoint_url
    target = make_target(env)
    arn = target._role()
    account = boto_client("sts", url).get_caller_identity()["Account"]
    trust = boto_client("iam", url).get_role(RoleName=arn.rsplit("/", 1)[-1])["Role"]
    assert trust["AssumeRolePolicyDocument"]["Statement"][0]["Condition"] == {
        "StringEquals": {"aws:SourceAccount": account}
    }


def test_an_image_outside_ecr_is_refused_before_anything_is_created(env: dict[str, Any]) -> None:
    target = make_target(env)
    target.serving_image = "ghcr.io/example/serving:1"
    v1 = version(env, 1)
    before = sm(env).list_models(MaxResults=100)["Models"]
    with pytest.raises(RolloutFailed, match=r"ghcr\.io/example/serving:1 is not in ECR") as info:
        target.deploy(v1, Log())
    assert info.value.step == "prepare"
    assert sm(env).list_models(MaxResults=100)["Models"] == before
    assert target.role_arn is None  # no role created either


def test_configured_role_is_used_and_no_role_is_created(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    given = "arn:aws:iam::123456789012:role/platform-sagemaker"
    monkeypatch.setenv("MLOPS_SAGEMAKER_ROLE_ARN", given)
    target = SageMakerTarget.from_settings(
        load_settings(), env["platform"], poll_seconds=0.01, timeout_seconds=2.0
    )
    v1 = version(env, 1)
    target.deploy(v1, Log())
    assert sm(env).describe_model(ModelName=target.names_for(v1).model)["ExecutionRoleArn"] == given
    iam = boto_client("iam", env["settings"].aws_endpoint_url)
    assert role_name(env["tag"]) not in [r["RoleName"] for r in iam.list_roles()["Roles"]]


def test_permission_policy_needs_an_s3_store() -> None:
    from adapters.endpoints.iam import RoleError

    with pytest.raises(RoleError, match="S3"):
        permission_policy("/var/lib/store", region="us-east-1", serving_image=IMAGE)
    bare = permission_policy(
        "s3://b/p", region="eu-west-1", serving_image=IMAGE, kms_key_id="alias/store"
    )
    statements = {s["Sid"]: s for s in bare["Statement"]}
    # An alias names no key: allowed only through S3, in the endpoints' region.
    assert statements["StoreKmsKey"]["Condition"] == {
        "StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}
    }
    assert json.dumps(bare)  # plain data, ready for IAM
    # An image outside ECR used to grant ECR pull on "*": now refused, naming the image.
    with pytest.raises(RoleError, match=r"ghcr\.io/x/y:1' is not in ECR"):
        permission_policy("s3://b/p", region="eu-west-1", serving_image="ghcr.io/x/y:1")


def test_the_moto_extension_is_undone_after_its_fixture(moto_server: str) -> None:
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    from tests.fixtures.sagemaker_moto import install

    stock = SageMakerModelBackend.describe_endpoint
    with pytest.MonkeyPatch.context() as patch:
        install(SageMakerSim(), patch)
        assert hasattr(SageMakerResponse, "update_endpoint")
        assert SageMakerModelBackend.describe_endpoint is not stock
    # Other tests on the shared server see stock moto again.
    assert not hasattr(SageMakerResponse, "update_endpoint")
    assert SageMakerModelBackend.describe_endpoint is stock

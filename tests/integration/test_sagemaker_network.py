"""VPC and network isolation of models and training jobs, read back from moto server over HTTP.

``CreateModel`` keeps ``EnableNetworkIsolation`` through
:mod:`tests.fixtures.sagemaker_network_moto` (stock moto drops it); ``VpcConfig`` and the
training job's fields are stock moto's. Proven here: what reaches ``CreateModel`` and
``CreateTrainingJob`` from the model config and the platform default, that a retry with the same
settings creates nothing, and that a changed setting is a new model. Not proven: that SageMaker
accepts the subnets and groups, or that the role may create network interfaces in them.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from adapters.endpoints.iam import autoscaling_policy, role_name
from adapters.endpoints.sagemaker.names import _digest, container, resource_name
from adapters.store import store_from_settings
from adapters.training.sagemaker_job import SageMakerTrainer
from core.config import (
    EndpointConfig,
    NetworkConfig,
    ServerlessConfig,
    VpcConfig,
    load_model_configs,
)
from core.settings import load_settings
from tests.fixtures.moto import boto_client
from tests.fixtures.sagemaker_moto import SageMakerSim
from tests.integration import test_sagemaker_target
from tests.integration.test_sagemaker_target import IMAGE, MODEL, Log, make_target, sm, version

env = test_sagemaker_target.env
"""The SageMaker target tests' fixture: settings on moto, a project tag of the test's own."""

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("model_isolation")]

PLATFORM_VPC = VpcConfig(
    subnets=["subnet-0aaa1111", "subnet-0bbb2222"], security_group_ids=["sg-0ccc3333"]
)
MODEL_VPC = VpcConfig(
    subnets=["subnet-0ddd4444"], security_group_ids=["sg-0eee5555", "sg-0fff6666"]
)


def with_platform_vpc(env: dict[str, Any]) -> dict[str, Any]:
    """``env`` whose platform config names a default VPC (``network.vpc``)."""
    platform = env["platform"].model_copy(update={"network": NetworkConfig(vpc=PLATFORM_VPC)})
    return {**env, "platform": platform}


def test_the_model_gets_the_vpc_and_isolation_and_a_change_is_a_new_model(
    env: dict[str, Any],
) -> None:
    sim: SageMakerSim = env["sim"]
    env = with_platform_vpc(env)
    target = make_target(env)
    client = sm(env)

    # The platform's VPC, isolation on by default.
    first = target.deploy(version(env, 1), Log())
    model = client.describe_model(ModelName=target.names_for(version(env, 1)).model)
    assert model["VpcConfig"] == {
        "SecurityGroupIds": ["sg-0ccc3333"],
        "Subnets": ["subnet-0aaa1111", "subnet-0bbb2222"],
    }
    assert model["EnableNetworkIsolation"] is True

    # The same settings again: the same names, nothing created.
    creates = len(sim.actions("CreateModel"))
    assert target.deploy(version(env, 1), Log()).config_name == first.config_name
    assert len(sim.actions("CreateModel")) == creates

    # The model's own VPC replaces the platform's: a new model, with that VPC.
    own = version(env, 1, EndpointConfig(vpc=MODEL_VPC))
    assert target.names_for(own).model != target.names_for(version(env, 1)).model
    target.deploy(own, Log())
    model = client.describe_model(ModelName=target.names_for(own).model)
    assert model["VpcConfig"] == {
        "SecurityGroupIds": ["sg-0eee5555", "sg-0fff6666"],
        "Subnets": ["subnet-0ddd4444"],
    }

    # Isolation switched off: a new model again, without it.
    open_ = version(env, 1, EndpointConfig(vpc=MODEL_VPC, network_isolation=False))
    assert target.names_for(open_).model != target.names_for(own).model
    target.deploy(open_, Log())
    model = client.describe_model(ModelName=target.names_for(open_).model)
    assert model["EnableNetworkIsolation"] is False
    assert target.describe(MODEL).version == "v1"  # type: ignore[union-attr]


def test_without_a_vpc_the_names_are_as_before_and_serverless_gets_neither(
    env: dict[str, Any],
) -> None:
    plain = make_target(env)
    v1 = version(env, 1)
    vpc = make_target(with_platform_vpc(env))
    # No VPC anywhere: the model's name is the one it had before VPCs existed (the hash of
    # manifest, container, role and "not serverless"), so an upgrade redeploys no endpoint.
    before = resource_name(
        env["tag"], MODEL, "v1", _digest(v1.manifest_sha256, container(v1, IMAGE), "r", True)
    )
    assert plain.names_for(v1, "r").model == before
    assert vpc.names_for(v1, "r").model != before
    serverless = version(env, 2, EndpointConfig(serverless=ServerlessConfig()))
    # SageMaker's serverless endpoints take neither a VPC nor isolation: the platform default
    # does not reach them (a model's own endpoint.vpc with serverless is refused at load).
    vpc.deploy(serverless, Log())
    model = sm(env).describe_model(ModelName=vpc.names_for(serverless).model)
    assert "VpcConfig" not in model or not model["VpcConfig"]
    assert model["EnableNetworkIsolation"] is False


def test_the_training_job_gets_the_vpc_and_isolation(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings()
    (cfg,) = load_model_configs(settings.config_dir, [MODEL])
    client = boto_client("sagemaker", settings.aws_endpoint_url)
    trainer = SageMakerTrainer(
        sagemaker=client,
        logs=None,
        store=store_from_settings(settings),
        image=IMAGE,
        role_arn="arn:aws:iam::123456789012:role/r",
        project_tag=env["tag"],
        default_vpc=PLATFORM_VPC,
    )
    jobs = {
        "platform": cfg,
        "own": cfg.model_copy(
            update={"training": cfg.training.model_copy(update={"vpc": MODEL_VPC})}
        ),
        "open": cfg.model_copy(
            update={"training": cfg.training.model_copy(update={"network_isolation": False})}
        ),
    }
    found = {}
    for kind, job_cfg in jobs.items():
        name = f"{env['tag']}-{kind}-{uuid.uuid4().hex[:6]}"
        # The request train() sends (adapters.training.sagemaker_job), through moto's HTTP API.
        client.create_training_job(**trainer.request(name, job_cfg))
        described = client.describe_training_job(TrainingJobName=name)
        found[kind] = (described["VpcConfig"], described["EnableNetworkIsolation"])
    assert found == {
        "platform": (PLATFORM_VPC.request(), True),
        "own": (MODEL_VPC.request(), True),
        "open": (PLATFORM_VPC.request(), False),
    }


def test_the_role_may_make_network_interfaces_and_the_deployer_policy_is_valid(
    env: dict[str, Any],
) -> None:
    iam = boto_client("iam", env["settings"].aws_endpoint_url)
    target = make_target(with_platform_vpc(env))  # no role given: the project's is created
    target.deploy(version(env, 1), Log())
    document = iam.get_role_policy(RoleName=role_name(env["tag"]), PolicyName="serving")
    statements = {s["Sid"]: s for s in document["PolicyDocument"]["Statement"]}
    # SageMaker puts the instances' network interfaces in the subnets as the execution role.
    assert {"ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface"} <= set(
        statements["VpcNetworkInterfaces"]["Action"]
    )
    # Autoscaling is the deployer's right, not the containers': none of it in the role.
    assert not any("application-autoscaling" in str(s["Action"]) for s in statements.values())

    # The deployer's autoscaling policy: IAM (moto validates documents) accepts it, and the
    # service-linked role it may create is SageMaker's autoscaling role only.
    policy = autoscaling_policy()
    iam.create_policy(PolicyName=f"{env['tag']}-autoscaling", PolicyDocument=json.dumps(policy))
    linked = next(s for s in policy["Statement"] if s["Action"] == "iam:CreateServiceLinkedRole")
    assert linked["Condition"] == {
        "StringLike": {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}
    }
    assert linked["Resource"].endswith(
        "/sagemaker.application-autoscaling.amazonaws.com/"
        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
    )

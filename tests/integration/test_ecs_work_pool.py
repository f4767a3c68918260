"""The ECS work pool for real: our job template against prefect-aws's, and created on a server.

``deployments/ecs/base-job-template.json`` is prefect-aws's ECS template with our defaults. Two
ways it goes wrong silently: an upgrade of prefect-aws adds or renames a variable that ours
lacks (the worker then never fills it in), or the server refuses the file. The first is checked
against the installed prefect-aws (the version pinned in the lock's ``ecs`` group); the second
by typing the documented ``prefect work-pool create`` against the session's real Prefect server
and rendering a job from the pool the server stored, as the ECS worker does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.settings import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TEMPLATE = PROJECT_ROOT / "deployments" / "ecs" / "base-job-template.json"
PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


def _placeholders(node: Any) -> set[str]:
    """Every ``{{ variable }}`` that a job configuration refers to, anywhere inside it."""
    if isinstance(node, dict):
        return set().union(*(_placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_placeholders(v) for v in node)) if node else set()
    return set(PLACEHOLDER.findall(node)) if isinstance(node, str) else set()


def drift_from_upstream(ours: dict[str, Any], upstream: dict[str, Any]) -> list[str]:
    """What ``ours`` lost against prefect-aws's default template, one line per finding."""
    found = []
    theirs_vars = upstream["variables"]["properties"]
    our_vars = ours["variables"]["properties"]
    missing = sorted(set(theirs_vars) - set(our_vars))
    if missing:
        found.append(f"variables prefect-aws defines and ours lacks: {missing}")
    used = _placeholders(ours["job_configuration"])
    unused = sorted(_placeholders(upstream["job_configuration"]) - used)
    if unused:
        found.append(f"variables prefect-aws's job configuration uses and ours does not: {unused}")
    undefined = sorted(used - set(our_vars))
    if undefined:
        found.append(f"placeholders with no variable behind them: {undefined}")
    dropped = sorted(
        k
        for k, v in upstream["job_configuration"].items()
        if _placeholders(v) and k not in ours["job_configuration"]
    )
    if dropped:
        found.append(f"job configuration keys prefect-aws fills and ours drops: {dropped}")
    refs = {
        m
        for prop in our_vars.values()
        for m in re.findall(r"#/definitions/(\w+)", json.dumps(prop))
    }
    missing_defs = sorted(refs - set(ours["variables"].get("definitions", {})))
    if missing_defs:
        found.append(f"definitions referred to and missing: {missing_defs}")
    return found


def test_the_template_keeps_every_variable_of_prefect_aws() -> None:
    from prefect_aws.workers.ecs_worker import ECSWorker

    upstream = ECSWorker.get_default_base_job_template()
    ours = json.loads(TEMPLATE.read_text())
    assert drift_from_upstream(ours, upstream) == []
    # The check itself catches a renamed variable and a dropped key (it can fail).
    renamed = json.loads(TEMPLATE.read_text())
    renamed["variables"]["properties"]["task_role"] = renamed["variables"]["properties"].pop(
        "task_role_arn"
    )
    del renamed["job_configuration"]["vpc_id"]
    findings = "\n".join(drift_from_upstream(renamed, upstream))
    assert "lacks: ['task_role_arn']" in findings
    assert "drops: ['vpc_id']" in findings
    assert "no variable behind them: ['task_role_arn']" in findings


def test_the_pool_is_created_from_the_template_on_a_real_server(
    prefect_api: None, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect_aws.workers.ecs_worker import ECSWorker

    name = f"intelli-rate-ecs-{os.getpid()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    # Exactly as docs/deployments.md tells a user to type it (the CLI of the locked venv).
    created = subprocess.run(
        [
            *(str(Path(sys.executable).parent / "prefect"), "work-pool", "create", name),
            *("--type", "ecs", "--base-job-template", str(TEMPLATE)),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,  # no prompt (default pool?) can wait for an answer
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]

    async def stored() -> Any:
        async with get_client() as client:
            return await client.read_work_pool(name)

    pool = asyncio.run(stored())
    assert pool.type == "ecs"
    assert pool.base_job_template == json.loads(TEMPLATE.read_text())
    # What the worker does with a flow run: render the pool's template with a deployment's
    # values. Our defaults and the deployment's image must land in the task definition.
    image = "123456789012.dkr.ecr.eu-west-2.amazonaws.com/fr:1"
    role = "arn:aws:iam::123456789012:role/intelli-rate-flow-runner-execution"

    def render(values: dict[str, Any]) -> Any:
        return asyncio.run(
            ECSWorker.job_configuration.from_template_and_values(pool.base_job_template, values)
        )

    # docs/deployments.md: fill in execution_role_arn and vpc_id (CloudWatch logs are on and
    # the network configuration is ours by default); until then the worker refuses, naming it.
    needed = {"execution_role_arn": role, "vpc_id": "vpc-0a1b2c3d"}
    for name in needed:
        with pytest.raises(ValueError, match=name):
            render({"image": image, **{k: v for k, v in needed.items() if k != name}})
    config = render({"image": image, **needed})
    container = config.task_definition["containerDefinitions"][0]
    assert container["image"].endswith("/fr:1")
    assert container["user"] == "10001:10001"
    assert config.task_definition["executionRoleArn"] == role
    assert str(config.task_definition["cpu"]) == "2048"
    assert str(config.task_definition["memory"]) == "8192"
    assert config.env["MLOPS_ENDPOINT_TARGET"] == "sagemaker"
    assert config.cluster == "intelli-rate"
    assert config.network_configuration["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"

r"""Register the pipeline's Prefect deployments, their schedules and the writers' concurrency limit.

    uv run python deployments/deploy.py                       # process pool on this machine
    uv run python deployments/deploy.py --pool intelli-rate-ecs \
        --image 123456789012.dkr.ecr.eu-west-2.amazonaws.com/intelli-rate-flow-runner:1.4.0 \
        --code-dir /opt/app                                    # ECS pool, code inside the image

| deployment | schedule | parameters (defaults) |
|---|---|---|
| ``retrain/weekly`` | ``schedule.retrain_cron`` | models (all), force, reason |
| ``rollout/on-demand`` | none | model, version (latest.json's), reason |
| ``cleanup/weekly-dry-run`` | ``schedule.cleanup_cron`` | models, apply=False, clean_store, ... |
| ``monitor/daily`` | ``schedule.monitor_cron`` | models, retrain_deployment |
| ``experiment/evaluate`` | ``schedule.experiment_cron`` | models (all with a running experiment) |

Crons and their time zone come from ``configs/platform.yaml`` (``schedule:``), so the schedule is
reviewed with the rest of the platform's settings. A deploy script rather than ``prefect.yaml``:
``prefect.yaml`` cannot read that file, and it cannot attach a shared concurrency limit.

**Retrain and rollout never overlap.** Both deployments hold one slot of the same global
concurrency limit, ``{project_tag}-model-writers`` (limit 1), with the ``ENQUEUE`` collision
strategy: a second run of either waits in ``Scheduled`` state (named ``AwaitingConcurrencySlot``)
until the first finishes, then runs. The server enforces it when a run moves to ``Pending``, so it
holds for every worker type. A per-deployment ``concurrency_limit`` would only keep a retrain from
overlapping another retrain; a ``concurrency()`` block inside the flows would hold a worker (and
an ECS task) while waiting and deadlock the rollout subflow that a retrain runs. Subflows are not
deployment runs, so the retrain's own rollout does not ask for a slot.

The Prefect client cannot yet attach an existing global limit to a deployment (the REST API can:
``global_concurrency_limit_id``), and re-registering a deployment with no ``concurrency_limit``
deletes the limit attached to it. So this script detaches the limit, registers, then attaches it
again: run it as often as you like.

Run this script against the server the workers use (``PREFECT_API_URL``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

DEFAULT_POOL = "intelli-rate-process"
"""The process work pool: flow runs as subprocesses of a worker on this machine."""

WRITER_SLOTS = 1
"""Runs of retrain and rollout allowed at once, together."""

FLOW_ENV = {"GX_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
"""Environment of every flow run: no phoning home from a worker."""


@dataclass(frozen=True)
class Spec:
    """One deployment: which flow, under which name, when, and with which defaults."""

    flow: str
    """``module:attribute`` of the flow object."""
    name: str
    description: str
    cron: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    writer: bool = False
    """Holds a slot of the model-writers limit (it moves pointers and aliases)."""

    @property
    def full_name(self) -> str:
        """``flow-name/deployment-name``, as ``prefect deployment run`` takes it."""
        return f"{self.flow.rsplit(':', 1)[-1]}/{self.name}"


def specs(config_dir: Path) -> list[Spec]:
    """The deployments, with crons from ``configs/platform.yaml``."""
    from core.config import load_platform_config

    schedule = load_platform_config(config_dir).schedule
    return [
        Spec(
            "flows.retrain:retrain",
            "weekly",
            "Weekly retrain of every model: export, validate, train, gate, publish, roll out.",
            cron=schedule.retrain_cron,
            parameters={"reason": "scheduled"},
            writer=True,
        ),
        Spec(
            "flows.rollout:rollout",
            "on-demand",
            "Serve a published version, smoke-test it, then move latest.json and the alias.",
            writer=True,
        ),
        Spec(
            "flows.cleanup:cleanup",
            "weekly-dry-run",
            "Plan what nothing uses any more; deletes only when run with apply=true.",
            cron=schedule.cleanup_cron,
            parameters={"apply": False, "reason": "scheduled dry run"},
        ),
        Spec(
            "flows.monitor:monitor",
            "daily",
            "Drift, live error and champion age; requests retrain/weekly when a threshold is hit.",
            cron=schedule.monitor_cron,
        ),
        Spec(
            "flows.experiment:experiment",
            "evaluate",
            "Daily look at running experiments: sequential test, guardrails; promote or stop.",
            cron=schedule.experiment_cron,
            writer=True,  # a promotion moves the pointer and the alias, as a rollout does
        ),
    ]


def _load_flow(path: str) -> Any:
    import importlib

    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def build(
    spec: Spec, pool: str, code_dir: str, timezone: str, project_tag: str, image: str | None
) -> Any:
    """A :class:`RunnerDeployment` for ``spec``.

    The entrypoint is a module path (``flows.retrain.retrain``): the project is installed in the
    worker's environment (``uv sync`` here, the image on ECS), so no code is copied per run. The
    one pull step makes ``code_dir`` the working directory, where the embedded defaults
    (``.mlops``) and ``configs/`` are found.
    """
    from prefect.deployments.runner import EntrypointType, RunnerDeployment
    from prefect.runner.storage import LocalStorage
    from prefect.schedules import Cron

    job_variables: dict[str, Any] = {"env": dict(FLOW_ENV)}
    if image:
        job_variables["image"] = image
    deployment = RunnerDeployment.from_flow(
        _load_flow(spec.flow),
        name=spec.name,
        schedules=[Cron(spec.cron, timezone=timezone)] if spec.cron else None,
        parameters=spec.parameters,
        description=spec.description,
        tags=[project_tag, spec.flow.rsplit(":", 1)[-1]],
        work_pool_name=pool,
        job_variables=job_variables,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment.storage = LocalStorage(path=code_dir)
    return deployment


def ensure_process_pool(client: Any, pool: str) -> None:
    """Create the process work pool ``pool`` unless a pool of that name exists."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        client.read_work_pool(pool)
    except ObjectNotFound:
        template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(
            WorkPoolCreate(name=pool, type="process", base_job_template=template)
        )
        print(f"created process work pool {pool!r}")  # noqa: T201  (the script reports on stdout)


def _set_writer_limit(client: Any, deployment_id: UUID, limit_id: UUID | None) -> None:
    body: dict[str, Any] = {"global_concurrency_limit_id": str(limit_id) if limit_id else None}
    if limit_id:
        body["concurrency_options"] = {"collision_strategy": "ENQUEUE"}
    client.request(
        "PATCH", "/deployments/{id}", path_params={"id": deployment_id}, json=body
    ).raise_for_status()


def register(
    config_dir: Path,
    pool: str,
    code_dir: str,
    image: str | None = None,
    only: Sequence[str] = (),
    create_pool: bool = True,
) -> dict[str, UUID]:
    """Register (or update) the deployments and attach the writers' limit; return their ids.

    Args:
        config_dir: directory holding ``platform.yaml``.
        pool: work pool name.
        code_dir: the project's directory where the flow runs (this checkout, or ``/opt/app``
            in the flow-runner image).
        image: container image for container pools (ECS, Kubernetes).
        only: full names (``retrain/weekly``) to register; all when empty.
        create_pool: create ``pool`` as a process pool when it does not exist.
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from core.config import load_platform_config

    platform = load_platform_config(config_dir)
    wanted = [s for s in specs(config_dir) if not only or s.full_name in only]
    unknown = set(only) - {s.full_name for s in specs(config_dir)}
    if unknown:
        raise SystemExit(f"unknown deployment(s) {sorted(unknown)}")
    limit_name = f"{platform.project_tag}-model-writers"
    ids: dict[str, UUID] = {}
    with get_client(sync_client=True) as client:
        if create_pool:
            ensure_process_pool(client, pool)
        for spec in wanted:
            try:
                existing = client.read_deployment_by_name(spec.full_name)
                # Detach first: an update without a concurrency_limit would delete the limit.
                _set_writer_limit(client, existing.id, None)
            except ObjectNotFound:
                pass
            deployment = build(
                spec, pool, code_dir, platform.schedule.timezone, platform.project_tag, image
            )
            ids[spec.full_name] = deployment.apply()
        client.upsert_global_concurrency_limit_by_name(limit_name, WRITER_SLOTS)
        limit = client.read_global_concurrency_limit_by_name(limit_name)
        for spec in wanted:
            if spec.writer:
                _set_writer_limit(client, ids[spec.full_name], limit.id)
    for spec in wanted:
        when = f"cron {spec.cron!r} ({platform.schedule.timezone})" if spec.cron else "on demand"
        shared = f", shares {limit_name!r}" if spec.writer else ""
        print(f"{spec.full_name}: pool {pool!r}, {when}{shared}")  # noqa: T201  (its report)
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    from core.settings import PROJECT_ROOT, load_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default=DEFAULT_POOL, help="Work pool name.")
    parser.add_argument(
        "--code-dir",
        default=str(PROJECT_ROOT),
        help="Project directory where runs execute (/opt/app in the flow-runner image).",
    )
    parser.add_argument("--image", help="Flow-runner image URI (container work pools).")
    parser.add_argument(
        "--only", action="append", default=[], help="Register only this deployment (repeatable)."
    )
    parser.add_argument(
        "--no-create-pool",
        action="store_true",
        help="Fail if the pool does not exist instead of creating a process pool.",
    )
    args = parser.parse_args(argv)
    register(
        load_settings().config_dir,
        args.pool,
        args.code_dir,
        image=args.image,
        only=args.only,
        create_pool=not (args.no_create_pool or args.image),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

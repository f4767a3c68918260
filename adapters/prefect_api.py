"""The Prefect API as the tasks use it: artifacts, events, and runs of deployments.

Artifacts are created only inside a Prefect run; called from a notebook outside a flow, the
publishing functions do nothing but return what they were given, so every task stays usable
there. Events and deployment runs go to whichever Prefect API the process is configured for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from ``parts``."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def publish_markdown(key: str, markdown: str, description: str) -> str:
    """Create a markdown artifact under ``key`` when inside a run; return the markdown."""
    if _in_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)
    return markdown


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> list[dict[str, Any]]:
    """Create a table artifact under ``key`` when inside a run; return the rows."""
    if _in_run():
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=rows, key=artifact_key(key), description=description)
    return rows


def emit_event(
    event: str,
    *,
    resource_id: str,
    resource_name: str,
    payload: dict[str, Any],
    related_flow_runs: Mapping[str, str] | None = None,
) -> str | None:
    """Emit one Prefect event about one resource.

    Args:
        event: the event name automations match (``intelli-rate.model.threshold-crossed``).
        resource_id: ``prefect.resource.id`` of what the event is about.
        resource_name: ``prefect.resource.name``, for people.
        payload: JSON-ready details.
        related_flow_runs: flow runs the event relates to, as ``{role: flow run id}``.

    Returns:
        The event's id; None when this process emits no events (events turned off).
    """
    from prefect.events import emit_event as prefect_emit_event

    related = [
        {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": role}
        for role, run_id in (related_flow_runs or {}).items()
    ]
    emitted = prefect_emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id, "prefect.resource.name": resource_name},
        related=related,
        payload=payload,
    )
    return None if emitted is None else str(emitted.id)


def current_flow_run_id() -> str | None:
    """The id of the flow run this code runs in; None outside a flow run."""
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


@dataclass(frozen=True)
class StartedRun:
    """A flow run created from a deployment."""

    id: str
    name: str


def run_deployment(
    deployment: str,
    *,
    parameters: dict[str, Any],
    tags: list[str],
    idempotency_key: str | None = None,
) -> StartedRun | None:
    """Create a run of ``deployment`` (``flow/deployment``) and return without waiting for it.

    The run is a top-level run, not a subflow of the caller, so it lives on whatever the caller
    does next; a worker of the deployment's pool runs it.

    Args:
        deployment: ``flow/deployment`` name.
        parameters: the run's parameters.
        tags: tags of the run.
        idempotency_key: the same key again finds the run already created (a retried task
            creates no second run); None for no such guard.

    Returns:
        The run's id and name; None when the API has no such deployment.
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment as prefect_run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run = prefect_run_deployment(
            deployment,
            parameters=parameters,
            timeout=0,
            as_subflow=False,
            tags=tags,
            idempotency_key=idempotency_key,
        )
    except ObjectNotFound:
        return None
    # The dispatcher returns a coroutine only when called inside an event loop; this is sync.
    assert isinstance(run, FlowRun), "run_deployment was called from async code"
    return StartedRun(id=str(run.id), name=run.name)

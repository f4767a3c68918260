"""What a person reads: Prefect artifacts and the end-of-run summary.

Artifacts are created only inside a Prefect run; called from a notebook outside a flow, the
functions here do nothing but return the text, so every task stays usable there.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from prefect.states import State

from adapters.publish import PublishedVersion
from core.config import ModelConfig
from core.gate import Decision
from core.outcome import ModelOutcome, Status, headline, summary_rows

if TYPE_CHECKING:
    from tasks.promotion import Registered
    from tasks.training import Challenger, ChampionScore


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


def outcome(
    model: str,
    status: Status,
    note: str = "",
    challenger: Challenger | None = None,
    champion: ChampionScore | None = None,
    decision: Decision | None = None,
    published: PublishedVersion | None = None,
    registered: Registered | None = None,
) -> ModelOutcome:
    """One model's outcome from what its retrain got as far as."""
    return ModelOutcome(
        model=model,
        status=status,
        note=note,
        version=published.version if published else None,
        uri=published.uri if published else None,
        mlflow_version=registered.version if registered else None,
        mlflow_run_id=challenger.run_id if challenger else None,
        metrics=dict(challenger.metrics) if challenger else {},
        champion_version=champion.version if champion else None,
        champion_metrics=dict(champion.metrics or {}) if champion else {},
        verdict=decision.verdict if decision else None,
        reasons=[*decision.reasons, *decision.warnings] if decision else [],
    )


def summarise_run(cfgs: list[ModelConfig], states: dict[str, State]) -> dict[str, Any]:
    """Collect every model's outcome (a failed subflow becomes a ``failed`` line naming why).

    A plain function, not a task: Prefect would treat the states passed in as upstream
    dependencies and refuse to run it when one of them failed.
    """
    outcomes: list[ModelOutcome] = []
    for model, state in states.items():
        if state.is_completed():
            outcomes.append(state.result())
        else:
            error = state.result(raise_on_failure=False)
            message = state.message or state.name or "failed"
            note = str(error) if isinstance(error, BaseException) else message
            outcomes.append(ModelOutcome(model, "failed", note=note))
    gate_metrics = {c.name: list(c.gate.metrics) for c in cfgs}
    title = headline(outcomes)
    rows = summary_rows(outcomes, gate_metrics)
    publish_table("retrain-summary", rows, title)
    return {"headline": title, "models": [o.to_dict() for o in outcomes], "rows": rows}

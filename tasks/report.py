"""What a person reads at the end of a retrain: one outcome per model and a summary table.

The table becomes an artifact only inside a Prefect run (see :mod:`adapters.prefect_api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from adapters.prefect_api import publish_table
from adapters.versions import PublishedVersion
from core.config import ModelConfig
from core.gate import Decision
from core.outcome import ModelOutcome, Status, headline, summary_rows
from core.secrets import scrub

if TYPE_CHECKING:
    from tasks.promotion import Registered
    from tasks.training import Challenger, ChampionScore


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
    """One model's outcome from what its retrain got as far as.

    A rejected model's note leads with the gate's reasons (which rule failed, on which metric),
    then the champion's note: the reasons are what a person must act on.
    """
    if status == "rejected" and decision is not None and decision.reasons:
        note = "; ".join([*decision.reasons, *([note] if note else [])])
    return ModelOutcome(
        model=model,
        status=status,
        note=scrub(note),
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


def outcome_of(model: str, state: State) -> ModelOutcome:
    """A model subflow's outcome from its final state (a failed run becomes ``failed``, why)."""
    if state.is_completed():
        result = state.result()
        if isinstance(result, ModelOutcome):
            return result
    error = state.result(raise_on_failure=False)
    message = state.message or state.name or "failed"
    note = str(error) if isinstance(error, BaseException) else message
    return ModelOutcome(model, "failed", note=scrub(note))


@task(name="summarise-run", cache_policy=NO_CACHE)
def summarise_run(cfgs: list[ModelConfig], outcomes: list[ModelOutcome]) -> dict[str, Any]:
    """The run's summary: a headline, every model's outcome and a table artifact of them.

    It takes outcomes, not the subflows' states: Prefect treats states passed to a task as
    upstream dependencies and would not run it once one of them failed.
    """
    gate_metrics = {c.name: list(c.gate.metrics) for c in cfgs}
    title = headline(outcomes)
    rows = summary_rows(outcomes, gate_metrics)
    publish_table("retrain-summary", rows, title)
    return {"headline": title, "models": [o.to_dict() for o in outcomes], "rows": rows}

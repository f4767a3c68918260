"""What a person reads at the end of a retrain: one outcome per model and a summary table.

The table becomes an artifact only inside a Prefect run (see :mod:`adapters.prefect_api`).
"""

from __future__ import annotations

from typing import Any

from prefect.states import State

from adapters.prefect_api import publish_table
from core.settings import Settings


def outcome(
    model: str,
    status: str,
    note: str = "",
    challenger: Any = None,
    champion: Any = None,
    decision: Any = None,
    published: Any = None,
    registered: Any = None,
) -> dict[str, Any]:
    """One model's line in the run summary (JSON-ready)."""
    return {
        "model": model,
        "status": status,
        "note": note,
        "version": getattr(published, "version", None),
        "uri": getattr(published, "uri", None),
        "mlflow_version": getattr(registered, "version", None),
        "mlflow_run_id": getattr(challenger, "run_id", None),
        "metrics": dict(getattr(challenger, "metrics", None) or {}),
        "champion_version": getattr(champion, "version", None),
        "champion_metrics": dict(getattr(champion, "metrics", None) or {}),
        "verdict": getattr(decision, "verdict", None),
        "reasons": list(getattr(decision, "reasons", ()) or ())
        + list(getattr(decision, "warnings", ()) or ()),
    }


def summary_rows(
    outcomes: list[dict[str, Any]], gate_metrics: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """Flatten outcomes into table rows: model, status, version, key metrics, verdict, where."""
    rows = []
    for o in outcomes:
        keys = gate_metrics.get(o["model"], [])
        metrics = ", ".join(f"{k}={o['metrics'][k]:.3f}" for k in keys if k in o["metrics"])
        rows.append(
            {
                "model": o["model"],
                "status": o["status"],
                "version": o["version"] or "-",
                "metrics": metrics or "-",
                "gate": o["verdict"] or "-",
                "published": o["uri"] or "-",
                "note": o["note"] or "; ".join(o["reasons"]) or "-",
            }
        )
    return rows


def summarise_run(settings: Settings, states: dict[str, State]) -> dict[str, Any]:
    """Collect every model's outcome (a failed subflow becomes a ``failed`` line naming why).

    A plain function, not a task: Prefect would treat the states passed in as upstream
    dependencies and refuse to run it when one of them failed.
    """
    from core.config import load_model_configs

    outcomes = []
    for model, state in states.items():
        if state.is_completed():
            outcomes.append(state.result())
        else:
            error = state.result(raise_on_failure=False)
            message = state.message or state.name or "failed"
            note = str(error) if isinstance(error, BaseException) else message
            outcomes.append(outcome(model, "failed", note=note))
    cfgs = {c.name: c for c in load_model_configs(settings.config_dir, list(states))}
    gate_metrics = {name: list(c.gate.metrics) for name, c in cfgs.items()}
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o["status"]] = counts.get(o["status"], 0) + 1
    headline = f"{len(outcomes)} model(s): " + ", ".join(
        f"{n} {s}" for s, n in sorted(counts.items())
    )
    rows = summary_rows(outcomes, gate_metrics)
    publish_table("retrain-summary", rows, headline)
    return {"headline": headline, "models": outcomes, "rows": rows}

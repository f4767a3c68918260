"""What one model's retrain came to, and the run's summary of them: plain data, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["promoted", "rejected", "skipped", "failed"]

NO_NEW_DATA = "no new data since the last snapshot (use --force)"
"""The note of a model skipped for want of new rows: the flow's, and ``mlops retrain``'s own."""


@dataclass(frozen=True)
class ModelOutcome:
    """One model's line in the retrain summary.

    Attributes:
        model: model name.
        status: ``promoted`` (serves), ``rejected`` (by the gate), ``skipped`` (no new data)
            or ``failed`` (validation, training, publishing or the rollout failed).
        note: why, in a sentence.
        version: the store version published (``vN``), if any.
        uri: where that version was published.
        mlflow_version: its registered MLflow version.
        mlflow_run_id: the challenger's training run.
        metrics: the challenger's holdout metrics.
        champion_version: the champion it was compared with.
        champion_metrics: the champion's metrics on the same holdout.
        verdict: the gate's verdict.
        reasons: the gate's reasons and warnings.
    """

    model: str
    status: Status
    note: str = ""
    version: str | None = None
    uri: str | None = None
    mlflow_version: str | None = None
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    champion_version: str | None = None
    champion_metrics: dict[str, float] = field(default_factory=dict)
    verdict: str | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the run's result and the CLI's ``--json``)."""
        return asdict(self)


def headline(outcomes: list[ModelOutcome]) -> str:
    """``3 model(s): 1 promoted, 2 rejected``."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return f"{len(outcomes)} model(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def summary_rows(
    outcomes: list[ModelOutcome], gate_metrics: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """Flatten outcomes into table rows: model, status, version, key metrics, verdict, where."""
    rows = []
    for o in outcomes:
        keys = gate_metrics.get(o.model, [])
        metrics = ", ".join(f"{k}={o.metrics[k]:.3f}" for k in keys if k in o.metrics)
        rows.append(
            {
                "model": o.model,
                "status": o.status,
                "version": o.version or "-",
                "metrics": metrics or "-",
                "gate": o.verdict or "-",
                "published": o.uri or "-",
                "note": o.note or "; ".join(o.reasons) or "-",
            }
        )
    return rows

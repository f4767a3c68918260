"""Gate, publish, register: the side effects that follow a decision.

:func:`core.gate.decide` decides; the tasks here record the decision, publish the version to
the store and register it in MLflow (alias ``challenger``). Promotion itself, moving
``latest.json`` and the ``champion`` alias, happens only once the endpoint serves the version
(:mod:`tasks.rollout`). Each task is named for its effect and returns identifiers.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters.layout import METRICS, MODEL_TARBALL, SCHEMA, UNPACKED
from adapters.package import make_tarball, write_contents
from adapters.prefect_api import publish_markdown
from adapters.registry import CHALLENGER, Registry
from adapters.store import Store
from adapters.versions import PublishedVersion, publish_version
from core import gate
from core.config import ModelConfig
from core.lineage import TAG_KEYS, Lineage
from tasks.training import Challenger, ChampionScore, metrics_json, scratch_dir


@dataclass(frozen=True)
class Registered:
    """The MLflow model version created for a published store version."""

    model: str
    version: str
    store_version: str


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def table_markdown(name: str, rows: list[dict[str, Any]]) -> list[str]:
    """One of a training's tables (a forecaster's candidates) as Markdown lines."""
    if not rows:
        return []
    columns = list(rows[0])
    out = ["", f"## {name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            _cell(v) if isinstance(v, float) else "-" if v is None else str(v)
            for v in (row.get(c) for c in columns)
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def gate_markdown(
    cfg: ModelConfig,
    decision: gate.Decision,
    champion: ChampionScore,
    tables: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    """A table of the challenger against the champion, with the verdict.

    ``tables`` (what training decided: a forecaster's candidates per service) follow it.
    """
    lines = [
        f"# Gate: `{cfg.name}` -> **{decision.verdict}**",
        "",
        f"{champion.note}. Mode: `{decision.mode}`.",
        "",
        "| metric | rule | challenger | champion | threshold | passed |",
        "|---|---|---|---|---|---|",
    ]
    for c in decision.checks:
        lines.append(
            f"| {c.metric} | {c.rule} | {_cell(c.challenger)} | {_cell(c.champion)} "
            f"| {_cell(c.threshold)} | {'yes' if c.passed else '**no**'} |"
        )
    lines += [
        "",
        *[f"- {r}" for r in decision.reasons],
        *[f"- warning: {w}" for w in decision.warnings],
    ]
    for name, rows in (tables or {}).items():
        lines += table_markdown(name, rows)
    return "\n".join(lines)


@task(name="decide-promotion", cache_policy=NO_CACHE)
def decide_promotion(
    registry: Registry, cfg: ModelConfig, challenger: Challenger, champion: ChampionScore
) -> gate.Decision:
    """Apply the gate and record the decision on the challenger's MLflow run and in Prefect."""
    unscored = champion.version is not None and champion.metrics is None
    decision = gate.decide(
        challenger.metrics, champion.metrics, cfg.gate, champion.note if unscored else None
    )
    record = {
        **decision.to_dict(),
        "champion_version": champion.version,
        "champion_note": champion.note,
        # What training decided (a forecaster's candidates: the winner per service and every
        # candidate's backtest score), beside the decision it led to.
        **challenger.summary.tables,
    }
    registry.log_dict(challenger.run_id, record, "gate.json")
    tags = {"gate.verdict": decision.verdict, "gate.champion_version": str(champion.version)}
    registry.set_run_tags(challenger.run_id, tags)
    if champion.metrics:
        registry.log_metrics_to_run(
            challenger.run_id, {f"champion.{k}": v for k, v in champion.metrics.items()}
        )
    publish_markdown(
        f"gate-{cfg.name}",
        gate_markdown(cfg, decision, champion, challenger.summary.tables),
        f"Gate decision for {cfg.name}",
    )
    return decision


@task(name="publish-model-version", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_model(
    store: Store,
    cfg: ModelConfig,
    challenger: Challenger,
    champion: ChampionScore,
    decision: gate.Decision,
    lineage: Lineage,
    work_dir: Path,
) -> PublishedVersion:
    """Claim ``v{N}`` and write model.tar.gz, metrics.json, schema.json, then the manifest."""
    staging = scratch_dir(work_dir, f"{cfg.name}-publish-")
    try:
        contents_sha256 = write_contents(challenger.model_dir, cfg.name, cfg.family)
        make_tarball(challenger.model_dir, staging / MODEL_TARBALL)
        (staging / METRICS).write_text(metrics_json(challenger, champion, decision.to_dict()))
        (staging / SCHEMA).write_text(json.dumps(challenger.schema, indent=2, default=str))
        files = {name: staging / name for name in (MODEL_TARBALL, METRICS, SCHEMA)}
        if cfg.endpoint.model_data == "uncompressed":  # SageMaker's S3Prefix model data source
            files |= {
                f"{UNPACKED}/{path.name}": path
                for path in sorted(challenger.model_dir.iterdir())
                if path.is_file()
            }
        full = lineage.trained(
            challenger.run_id, challenger.experiment_id, challenger.model_uri
        ).packaged(contents_sha256)
        return publish_version(
            store, cfg.name, files, full.to_dict(), claimed_by={"flow_run_id": lineage.flow_run_id}
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@task(name="register-model-version", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_model(
    registry: Registry, cfg: ModelConfig, challenger: Challenger, published: PublishedVersion
) -> Registered:
    """Register the published version in MLflow with lineage tags; alias it ``challenger``."""
    lineage = Lineage.from_dict(published.manifest.get("lineage", {}))
    tags = {
        "store_version": published.version,
        "store_uri": published.uri,
        "manifest_sha256": published.manifest_sha256,
        **lineage.tags(TAG_KEYS),
    }
    version = registry.register_version(
        cfg.name,
        challenger.model_uri,
        challenger.run_id,
        tags,
        description=f"{cfg.name} {published.version}: {cfg.description}",
    )
    registry.set_alias(cfg.name, CHALLENGER, version)
    return Registered(cfg.name, version, published.version)

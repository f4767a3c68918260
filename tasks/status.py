"""What is serving and where it came from: the store pointer and the MLflow alias, side by side."""

from __future__ import annotations

import json
from typing import Any

from tasks import registry
from tasks.config import load_model_configs
from tasks.publish import PublishError, promotion_history, read_latest, read_manifest
from tasks.store import KeyNotFound
from tasks.settings import Settings
from tasks.training import store_of


def model_status(settings: Settings, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Per model: ``latest.json``, the ``champion`` alias, whether they agree, metrics, lineage."""
    store = store_of(settings)
    report = []
    for cfg in load_model_configs(settings.config_dir, names):
        latest = read_latest(store, cfg.name)
        alias = registry.get_alias(settings.tracking_uri, cfg.name, registry.CHAMPION)
        row: dict[str, Any] = {
            "model": cfg.name,
            "latest": latest,
            "latest_version": latest and latest.get("version"),
            "champion_alias": alias and alias["version"],
            "champion_store_version": alias and alias["tags"].get("store_version"),
            "promotions": len(promotion_history(store, cfg.name)),
        }
        problems = []
        if row["latest_version"] != row["champion_store_version"]:
            problems.append(
                f"latest.json says {row['latest_version']} but the MLflow champion alias "
                f"is store version {row['champion_store_version']}"
            )
        if latest:
            try:
                manifest = read_manifest(store, cfg.name, latest["version"])
                row["lineage"] = manifest.get("lineage", {})
                row["uri"] = store.url(f"models/{cfg.name}/{latest['version']}")
                metrics = json.loads(store.get_bytes(f"models/{cfg.name}/{latest['version']}/metrics.json"))
                row["metrics"] = metrics.get("holdout", {})
                row["gate_metrics"] = {k: row["metrics"][k] for k in cfg.gate.metrics if k in row["metrics"]}
            except (PublishError, KeyNotFound) as exc:
                problems.append(f"latest.json points at an unreadable version: {exc}")
        row["agree"] = not problems
        if problems:
            row["problem"] = "; ".join(problems)
        report.append(row)
    return report

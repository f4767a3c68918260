"""What is serving, where it came from, how to roll back: one answer per model.

Three sources are read side by side and must agree: the store's ``latest.json``, the MLflow
``champion`` alias and what the endpoint actually serves.
"""

from __future__ import annotations

import json
from typing import Any

from tasks import registry
from tasks.config import load_model_configs, load_platform_config
from tasks.endpoints import open_target
from tasks.publish import PublishError, promotion_history, read_latest, read_manifest
from tasks.settings import Settings
from tasks.store import KeyNotFound
from tasks.training import store_of


def model_status(settings: Settings, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Per model: ``latest.json``, the ``champion`` alias, whether they agree, metrics, lineage."""
    store = store_of(settings)
    target = open_target(settings, load_platform_config(settings.config_dir))
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
        row["endpoint_target"] = target.kind if target and cfg.endpoint.enabled else None
        if row["endpoint_target"]:
            try:
                serving = target.describe(cfg.name)  # type: ignore[union-attr]
            except Exception as exc:  # an unreachable endpoint is a finding, not a crash
                serving = None
                problems.append(f"endpoint cannot be read: {exc}")
            else:
                if serving is None and row["latest_version"]:
                    problems.append("no endpoint serves it")
            if serving is not None:
                row["endpoint"] = {
                    "name": serving.endpoint_name,
                    "status": serving.status,
                    "version": serving.version,
                    "address": serving.address,
                    "config": serving.config_name,
                    "variants": serving.variants,
                }
                row["endpoint_version"] = serving.version
                if serving.version is None:
                    problems.append(
                        f"the endpoint is {serving.status} and serves no version "
                        f"(latest.json says {row['latest_version']})"
                    )
                elif serving.version != row["latest_version"]:
                    problems.append(
                        f"the endpoint serves {serving.version}, latest.json says "
                        f"{row['latest_version']}"
                    )
        previous = (latest or {}).get("previous")
        row["rollback"] = f"mlops rollback {cfg.name}" + (
            f"  # back to {previous}" if previous else " --to vN"
        )
        if latest:
            try:
                manifest = read_manifest(store, cfg.name, latest["version"])
                row["lineage"] = manifest.get("lineage", {})
                row["uri"] = store.url(f"models/{cfg.name}/{latest['version']}")
                metrics = json.loads(
                    store.get_bytes(f"models/{cfg.name}/{latest['version']}/metrics.json")
                )
                row["metrics"] = metrics.get("holdout", {})
                row["gate_metrics"] = {
                    k: row["metrics"][k] for k in cfg.gate.metrics if k in row["metrics"]
                }
                gate = metrics.get("gate") or {}
                row["gate"] = gate.get("verdict")
                row["gate_reasons"] = list(gate.get("reasons") or [])
            except (PublishError, KeyNotFound) as exc:
                problems.append(f"latest.json points at an unreadable version: {exc}")
        row["agree"] = not problems
        if problems:
            row["problem"] = "; ".join(problems)
        report.append(row)
    return report

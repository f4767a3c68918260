"""``mlops status``: what is serving, where it came from, how to roll back; one answer per model.

Three sources are read side by side and must agree: the store's ``latest.json``, the MLflow
``champion`` alias and what the endpoint actually serves.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from adapters import registry
from adapters.endpoints import open_target
from adapters.layout import METRICS, PublishError, version_file_key, version_prefix
from adapters.pointer import promotion_history, read_latest
from adapters.store import KeyNotFound
from adapters.versions import read_version_manifest
from cli.common import ModelOpt, app, console
from core.config import load_model_configs, load_platform_config
from core.settings import Settings, prepare_environment
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
                manifest = read_version_manifest(store, cfg.name, latest["version"])
                row["lineage"] = manifest.get("lineage", {})
                row["uri"] = store.url(version_prefix(cfg.name, latest["version"]))
                metrics = json.loads(
                    store.get_bytes(version_file_key(cfg.name, latest["version"], METRICS))
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


@app.command()
def status(
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per model: latest.json, champion alias, endpoint, metrics, lineage; flags disagreement."""
    settings = prepare_environment()
    report = model_status(settings, model or None)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
        return
    table = Table(title=f"store {settings.store}", show_lines=True)
    for col in (
        "model",
        "latest.json",
        "mlflow champion",
        "endpoint",
        "agree",
        "metrics, gate",
        "published, lineage",
    ):
        table.add_column(col, overflow="fold")
    for r in report:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in (r.get("gate_metrics") or {}).items())
        lin = r.get("lineage") or {}
        lineage = "\n".join(
            f"{k}: {lin[k]}"
            for k in ("snapshot_id", "code_version", "flow_run_id", "mlflow_run_id")
            if k in lin
        )
        agree = "[green]yes[/]" if r["agree"] else f"[red]NO[/] {r.get('problem', '')}"
        ep = r.get("endpoint")
        endpoint = (
            f"{ep['version']} {ep['status']}\n{ep['address']}"
            if ep
            else ("-" if not r.get("endpoint_target") else "none")
        )
        table.add_row(
            r["model"],
            str(r.get("latest_version") or "-"),
            f"{r.get('champion_alias') or '-'} ({r.get('champion_store_version') or '-'})",
            endpoint,
            agree,
            f"{metrics or '-'}\ngate: {r.get('gate') or '-'}",
            f"{r.get('uri') or '-'}\n{lineage}\nrollback: {r['rollback']}".strip(),
        )
    console.print(table)

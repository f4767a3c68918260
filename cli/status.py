"""``mlops status``: what is serving, where it came from, how to roll back; one answer per model.

Three sources are read side by side and must agree: the store's ``latest.json``, the MLflow
``champion`` alias and what the endpoint actually serves.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from adapters.endpoints import open_target
from adapters.experiments import experiment_line
from adapters.layout import METRICS, PublishError, version_file_key, version_prefix
from adapters.pointer import promotion_history, read_latest
from adapters.registry import CHAMPION, Registry
from adapters.store import KeyNotFound, Store, store_from_settings
from adapters.versions import read_checked_manifest
from cli.common import ModelOpt, app, console
from core.config import ModelConfig, load_model_configs, load_platform_config
from core.endpoint import EndpointTarget
from core.lineage import SHOWN_KEYS, Lineage
from core.settings import Settings, prepare_environment


def model_status(
    store: Store, registry: Registry, target: EndpointTarget | None, cfgs: list[ModelConfig]
) -> list[dict[str, Any]]:
    """Per model: ``latest.json``, the ``champion`` alias, whether they agree, metrics, lineage.

    Args:
        store: the model store.
        registry: the MLflow registry.
        target: the endpoint target; ``None`` when rollouts serve nowhere.
        cfgs: the models to report on.
    """
    report = []
    for cfg in cfgs:
        latest = read_latest(store, cfg.name)
        alias = registry.get_alias(cfg.name, CHAMPION)
        row: dict[str, Any] = {
            "model": cfg.name,
            "latest": latest,
            "latest_version": latest and latest.get("version"),
            "champion_alias": alias and alias["version"],
            "champion_store_version": alias and alias["tags"].get("store_version"),
            "promotions": len(promotion_history(store, cfg.name)),
            "experiment": experiment_line(store, cfg.name),
        }
        problems = []
        if row["latest_version"] != row["champion_store_version"]:
            problems.append(
                f"latest.json says {row['latest_version']} but the MLflow champion alias "
                f"is store version {row['champion_store_version']}"
            )
        row["endpoint_target"] = target.kind if target and cfg.endpoint.enabled else None
        if target is not None and row["endpoint_target"]:
            problems += _endpoint_findings(row, target, cfg.name)
        previous = (latest or {}).get("previous")
        row["rollback"] = f"mlops rollback {cfg.name}" + (
            f"  # back to {previous}" if previous else " --to vN"
        )
        if latest:
            try:
                row |= _published(store, cfg, str(latest["version"]))
            except (PublishError, KeyNotFound) as exc:
                problems.append(f"latest.json points at an unreadable version: {exc}")
            problems += _hash_findings(row, latest, alias)
        row["agree"] = not problems
        if problems:
            row["problem"] = "; ".join(problems)
        report.append(row)
    return report


def _endpoint_findings(row: dict[str, Any], target: EndpointTarget, model: str) -> list[str]:
    """Add what the endpoint serves to ``row``; return where it disagrees with the pointer."""
    try:
        serving = target.describe(model)
    except Exception as exc:  # an unreachable endpoint is a finding, not a crash
        return [f"endpoint cannot be read: {exc}"]
    if serving is None:
        return ["no endpoint serves it"] if row["latest_version"] else []
    row["endpoint"] = {
        "name": serving.endpoint_name,
        "status": serving.status,
        "version": serving.version,
        "address": serving.address,
        "config": serving.config_name,
        "variants": serving.variants,
    }
    row["endpoint_version"] = serving.version
    row["health"] = _health(target, model)
    if serving.version is None:
        return [
            f"the endpoint is {serving.status} and serves no version "
            f"(latest.json says {row['latest_version']})"
        ]
    if serving.version != row["latest_version"]:
        return [f"the endpoint serves {serving.version}, latest.json says {row['latest_version']}"]
    return []


def _health(target: EndpointTarget, model: str) -> dict[str, Any] | None:
    """The endpoint's last minute (rate, 5xx share, p99), or None when it cannot tell."""
    try:
        health = target.health(model)
    except Exception:  # a status view shows what it can; the rest still prints
        return None
    return None if health is None else dataclasses.asdict(health)


def health_line(health: dict[str, Any] | None) -> str:
    """``12.3 req/s, 5xx 0.0%, p99 4.1 ms (last 60 s, local /metrics)``; ``-`` when unknown."""
    if not health:
        return "-"
    errors = health["error_rate"]
    p99 = health["p99_ms"]
    return (
        f"{health['requests_per_second']:.1f} req/s, "
        f"5xx {'-' if errors is None else f'{errors:.1%}'}, "
        f"p99 {'-' if p99 is None else f'{p99:.1f} ms'} "
        f"(last {health['window_seconds']:.0f} s, {health['source']})"
    )


def _hash_findings(
    row: dict[str, Any], latest: dict[str, Any], alias: dict[str, Any] | None
) -> list[str]:
    """Compare the champion's manifest in the store with the hashes recorded for it.

    ``latest.json`` recorded the hash at promotion, the MLflow version's tag at publication: a
    store manifest that matches neither was rewritten after the fact (the README's
    "What a writer of the store can do").
    """
    actual = row.get("manifest_sha256")
    if not actual:
        return []
    recorded = {"latest.json": latest.get("manifest_sha256")}
    if alias and alias["tags"].get("store_version") == latest.get("version"):
        recorded["the MLflow champion's tag"] = alias["tags"].get("manifest_sha256")
    return [
        f"MANIFEST CHANGED: {latest.get('version')}'s manifest in the store has sha256 "
        f"{actual}, {where} recorded {sha}"
        for where, sha in recorded.items()
        if sha != actual
    ]


def _published(store: Store, cfg: ModelConfig, version: str) -> dict[str, Any]:
    """The champion version's lineage, location, manifest hash, metrics and gate verdict."""
    manifest, manifest_sha256 = read_checked_manifest(store, cfg.name, version)
    metrics = json.loads(store.get_bytes(version_file_key(cfg.name, version, METRICS)))
    holdout = metrics.get("holdout", {})
    gate = metrics.get("gate") or {}
    return {
        "lineage": manifest.get("lineage", {}),
        "manifest_sha256": manifest_sha256,
        "uri": store.url(version_prefix(cfg.name, version)),
        "metrics": holdout,
        "gate_metrics": {k: holdout[k] for k in cfg.gate.metrics if k in holdout},
        "gate": gate.get("verdict"),
        "gate_reasons": list(gate.get("reasons") or []),
    }


def status_of(settings: Settings, names: list[str] | None = None) -> list[dict[str, Any]]:
    """:func:`model_status` of the store, registry and endpoint the settings name."""
    return model_status(
        store_from_settings(settings),
        Registry.from_settings(settings),
        open_target(settings, load_platform_config(settings.config_dir)),
        load_model_configs(settings.config_dir, names),
    )


@app.command()
def status(
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per model: latest.json, champion alias, endpoint, metrics, lineage; flags disagreement."""
    settings = prepare_environment()
    report = status_of(settings, model or None)
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
        shown = Lineage.from_dict(r.get("lineage") or {}).tags(SHOWN_KEYS)
        lineage = "\n".join(f"{k}: {v}" for k, v in shown.items())
        agree = "[green]yes[/]" if r["agree"] else f"[red]NO[/] {r.get('problem', '')}"
        ep = r.get("endpoint")
        endpoint = (
            f"{ep['version']} {ep['status']}\n{ep['address']}\n{health_line(r.get('health'))}"
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
    for r in report:  # one line per model that had an online experiment
        if r.get("experiment"):
            console.print(f"experiment {r['model']}: {r['experiment']}", highlight=False)

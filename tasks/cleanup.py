"""Cleanup tasks: take the inventory the plan needs, and carry out a confirmed plan.

The plan itself is the pure :func:`core.cleanup_plan.plan_cleanup`. Deletion runs in the order
endpoint, alarm, endpoint config, model, store version, registry version, snapshot, and
re-checks "in use" right before each delete (something may have moved since the plan). A
superseded snapshot is handed to the store's expiry (tagged for the bucket's lifecycle rule on
S3) once no version left in the store names it in its lineage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters.experiments import read_experiment
from adapters.layout import MODELS, claim_key, model_names
from adapters.pointer import read_latest
from adapters.prefect_api import publish_table
from adapters.registry import Registry
from adapters.snapshots import list_snapshots, retire_snapshot
from adapters.store import KeyNotFound, Store
from adapters.versions import delete_version, list_versions, read_version_manifest
from core.cleanup_plan import ORDER, DatasetInventory, Inventory, ModelInventory, PlanItem
from core.endpoint import EndpointTarget, Resource, Serving
from core.lineage import Lineage


def _claimed_at(store: Store, model: str, version: str) -> datetime | None:
    try:
        claim = json.loads(store.get_bytes(claim_key(model, version)))
        return datetime.fromisoformat(str(claim["claimed_at"]))
    except (KeyNotFound, KeyError, ValueError):
        return None


def _running_experiment(store: Store, model: str) -> tuple[str, str] | None:
    """(id, challenger) of the model's experiment while it runs; None otherwise."""
    exp = read_experiment(store, model)
    return (exp.id, exp.challenger) if exp is not None and exp.active else None


def _lineage(
    store: Store, model: str, versions: list[dict[str, Any]]
) -> dict[str, tuple[str, ...]]:
    """Complete version -> the snapshots its training read (from its manifest)."""
    out = {}
    for v in versions:
        if v["complete"]:
            manifest = read_version_manifest(store, model, v["version"])
            out[v["version"]] = Lineage.from_dict(manifest.get("lineage") or {}).snapshot_ids
    return out


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def _datasets(store: Store, windows: Mapping[str, int]) -> list[DatasetInventory]:
    return [
        DatasetInventory(
            dataset=name,
            window_days=days,
            snapshots=[
                {
                    "snapshot_id": m["snapshot_id"],
                    "status": m["status"],
                    "max_event_time": _time((m.get("event_time") or {}).get("max")),
                    "watermark_to": (m.get("watermark") or {}).get("to"),
                }
                for m in list_snapshots(store, name)
            ],
        )
        for name, days in sorted(windows.items())
    ]


@task(name="take-inventory", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def take_inventory(
    store: Store,
    registry: Registry,
    configured: list[str],
    target: EndpointTarget | None,
    all_models: bool,
    datasets: Mapping[str, int] | None = None,
) -> Inventory:
    """List store versions, registry versions and endpoint resources.

    With ``datasets`` (dataset -> widest training window in days), also each dataset's
    snapshots and each complete version's lineage, for the snapshot part of the plan.
    """
    resources = target.resources() if target is not None else []
    names = set(configured)
    if all_models:
        names |= {r.model for r in resources}
        names |= model_names(store.list(MODELS))
    models: dict[str, ModelInventory] = {}
    for name in sorted(names):
        latest = read_latest(store, name) or {}
        versions = list_versions(store, name)
        for v in versions:
            if not v["complete"]:
                v["claimed_at"] = _claimed_at(store, name, v["version"])
        models[name] = ModelInventory(
            model=name,
            configured=name in configured,
            champion=latest.get("version"),
            rollback_target=latest.get("previous"),
            store_versions=versions,
            registry_versions=registry.list_versions(name),
            experiment=_running_experiment(store, name),
            lineage=_lineage(store, name, versions) if datasets else {},
        )
    return Inventory(
        models=models,
        resources=resources,
        now=datetime.now(UTC),
        datasets=_datasets(store, datasets) if datasets else [],
    )


@task(name="delete-planned", cache_policy=NO_CACHE)
def apply_plan(
    store: Store, registry: Registry, plan: list[PlanItem], target: EndpointTarget | None
) -> list[dict[str, Any]]:
    """Delete every ``delete`` item in :data:`ORDER`, re-checking use right before each.

    Returns:
        One record per item: what happened (``deleted``, ``skipped: <why>``).
    """
    fresh = {(r.kind, r.name): r for r in (target.resources() if target else [])}
    done: list[dict[str, Any]] = []
    for kind in ORDER:
        items = [p for p in plan if p.kind == kind and p.action == "delete"]
        if kind == "snapshot" and items:
            # Read after the versions' deletions: what the versions left in the store name.
            done += _retire_snapshots(store, items)
            continue
        for item in items:
            try:
                outcome = _apply_one(store, registry, item, fresh, target)
            except Exception as exc:  # one failure must not hide what was already done
                outcome = f"failed: {type(exc).__name__}: {exc}"
            done.append({**asdict(item), "outcome": outcome})
    return done


def _apply_one(
    store: Store,
    registry: Registry,
    item: PlanItem,
    fresh: dict[tuple[str, str], Resource],
    target: EndpointTarget | None,
) -> str:
    """Delete one planned item after re-checking it; return what happened."""
    kind = item.kind
    if kind in ("endpoint", "alarm", "endpoint-config", "model"):
        res = fresh.get((kind, item.name))
        # Without a target there is no inventory either: nothing of the kind can be found.
        if res is None or target is None:
            return "skipped: already gone"
        if res.in_use and kind != "endpoint":
            return "skipped: in use now"
        try:
            target.delete(res)
        except ValueError as exc:  # the target re-checks use and refuses
            return f"skipped: in use now ({exc})"
        return "deleted"
    if kind == "store-version":
        latest = read_latest(store, item.model) or {}
        if item.version in (latest.get("version"), latest.get("previous")):
            return "skipped: champion or rollback target now"
        running = _running_experiment(store, item.model)
        if running and item.version == running[1]:
            return f"skipped: challenger of running experiment {running[0]} now"
        aliased = {
            r["tags"].get("store_version")
            for r in registry.list_versions(item.model)
            if r["aliases"]
        }
        if item.version in aliased:
            return "skipped: an MLflow alias points at it now"
        serving = target.describe(item.model) if target else None
        if serving is not None and item.version in _served_versions(serving):
            return "skipped: the endpoint serves it now"
        delete_version(store, item.model, str(item.version))
        return "deleted"
    aliases = next(
        (
            r["aliases"]
            for r in registry.list_versions(item.model)
            if f"{item.model}/{r['version']}" == item.name
        ),
        None,
    )
    if aliases is None:
        return "skipped: already gone"
    if aliases:
        return f"skipped: alias {', '.join(aliases)} now"
    registry.delete_version(item.model, item.name.split("/", 1)[1])
    return "deleted"


def _retire_snapshots(store: Store, items: list[PlanItem]) -> list[dict[str, Any]]:
    """Retire each planned snapshot unless a version now in the store names it."""
    done = []
    try:
        named = {
            sid
            for model in model_names(store.list(MODELS))
            for ids in _lineage(store, model, list_versions(store, model)).values()
            for sid in ids
        }
    except Exception as exc:  # without the lineage nothing can be retired safely
        why = f"skipped: lineage unreadable ({type(exc).__name__}: {exc})"
        return [{**asdict(item), "outcome": why} for item in items]
    for item in items:
        dataset, _, sid = item.name.partition("/")
        if sid in named:
            outcome = "skipped: a model version's lineage names it now"
        else:
            try:
                outcome = retire_snapshot(store, dataset, sid)
            except Exception as exc:
                outcome = f"failed: {type(exc).__name__}: {exc}"
        done.append({**asdict(item), "outcome": outcome})
    return done


def _served_versions(serving: Serving) -> set[str]:
    """Every version an endpoint serves: its main one and any variant's."""
    found = {serving.version} | {v.get("version") for v in serving.variants.values()}
    return {str(v) for v in found if v}


@task(name="report-cleanup", cache_policy=NO_CACHE)
def report_rows(key: str, rows: list[dict[str, Any]], description: str) -> list[dict[str, Any]]:
    """Publish a plan (or what was deleted) as a table artifact on the run."""
    return publish_table(key, rows, description)

"""Cleanup: a plan of what nothing uses any more, then (only when asked) its deletion.

:func:`plan_cleanup` is a pure function of an :class:`Inventory` and the retention policy, so
the rules are tested exhaustively without a cloud. The rules, in the words of the plan:

- Never deleted: the champion (``latest.json``), the rollback target (the version the champion
  replaced), any version holding an MLflow alias, any version or resource a live endpoint uses,
  and the newest ``keep_last`` complete versions.
- Endpoint resources (endpoint configs and models on the target) of other versions: deleted.
  Endpoints themselves only with ``--all``, and only when their model is no longer configured:
  a configured model's endpoint is what serves it. Idle endpoints are listed with their cost for
  a person to decide.
- Store versions and their registry versions: only with ``clean_store`` (``--clean-s3``).
  An incomplete version (claimed, no manifest) is deleted once its claim is a day old, so a
  publish in flight is never touched.

Deletion runs in the order endpoint, endpoint config, model, store version, registry version,
and re-checks "in use" right before each delete (something may have moved since the plan).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters import registry
from adapters.endpoints import EndpointTarget, Resource
from adapters.layout import MODELS, claim_key, model_names
from adapters.pointer import read_latest
from adapters.store import KeyNotFound, Store
from adapters.versions import delete_version, list_versions
from core.config import RetentionPolicy
from core.settings import Settings
from tasks.training import store_of

ORDER = ("endpoint", "endpoint-config", "model", "store-version", "registry-version")
STALE_CLAIM = timedelta(days=1)


@dataclass(frozen=True)
class PlanItem:
    """One line of the plan.

    Attributes:
        kind: one of :data:`ORDER`, or ``idle-endpoint`` (listed, never deleted).
        name: resource name, store URL or ``model/version``.
        model: model it belongs to.
        version: model version, when known.
        action: ``delete`` or ``keep``.
        reason: why, in words a person reads.
        details: cost, idle days, creation time...
    """

    kind: str
    name: str
    model: str
    version: str | None
    action: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def not_confirmed(self) -> PlanItem:
        """This item kept: it was planned after the person confirmed the plan."""
        return replace(self, action="keep", reason=f"not in the confirmed plan ({self.reason})")


@dataclass
class ModelInventory:
    """What exists for one model."""

    model: str
    configured: bool
    champion: str | None = None
    rollback_target: str | None = None
    store_versions: list[dict[str, Any]] = field(default_factory=list)
    registry_versions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Inventory:
    """Everything the plan looks at."""

    models: dict[str, ModelInventory]
    resources: list[Resource]
    now: datetime


def _protected(inv: ModelInventory, keep_last: int, serving: set[str]) -> dict[str, str]:
    """Version -> why it is kept."""
    keep: dict[str, str] = {}
    complete = [v["version"] for v in inv.store_versions if v.get("complete")]
    for v in complete[-keep_last:]:
        keep[v] = f"one of the newest {keep_last}"
    for rv in inv.registry_versions:
        sv = rv["tags"].get("store_version")
        if sv and rv["aliases"]:
            keep[sv] = f"MLflow alias {', '.join(sorted(rv['aliases']))}"
    for v in sorted(serving):
        keep[v] = "served by a live endpoint"
    if inv.rollback_target:
        keep[inv.rollback_target] = "rollback target"
    if inv.champion:
        keep[inv.champion] = "champion (latest.json)"
    return keep


def plan_cleanup(
    inventory: Inventory,
    retention: RetentionPolicy,
    *,
    clean_store: bool = False,
    include_orphans: bool = False,
) -> list[PlanItem]:
    """Decide what to delete and what to keep, with a reason for each. Pure.

    Args:
        inventory: what exists.
        retention: keep_last and idle_days.
        clean_store: also plan store versions and their registry versions (``--clean-s3``).
        include_orphans: also plan endpoints of models no longer configured (``--all``).
    """
    plan: list[PlanItem] = []
    serving_by_model: dict[str, set[str]] = {}
    for res in inventory.resources:
        if res.in_use and res.version:
            serving_by_model.setdefault(res.model, set()).add(res.version)

    keep_by_model = {
        name: _protected(inv, retention.keep_last, serving_by_model.get(name, set()))
        for name, inv in inventory.models.items()
    }

    for res in inventory.resources:
        inv = inventory.models.get(res.model)
        keep = keep_by_model.get(res.model, {})
        orphan = inv is None or not inv.configured

        def item(action: str, reason: str, kind: str | None = None, r: Resource = res) -> PlanItem:
            return PlanItem(kind or r.kind, r.name, r.model, r.version, action, reason, r.details)

        if res.kind == "endpoint":
            idle = res.details.get("idle_days")
            if idle is not None and idle >= retention.idle_days:
                plan.append(
                    item("keep", f"no invocations for {idle} days: review", "idle-endpoint")
                )
            if include_orphans and orphan:
                plan.append(item("delete", "its model is no longer configured"))
            else:
                plan.append(item("keep", "serves a configured model"))
        elif res.in_use:
            plan.append(item("keep", "used by a live endpoint"))
        elif res.version and res.version in keep:
            plan.append(item("keep", keep[res.version]))
        elif orphan and not include_orphans:
            plan.append(item("keep", "model not configured (use --all)"))
        else:
            plan.append(item("delete", "no live endpoint uses it"))

    if clean_store:
        for name, inv in sorted(inventory.models.items()):
            keep = keep_by_model[name]
            deleted: set[str] = set()

            def store_item(v: str, action: str, reason: str, model: str = name) -> PlanItem:
                return PlanItem("store-version", f"{model}/{v}", model, v, action, reason)

            for sv in inv.store_versions:
                v = sv["version"]
                if v in keep:
                    plan.append(store_item(v, "keep", keep[v]))
                elif not sv.get("complete"):
                    claimed = sv.get("claimed_at")
                    if claimed is not None and inventory.now - claimed > STALE_CLAIM:
                        deleted.add(v)
                        why = "incomplete publish, claim older than a day"
                        plan.append(store_item(v, "delete", why))
                    else:
                        plan.append(store_item(v, "keep", "incomplete, may still be publishing"))
                else:
                    deleted.add(v)
                    why = f"older than the newest {retention.keep_last}, unused"
                    plan.append(store_item(v, "delete", why))
            known = {sv["version"] for sv in inv.store_versions}
            for rv in inv.registry_versions:
                sv = rv["tags"].get("store_version")
                label = f"{name}/{rv['version']}"
                if rv["aliases"]:
                    action, why = "keep", f"MLflow alias {', '.join(sorted(rv['aliases']))}"
                elif sv in deleted or (sv is not None and sv not in known):
                    action, why = "delete", f"store version {sv} is deleted or gone"
                else:
                    action, why = "keep", f"store version {sv} is kept"
                plan.append(PlanItem("registry-version", label, name, sv, action, why))
    rank = {kind: i for i, kind in enumerate(("idle-endpoint", *ORDER))}
    return sorted(plan, key=lambda p: (rank.get(p.kind, 99), p.model, p.name))


def _claimed_at(store: Store, model: str, version: str) -> datetime | None:
    try:
        claim = json.loads(store.get_bytes(claim_key(model, version)))
        return datetime.fromisoformat(str(claim["claimed_at"]))
    except (KeyNotFound, KeyError, ValueError):
        return None


@task(name="take-inventory", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def take_inventory(
    settings: Settings, configured: list[str], target: EndpointTarget | None, all_models: bool
) -> Inventory:
    """List store versions, registry versions and endpoint resources."""
    store = store_of(settings)
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
            registry_versions=registry.list_versions(settings.tracking_uri, name),
        )
    return Inventory(models=models, resources=resources, now=datetime.now(UTC))


@task(name="delete-planned", cache_policy=NO_CACHE)
def apply_plan(
    settings: Settings, plan: list[PlanItem], target: EndpointTarget | None
) -> list[dict[str, Any]]:
    """Delete every ``delete`` item in :data:`ORDER`, re-checking use right before each.

    Returns:
        One record per item: what happened (``deleted``, ``skipped: <why>``).
    """
    store = store_of(settings)
    fresh = {(r.kind, r.name): r for r in (target.resources() if target else [])}
    done: list[dict[str, Any]] = []
    for kind in ORDER:
        for item in (p for p in plan if p.kind == kind and p.action == "delete"):
            try:
                outcome = _apply_one(settings, store, item, fresh, target)
            except Exception as exc:  # one failure must not hide what was already done
                outcome = f"failed: {type(exc).__name__}: {exc}"
            done.append({**asdict(item), "outcome": outcome})
    return done


def _apply_one(
    settings: Settings,
    store: Store,
    item: PlanItem,
    fresh: dict[tuple[str, str], Resource],
    target: EndpointTarget | None,
) -> str:
    """Delete one planned item after re-checking it; return what happened."""
    kind = item.kind
    if kind in ("endpoint", "endpoint-config", "model"):
        res = fresh.get((kind, item.name))
        if res is None:
            return "skipped: already gone"
        if res.in_use and kind != "endpoint":
            return "skipped: in use now"
        try:
            target.delete(res)  # type: ignore[union-attr]
        except ValueError as exc:  # the target re-checks use and refuses
            return f"skipped: in use now ({exc})"
        return "deleted"
    if kind == "store-version":
        latest = read_latest(store, item.model) or {}
        if item.version in (latest.get("version"), latest.get("previous")):
            return "skipped: champion or rollback target now"
        aliased = {
            r["tags"].get("store_version")
            for r in registry.list_versions(settings.tracking_uri, item.model)
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
            for r in registry.list_versions(settings.tracking_uri, item.model)
            if f"{item.model}/{r['version']}" == item.name
        ),
        None,
    )
    if aliases is None:
        return "skipped: already gone"
    if aliases:
        return f"skipped: alias {', '.join(aliases)} now"
    registry.delete_version(settings.tracking_uri, item.model, item.name.split("/", 1)[1])
    return "deleted"


def _served_versions(serving: Any) -> set[str]:
    """Every version an endpoint serves: its main one and any variant's."""
    found = {serving.version} | {v.get("version") for v in serving.variants.values()}
    return {str(v) for v in found if v}


def plan_rows(plan: list[PlanItem]) -> list[dict[str, Any]]:
    """The plan as table rows (Prefect artifact, terminal)."""
    return [
        {
            "action": p.action,
            "kind": p.kind,
            "name": p.name,
            "model": p.model,
            "version": p.version or "-",
            "reason": p.reason,
            "monthly_usd": p.details.get("monthly_cost_usd", "-"),
        }
        for p in plan
    ]

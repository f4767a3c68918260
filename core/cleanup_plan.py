"""The cleanup plan: what nothing uses any more, each item with delete or keep and why.

:func:`plan_cleanup` is a pure function of an :class:`Inventory` and the retention policy, so
the rules are tested exhaustively without a cloud; :mod:`tasks.cleanup` takes the inventory and
carries the plan out. The rules, in the words of the plan:

- Never deleted: the champion (``latest.json``), the rollback target (the version the champion
  replaced), any version holding an MLflow alias, any version or resource a live endpoint uses,
  and the newest ``keep_last`` complete versions.
- Endpoint resources (endpoint configs and models on the target) of other versions: deleted.
  Endpoints themselves only with ``--all``, and only when their model is no longer configured:
  a configured model's endpoint is what serves it. Idle endpoints are listed with their cost for
  a person to decide.
- Alarms watching an endpoint (SageMaker's p99 latency and 5xx alarms): kept while the endpoint
  lives, deleted once it is gone (deleting an endpoint takes its alarms along).
- Store versions and their registry versions: only with ``clean_store`` (``--clean-s3``).
  An incomplete version (claimed, no manifest) is deleted once its claim is a day old, so a
  publish in flight is never touched.
- Snapshots, also only with ``clean_store``: a validated snapshot whose newest row lies before
  the widest training window of the models reading its dataset, that no kept version's lineage
  names and that does not hold the export's watermark, is superseded. Applying hands it to the
  store's expiry (:func:`superseded_snapshots`): on S3 its files are tagged for the bucket's
  lifecycle rule (``docs/aws-account.md``), a directory deletes them.

Deletion runs in the order endpoint, alarm, endpoint config, model, store version, registry version,
snapshot, and re-checks "in use" right before each delete (something may have moved since the plan).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from core.config import RetentionPolicy
from core.endpoint import Resource

ORDER = (
    "endpoint",
    "alarm",
    "endpoint-config",
    "model",
    "store-version",
    "registry-version",
    "snapshot",
)
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
    # (id, challenger version) of the model's experiment while it runs: the challenger may
    # be out of the endpoint for a moment (starting, stopping) yet still be wanted.
    experiment: tuple[str, str] | None = None
    # Complete version -> the snapshots its training read (its manifest's lineage); read only
    # when snapshots are planned.
    lineage: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class DatasetInventory:
    """One dataset's snapshots, and how far back the models reading it train.

    Attributes:
        dataset: the dataset (snapshot folder) name.
        window_days: the widest ``holdout_days + training_days`` of the models reading it.
        snapshots: ``snapshot_id``, ``status`` (accepted, rejected, pending),
            ``max_event_time`` (datetime or None) and ``watermark_to`` of each snapshot.
    """

    dataset: str
    window_days: int
    snapshots: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Inventory:
    """Everything the plan looks at."""

    models: dict[str, ModelInventory]
    resources: list[Resource]
    now: datetime
    datasets: list[DatasetInventory] = field(default_factory=list)


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
    if inv.experiment:
        keep[inv.experiment[1]] = f"challenger of running experiment {inv.experiment[0]}"
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
    serving_by_model: dict[str, set[str]] = {}
    for res in inventory.resources:
        if res.in_use and res.version:
            serving_by_model.setdefault(res.model, set()).add(res.version)
    keep_by_model = {
        name: _protected(inv, retention.keep_last, serving_by_model.get(name, set()))
        for name, inv in inventory.models.items()
    }
    plan = [
        item
        for res in inventory.resources
        for item in _plan_resource(res, inventory, keep_by_model, retention, include_orphans)
    ]
    if clean_store:
        used: set[str] = set()
        for name, inv in sorted(inventory.models.items()):
            versions, deleted = _plan_store_versions(
                inv, keep_by_model[name], inventory.now, retention
            )
            plan += versions
            plan += _plan_registry_versions(inv, deleted)
            used |= {s for v, ids in inv.lineage.items() if v not in deleted for s in ids}
        for dataset in inventory.datasets:
            plan += superseded_snapshots(dataset, used)
    rank = {kind: i for i, kind in enumerate(("idle-endpoint", *ORDER))}
    return sorted(plan, key=lambda p: (rank.get(p.kind, 99), p.model, p.name))


def _plan_resource(
    res: Resource,
    inventory: Inventory,
    keep_by_model: dict[str, dict[str, str]],
    retention: RetentionPolicy,
    include_orphans: bool,
) -> Iterable[PlanItem]:
    """The plan for one endpoint resource (an idle endpoint gets a second, review line)."""
    inv = inventory.models.get(res.model)
    keep = keep_by_model.get(res.model, {})
    orphan = inv is None or not inv.configured

    def item(action: str, reason: str, kind: str | None = None) -> PlanItem:
        return PlanItem(
            kind or res.kind, res.name, res.model, res.version, action, reason, res.details
        )

    if res.kind == "endpoint":
        idle = res.details.get("idle_days")
        if idle is not None and idle >= retention.idle_days:
            yield item("keep", f"no invocations for {idle} days: review", "idle-endpoint")
        if include_orphans and orphan:
            yield item("delete", "its model is no longer configured")
        else:
            yield item("keep", "serves a configured model")
    elif res.kind == "alarm":
        # No version to protect: an alarm is worth exactly as much as the endpoint it watches.
        if res.in_use:
            yield item("keep", "watches a live endpoint")
        else:
            yield item("delete", "the endpoint it watches is gone")
    elif res.in_use:
        yield item("keep", "used by a live endpoint")
    elif res.version and res.version in keep:
        yield item("keep", keep[res.version])
    elif orphan and not include_orphans:
        yield item("keep", "model not configured (use --all)")
    else:
        yield item("delete", "no live endpoint uses it")


def _plan_store_versions(
    inv: ModelInventory, keep: dict[str, str], now: datetime, retention: RetentionPolicy
) -> tuple[list[PlanItem], set[str]]:
    """The plan for one model's store versions, and the versions it deletes."""
    plan: list[PlanItem] = []
    deleted: set[str] = set()
    for sv in inv.store_versions:
        v = sv["version"]
        action, why = _store_version_action(sv, keep, now, retention.keep_last)
        if action == "delete":
            deleted.add(v)
        plan.append(PlanItem("store-version", f"{inv.model}/{v}", inv.model, v, action, why))
    return plan, deleted


def _store_version_action(
    sv: dict[str, Any], keep: dict[str, str], now: datetime, keep_last: int
) -> tuple[str, str]:
    """``(action, reason)`` for one store version."""
    v = sv["version"]
    if v in keep:
        return "keep", keep[v]
    if sv.get("complete"):
        return "delete", f"older than the newest {keep_last}, unused"
    claimed = sv.get("claimed_at")
    if claimed is not None and now - claimed > STALE_CLAIM:
        return "delete", "incomplete publish, claim older than a day"
    return "keep", "incomplete, may still be publishing"


def _plan_registry_versions(inv: ModelInventory, deleted: set[str]) -> list[PlanItem]:
    """The plan for one model's registered MLflow versions, given the store versions deleted."""
    known = {sv["version"] for sv in inv.store_versions}
    plan = []
    for rv in inv.registry_versions:
        sv = rv["tags"].get("store_version")
        if rv["aliases"]:
            action, why = "keep", f"MLflow alias {', '.join(sorted(rv['aliases']))}"
        elif sv in deleted or (sv is not None and sv not in known):
            action, why = "delete", f"store version {sv} is deleted or gone"
        else:
            action, why = "keep", f"store version {sv} is kept"
        plan.append(
            PlanItem("registry-version", f"{inv.model}/{rv['version']}", inv.model, sv, action, why)
        )
    return plan


def superseded_snapshots(dataset: DatasetInventory, used: set[str]) -> list[PlanItem]:
    """The superseded snapshots of one dataset, each a ``delete`` item.

    Snapshots in use are not listed (every export adds one): pending ones (their export or
    run may be in flight), those a kept version's lineage names, the one holding the export's
    watermark, and those inside the training window.

    The window is the training's own rule (``tasks.training.load_training_window``) measured
    from the newest *accepted* snapshot, which is never later than what a training measures
    from: with the same config, a snapshot outside it is outside every later training's window.

    Args:
        dataset: the dataset's snapshots and widest training window.
        used: snapshot ids named by the lineage of a version that stays.
    """
    accepted = [
        s for s in dataset.snapshots if s["status"] == "accepted" and s.get("max_event_time")
    ]
    if not accepted:
        return []
    newest = max(s["max_event_time"] for s in accepted)
    day = newest.replace(hour=0, minute=0, second=0, microsecond=0)
    horizon = day + timedelta(days=1) - timedelta(days=dataset.window_days)
    watermark = max(accepted, key=lambda s: s.get("watermark_to") or -1)["snapshot_id"]
    plan = []
    for snap in dataset.snapshots:
        sid, last = snap["snapshot_id"], snap.get("max_event_time")
        if (
            snap["status"] == "pending"  # its export or run may be in flight
            or sid in used
            or sid == watermark
            or last is None
            or last >= horizon
        ):
            continue
        why = (
            f"superseded: newest row {last:%Y-%m-%d} is before every {dataset.window_days}-day "
            "training window, no kept version's lineage names it; expired by the store"
        )
        plan.append(
            PlanItem("snapshot", f"{dataset.dataset}/{sid}", dataset.dataset, None, "delete", why)
        )
    return plan


def scope_plan(
    plan: list[PlanItem], models: list[str] | None, confirmed: list[str] | None
) -> list[PlanItem]:
    """The plan restricted to ``models``, with deletions not in ``confirmed`` turned to keeps.

    Args:
        plan: the whole plan.
        models: the models asked about; all when ``None`` or empty.
        confirmed: plan items (``kind:name``) a person confirmed from a dry run; ``None`` when
            there was no confirmation step (everything planned counts as confirmed).
    """
    if models:
        plan = [p for p in plan if p.model in set(models)]
    if confirmed is None:
        return plan
    allowed = set(confirmed)
    return [
        p if f"{p.kind}:{p.name}" in allowed or p.action != "delete" else p.not_confirmed()
        for p in plan
    ]


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

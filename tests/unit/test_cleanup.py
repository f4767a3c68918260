"""The cleanup plan: what is kept, what is deleted, and why (pure function, no cloud)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapters.registry import Registry
from adapters.store import store_from_settings
from core.cleanup_plan import Inventory, ModelInventory, PlanItem, plan_cleanup, scope_plan
from core.config import RetentionPolicy
from core.endpoint import Resource

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _versions(n: int, incomplete: dict[int, datetime | None] | None = None) -> list[dict]:
    incomplete = incomplete or {}
    out = []
    for i in range(1, n + 1):
        row = {"version": f"v{i}", "number": i, "complete": i not in incomplete}
        if i in incomplete:
            row["claimed_at"] = incomplete[i]
        out.append(row)
    return out


def _registry(n: int, aliases: dict[int, list[str]] | None = None) -> list[dict]:
    aliases = aliases or {}
    return [
        {"version": str(i), "tags": {"store_version": f"v{i}"}, "aliases": aliases.get(i, [])}
        for i in range(1, n + 1)
    ]


def _inventory(resources: list[Resource] | None = None, **kw: object) -> Inventory:
    inv = ModelInventory(
        model="m",
        configured=True,
        champion="v6",
        rollback_target="v5",
        store_versions=_versions(6),
        registry_versions=_registry(6, {6: ["champion"], 4: ["challenger"]}),
    )
    for key, value in kw.items():
        setattr(inv, key, value)
    return Inventory(models={"m": inv}, resources=resources or [], now=NOW)


def _by(plan: list[PlanItem], kind: str) -> dict[str, PlanItem]:
    return {p.name: p for p in plan if p.kind == kind}


def test_store_plan_keeps_champion_rollback_alias_and_newest() -> None:
    plan = plan_cleanup(_inventory(), RetentionPolicy(keep_last=2), clean_store=True)
    store = _by(plan, "store-version")
    assert {n for n, p in store.items() if p.action == "delete"} == {"m/v1", "m/v2", "m/v3"}
    assert store["m/v6"].reason.startswith("champion")
    assert store["m/v5"].reason == "rollback target"
    assert "challenger" in store["m/v4"].reason
    registry = _by(plan, "registry-version")
    # A registry version goes with its store version, unless it holds an alias.
    assert {n for n, p in registry.items() if p.action == "delete"} == {"m/1", "m/2", "m/3"}
    assert registry["m/6"].action == "keep"


def test_without_clean_store_no_store_or_registry_items() -> None:
    plan = plan_cleanup(_inventory(), RetentionPolicy(keep_last=1))
    assert not [p for p in plan if p.kind in ("store-version", "registry-version")]


def test_in_use_resources_are_never_planned_for_deletion() -> None:
    resources = [
        Resource("endpoint", "ep-m", "m", "v2", in_use=True),
        Resource("endpoint-config", "cfg-m-v2", "m", "v2", in_use=True),
        Resource("model", "model-m-v2", "m", "v2", in_use=True),
        Resource("endpoint-config", "cfg-m-v1", "m", "v1", in_use=False),
        Resource("model", "model-m-v1", "m", "v1", in_use=False),
        Resource("model", "model-m-v5", "m", "v5", in_use=False),
    ]
    plan = plan_cleanup(_inventory(resources), RetentionPolicy(keep_last=1), clean_store=True)
    deleted = {(p.kind, p.name) for p in plan if p.action == "delete"}
    assert ("endpoint-config", "cfg-m-v1") in deleted and ("model", "model-m-v1") in deleted
    assert (
        not {("endpoint", "ep-m"), ("endpoint-config", "cfg-m-v2"), ("model", "model-m-v2")}
        & deleted
    )
    # The rollback target's model stays (a rollback should not wait for a re-create).
    assert ("model", "model-m-v5") not in deleted
    # The version the endpoint serves is kept in the store even though it is old.
    assert _by(plan, "store-version")["m/v2"].action == "keep"


def test_plan_is_ordered_endpoint_config_model_store_registry() -> None:
    resources = [
        Resource("model", "model-m-v1", "m", "v1", in_use=False),
        Resource("endpoint-config", "cfg-m-v1", "m", "v1", in_use=False),
    ]
    plan = plan_cleanup(_inventory(resources), RetentionPolicy(keep_last=1), clean_store=True)
    kinds = [p.kind for p in plan if p.action == "delete"]
    order = ["endpoint-config", "model", "store-version", "registry-version"]
    assert kinds == sorted(kinds, key=order.index)


def test_endpoints_are_kept_unless_orphaned_and_all() -> None:
    resources = [
        Resource("endpoint", "ep-m", "m", "v6", in_use=True),
        Resource("endpoint", "ep-gone", "gone", "v1", in_use=True),
    ]
    plan = plan_cleanup(_inventory(resources), RetentionPolicy())
    assert all(p.action == "keep" for p in plan if p.kind == "endpoint")
    plan = plan_cleanup(_inventory(resources), RetentionPolicy(), include_orphans=True)
    endpoints = _by(plan, "endpoint")
    assert endpoints["ep-gone"].action == "delete"
    assert endpoints["ep-m"].action == "keep"


def test_unconfigured_model_resources_need_all() -> None:
    resources = [Resource("model", "model-gone-v1", "gone", "v1", in_use=False)]
    plan = plan_cleanup(_inventory(resources), RetentionPolicy())
    assert _by(plan, "model")["model-gone-v1"].action == "keep"
    plan = plan_cleanup(_inventory(resources), RetentionPolicy(), include_orphans=True)
    assert _by(plan, "model")["model-gone-v1"].action == "delete"


@pytest.mark.parametrize(
    ("claimed_at", "action"),
    [(NOW - timedelta(hours=2), "keep"), (NOW - timedelta(days=3), "delete"), (None, "keep")],
)
def test_incomplete_versions_are_deleted_only_when_stale(
    claimed_at: datetime | None, action: str
) -> None:
    inv = _inventory(store_versions=_versions(7, {7: claimed_at}))
    plan = plan_cleanup(inv, RetentionPolicy(keep_last=3), clean_store=True)
    assert _by(plan, "store-version")["m/v7"].action == action


def test_idle_endpoints_are_listed_with_cost_but_kept() -> None:
    details = {"idle_days": 30, "monthly_cost_usd": 83.95}
    resources = [Resource("endpoint", "ep-m", "m", "v6", in_use=True, details=details)]
    plan = plan_cleanup(_inventory(resources), RetentionPolicy(idle_days=14))
    idle = _by(plan, "idle-endpoint")["ep-m"]
    assert idle.action == "keep" and "30 days" in idle.reason
    assert idle.details["monthly_cost_usd"] == 83.95
    plan = plan_cleanup(_inventory(resources), RetentionPolicy(idle_days=60))
    assert not _by(plan, "idle-endpoint")


class _Target:
    """The two calls ``apply_plan`` makes of an endpoint target, one delete failing.

    An in-process stand-in: the real targets are exercised by the SageMaker (moto server) and
    local endpoint integration tests; this one checks the apply loop's bookkeeping.
    """

    kind = "test"

    def __init__(self, resources: list[Resource], broken: str) -> None:
        self._resources = resources
        self.broken = broken
        self.deleted: list[str] = []

    def resources(self) -> list[Resource]:
        return list(self._resources)

    def delete(self, resource: Resource) -> None:
        if resource.name == self.broken:
            raise RuntimeError("ThrottlingException: rate exceeded")
        self.deleted.append(resource.name)


def test_apply_goes_on_after_a_failed_delete_and_reports_it(mlops_home: object) -> None:
    from core.settings import load_settings
    from tasks.cleanup import apply_plan

    def res(kind: str, name: str) -> Resource:
        return Resource(kind=kind, name=name, model="m", version="v1", in_use=False)

    plan = [
        PlanItem(
            kind="endpoint-config",
            name="c1",
            model="m",
            version="v1",
            action="delete",
            reason="old",
        ),
        PlanItem(kind="model", name="m1", model="m", version="v1", action="delete", reason="old"),
        PlanItem(kind="model", name="m2", model="m", version="v2", action="keep", reason="used"),
    ]
    target = _Target([res("endpoint-config", "c1"), res("model", "m1")], broken="c1")

    settings = load_settings()
    done = apply_plan.fn(
        store_from_settings(settings), Registry.from_settings(settings), plan, target
    )

    assert [(d["name"], d["outcome"]) for d in done] == [
        ("c1", "failed: RuntimeError: ThrottlingException: rate exceeded"),
        ("m1", "deleted"),
    ]
    assert target.deleted == ["m1"]


def test_scope_keeps_asked_models_and_turns_unconfirmed_deletions_into_keeps() -> None:
    plan = [
        PlanItem("model", "a1", "a", "v1", "delete", "old"),
        PlanItem("model", "a2", "a", "v2", "delete", "planned since the dry run"),
        PlanItem("model", "a3", "a", "v3", "keep", "used"),
        PlanItem("model", "b1", "b", "v1", "delete", "old"),
    ]
    assert [p.name for p in scope_plan(plan, ["a"], None)] == ["a1", "a2", "a3"]
    assert scope_plan(plan, None, None) == plan
    confirmed = scope_plan(plan, ["a"], ["model:a1", "model:b1"])
    assert [(p.name, p.action) for p in confirmed] == [
        ("a1", "delete"),
        ("a2", "keep"),
        ("a3", "keep"),
    ]
    assert confirmed[1].reason == "not in the confirmed plan (planned since the dry run)"


def test_alarms_go_only_with_their_endpoint_and_after_it() -> None:
    resources = [
        Resource("endpoint", "ep-gone", "gone", "v1", in_use=True),
        Resource("alarm", "ep-m-AllTraffic-p99-latency", "m", None, in_use=True),
        Resource("alarm", "ep-gone-AllTraffic-5xx-rate", "gone", None, in_use=True),
        Resource("alarm", "ep-old-AllTraffic-5xx-rate", "m", None, in_use=False),
        Resource("endpoint-config", "cfg-m-v1", "m", "v1", in_use=False),
    ]
    plan = plan_cleanup(_inventory(resources), RetentionPolicy(), include_orphans=True)
    alarms = _by(plan, "alarm")
    # An alarm watching a live endpoint is kept, even when that endpoint is deleted in the same
    # run (deleting an endpoint takes its alarms along); one whose endpoint is gone is deleted.
    assert alarms["ep-m-AllTraffic-p99-latency"].action == "keep"
    assert alarms["ep-gone-AllTraffic-5xx-rate"].action == "keep"
    assert alarms["ep-old-AllTraffic-5xx-rate"].action == "delete"
    kinds = [p.kind for p in plan if p.action == "delete"]
    assert kinds == ["endpoint", "alarm", "endpoint-config"]


def test_a_running_experiments_challenger_is_kept_until_it_ends() -> None:
    running = _inventory(experiment=("m-v2-0a1b2c3d", "v2"))
    store = _by(
        plan_cleanup(running, RetentionPolicy(keep_last=2), clean_store=True), "store-version"
    )
    assert store["m/v2"].action == "keep"
    assert store["m/v2"].reason == "challenger of running experiment m-v2-0a1b2c3d"
    assert (
        _by(
            plan_cleanup(running, RetentionPolicy(keep_last=2), clean_store=True),
            "registry-version",
        )["m/2"].action
        == "keep"
    )
    # Without the experiment, v2 is old enough to go.
    store = _by(
        plan_cleanup(_inventory(), RetentionPolicy(keep_last=2), clean_store=True), "store-version"
    )
    assert store["m/v2"].action == "delete"


def test_apply_rechecks_the_experiment_before_deleting_a_store_version(mlops_home: object) -> None:
    # The plan was made before the experiment started; the delete must see it now.
    from adapters.experiments import begin_experiment, read_experiment
    from core.settings import load_settings
    from tasks.cleanup import apply_plan, take_inventory
    from tests.fixtures.experiments import MODEL, record

    settings = load_settings()
    store = store_from_settings(settings)
    for version in ("v1", "v2"):
        store.put_bytes(f"models/{MODEL}/{version}/manifest.json", b"{}")
    exp = begin_experiment(store, record())  # champion v1, challenger v2
    item = PlanItem(
        kind="store-version",
        name=f"{MODEL}/v2",
        model=MODEL,
        version="v2",
        action="delete",
        reason="older than the newest 1",
    )
    registry = Registry.from_settings(settings)
    (done,) = apply_plan.fn(store, registry, [item], None)
    assert done["outcome"] == f"skipped: challenger of running experiment {exp.id} now"
    assert store.exists(f"models/{MODEL}/v2/manifest.json")
    inventory = take_inventory.fn(store, registry, [MODEL], None, False)
    assert inventory.models[MODEL].experiment == (exp.id, "v2")
    # Once it has ended, nothing holds v2 back.
    from adapters.experiments import save_experiment

    save_experiment(store, exp.with_state("stopped"), expected=exp)
    assert read_experiment(store, MODEL) is not None
    assert take_inventory.fn(store, registry, [MODEL], None, False).models[MODEL].experiment is None
    (done,) = apply_plan.fn(store, registry, [item], None)
    assert done["outcome"] == "deleted"

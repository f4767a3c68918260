"""Cleanup: inventory -> plan -> (only with ``apply``) delete, in a safe order.

A dry run by default: the plan (every resource, store and registry version, with the reason to
delete or keep it) is the run's artifact. See :mod:`tasks.cleanup` for the rules.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from adapters.endpoints import open_target
from adapters.registry import Registry
from adapters.store import store_from_settings
from core.cleanup_plan import plan_cleanup, plan_rows, scope_plan
from core.config import load_model_configs, load_platform_config
from core.settings import load_settings
from tasks.cleanup import apply_plan, report_rows, take_inventory


@flow(name="cleanup")
def cleanup(
    models: list[str] | None = None,
    apply: bool = False,
    clean_store: bool = False,
    all_models: bool = False,
    region: str | None = None,
    reason: str = "manual",
    confirmed: list[str] | None = None,
) -> dict[str, Any]:
    """Plan (and with ``apply``, carry out) the deletion of what nothing uses any more.

    Args:
        models: model names; all configured models when empty.
        apply: delete the planned items; False is a dry run that only reports the plan.
        clean_store: also delete old store versions and their MLflow versions (``--clean-s3``).
        all_models: also cover models no longer configured, and their endpoints (``--all``).
        region: AWS region to clean (default the configured one).
        reason: why this run happens; printed in the plan artifact's description.
        confirmed: with ``apply``, delete only these plan items (``kind:name``, as a person
            confirmed them from a dry run); an item planned since then is left for next time.
    """
    settings = load_settings()
    if region:
        settings = settings.model_copy(update={"aws_region": region})
    platform = load_platform_config(settings.config_dir)
    # Every configured model counts as configured, whatever ``models`` scopes: a model outside
    # the scope is not an orphan, and its endpoint is not "no longer configured".
    cfgs = load_model_configs(settings.config_dir)
    configured = [c.name for c in cfgs]
    if models and not all_models:
        load_model_configs(settings.config_dir, models)  # an unknown name is an error
    store, registry = store_from_settings(settings), Registry.from_settings(settings)
    target = open_target(settings, platform)

    # With --clean-s3, snapshots too: each dataset's widest training window among its models.
    windows: dict[str, int] = {}
    for c in cfgs if clean_store else []:
        days = c.split.holdout_days + c.split.training_days
        windows[c.dataset.name] = max(windows.get(c.dataset.name, 0), days)
    inventory = take_inventory(store, registry, configured, target, all_models, windows)
    plan = plan_cleanup(
        inventory, platform.retention, clean_store=clean_store, include_orphans=all_models
    )
    plan = scope_plan(plan, models, confirmed=None)
    mode = "applied plan" if apply else "dry run"
    report_rows("cleanup-plan", plan_rows(plan), f"{mode} ({reason})")
    if not apply:
        return {"plan": plan_rows(plan), "done": [], "applied": False}
    plan = scope_plan(plan, None, confirmed)
    done = apply_plan(store, registry, plan, target)
    report_rows("cleanup-done", done, "what cleanup deleted")
    return {"plan": plan_rows(plan), "done": done, "applied": True}

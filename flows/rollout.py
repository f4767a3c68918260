"""Roll a published version out: deploy -> smoke test -> move pointer and alias; or put it back.

Also the rollback: the same path, aimed at the previous (or a named) version.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, Failed, State

from tasks.config import load_model_configs, load_platform_config
from tasks.endpoints import RolloutFailed
from tasks.publish import PublishError, read_latest
from tasks.rollout import (
    deploy_endpoint,
    describe_endpoint,
    promote_version,
    record_failure,
    resolve_version,
    restore_endpoint,
    smoke_test,
    target_for,
)
from tasks.settings import load_settings
from tasks.training import store_of


@flow(name="rollout", flow_run_name="rollout-{model}-{version}")
def rollout(model: str, version: str | None = None, reason: str = "manual") -> State:
    """Serve ``version`` of ``model`` on its endpoint, then make it the champion.

    Args:
        model: model name from ``configs/models``.
        version: ``vN`` from the store; default the version ``latest.json`` names (a redeploy).
        reason: why (promotion, rollback, a person); recorded in the promotion history.
    """
    settings = load_settings()
    (cfg,) = load_model_configs(settings.config_dir, [model])
    target = target_for(settings, load_platform_config(settings.config_dir), cfg)
    wanted = resolve_version(settings, cfg, version)
    if target is None:
        promote_version(settings, cfg, wanted, None, reason)
        return Completed(message=f"{model} {wanted.version} promoted (no endpoint configured)")

    before = describe_endpoint(target, model)
    previous = before.version if before else None
    try:
        serving = deploy_endpoint(target, wanted)
        smoke_test(target, wanted)
    except RolloutFailed as exc:
        restored = restore_endpoint(settings, cfg, target, previous, wanted.version)
        record_failure(wanted, str(exc), restored)
        return Failed(message=f"{model} {wanted.version}: {exc}. {restored}; pointer unchanged")

    promote_version(settings, cfg, wanted, serving, reason)
    return Completed(message=f"{model} {wanted.version} serves at {serving.address}")


@flow(name="rollback", flow_run_name="rollback-{model}")
def rollback(model: str, to: str | None = None, reason: str = "rollback") -> State:
    """Put the previous champion (or ``to``) back on the endpoint, with pointer and alias.

    Args:
        model: model name.
        to: ``vN`` to return to; default the version ``latest.json`` replaced.
        reason: recorded in the promotion history.
    """
    settings = load_settings()
    latest = read_latest(store_of(settings), model)
    target_version = to or (latest or {}).get("previous")
    if not target_version:
        raise PublishError(f"{model}: no previous version to roll back to; name one with --to")
    current = (latest or {}).get("version")
    return rollout(model, target_version, reason=f"{reason} (from {current} to {target_version})")

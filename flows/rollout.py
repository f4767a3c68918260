"""Roll a published version out: deploy -> smoke test -> move pointer and alias; or put it back.

Also the rollback: the same path, aimed at the previous (or a named) version.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, Failed, State

from adapters.layout import PublishError, version_number
from adapters.pointer import read_latest
from adapters.registry import Registry
from adapters.store import Store, store_from_settings
from core.config import ModelConfig, load_model_configs, load_platform_config
from core.endpoint import EndpointTarget, RolloutFailed, VersionToServe
from core.settings import load_settings
from tasks.rollout import (
    deploy_endpoint,
    describe_endpoint,
    promote_version,
    record_failure,
    registered_version,
    resolve_version,
    restore_endpoint,
    smoke_test,
    target_for,
    version_to_restore,
)


@flow(name="rollout", flow_run_name="rollout-{model}-{version}")
def rollout(
    model: str,
    version: str | None = None,
    reason: str = "manual",
    rolled_back_from: str | None = None,
) -> State:
    """Serve ``version`` of ``model`` on its endpoint, then make it the champion.

    Args:
        model: model name from ``configs/models``.
        version: ``vN`` from the store; default the version ``latest.json`` names (a redeploy).
        reason: why (promotion, rollback, a person); recorded in the promotion history.
        rolled_back_from: set by :func:`rollback`: the version this one replaces because it
            misbehaved; recorded, so no later rollback returns to it.
    """
    settings = load_settings()
    (cfg,) = load_model_configs(settings.config_dir, [model])
    store, registry = store_from_settings(settings), Registry.from_settings(settings)
    target = target_for(settings, load_platform_config(settings.config_dir), cfg)
    wanted = resolve_version(store, cfg, version)
    # Before anything is deployed: a version MLflow does not know could never become champion.
    registered = registered_version(registry, cfg, wanted)
    extra = {"rolled_back_from": rolled_back_from} if rolled_back_from else {}
    if target is None:
        promote_version(store, registry, cfg, wanted, None, reason, registered, extra)
        return Completed(message=f"{model} {wanted.version} promoted (no endpoint configured)")

    before = describe_endpoint(target, model)
    previous = version_to_restore(store, cfg, before, wanted)
    step = "deploy"
    try:
        serving = deploy_endpoint(target, wanted)
        step = "smoke-test"
        smoke_test(target, wanted)
        step = "promote"
        promote_version(store, registry, cfg, wanted, serving, reason, registered, extra)
    except Exception as exc:
        failure = str(exc) if isinstance(exc, RolloutFailed) else f"rollout failed at {step}: {exc}"
        latest = read_latest(store, model) or {}
        if step == "promote" and latest.get("version") == wanted.version:
            # The pointer moved (the endpoint serves what it names); only the alias lags.
            return Failed(
                message=f"{model} {wanted.version} serves and latest.json names it, but the "
                f"champion alias did not move ({failure}); run `mlops rollout {model}` again"
            )
        return _put_back(store, cfg, target, wanted, previous, failure)
    return Completed(message=f"{model} {wanted.version} serves at {serving.address}")


def _put_back(
    store: Store,
    cfg: ModelConfig,
    target: EndpointTarget,
    wanted: VersionToServe,
    previous: str | None,
    failure: str,
) -> State:
    """Serve ``previous`` again after a failed rollout; the state names both outcomes."""
    try:
        restored = restore_endpoint(store, cfg, target, previous, wanted.version)
    except Exception as exc:  # the endpoint may still serve the failed version: say so
        restored = (
            f"PUTTING {previous or 'nothing'} BACK FAILED ({exc}); the endpoint may serve "
            f"{wanted.version}: check `mlops status -m {cfg.name}`"
        )
    record_failure(wanted, failure, restored)
    return Failed(message=f"{cfg.name} {wanted.version}: {failure}. {restored}; pointer unchanged")


@flow(name="rollback", flow_run_name="rollback-{model}")
def rollback(model: str, to: str | None = None, reason: str = "rollback") -> State:
    """Put the previous champion (or ``to``) back on the endpoint, with pointer and alias.

    Args:
        model: model name.
        to: ``vN`` to return to; default ``latest.json``'s ``previous``: the newest version in
            the promotion history that is not the champion and was never rolled back from.
        reason: recorded in the promotion history.
    """
    latest = read_latest(store_from_settings(load_settings()), model)
    target_version = to or (latest or {}).get("previous")
    if not target_version:
        raise PublishError(f"{model}: no previous version to roll back to; name one with --to")
    current = (latest or {}).get("version")
    # Going back to an older version marks the current one as rolled back from; going forward
    # again with --to (after a rollback) does not mark the older one.
    backwards = bool(current) and version_number(target_version) < version_number(str(current))
    state = rollout(
        model,
        target_version,
        reason=f"{reason} (from {current} to {target_version})",
        rolled_back_from=current if backwards else None,
        return_state=True,
    )
    if state.is_completed():
        return Completed(message=state.message)
    return Failed(message=state.message)

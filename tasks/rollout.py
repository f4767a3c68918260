"""Roll a published version out to its endpoint, prove it serves, then move pointer and alias.

The order is the point: ``latest.json`` and the MLflow ``champion`` alias move only after the
endpoint serves the new version and answers the smoke test. A failed deploy or smoke test puts
the previous version back (or removes an endpoint that served nothing before) and leaves the
pointer and the alias where they were.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters.endpoints import open_target
from adapters.layout import (
    MODEL_TARBALL,
    SCHEMA,
    PublishError,
    mismatch,
    version_file_key,
    version_prefix,
)
from adapters.pointer import move_latest, read_latest, recorded_manifest_sha256
from adapters.prefect_api import publish_markdown
from adapters.registry import CHAMPION, Registry
from adapters.store import Store
from adapters.versions import read_checked_manifest
from core.config import ModelConfig, PlatformConfig
from core.endpoint import EndpointTarget, RolloutFailed, Serving, VersionToServe
from core.lineage import ENDPOINT_TAG_KEYS, Lineage
from core.settings import Settings
from tasks import retry_unless_tampered

SETTLED = frozenset({"InService", "running"})
"""Endpoint statuses (SageMaker, local) in which the version reported is the one that serves."""


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # called outside a run (a notebook): print instead
        print(message)  # noqa: T201  (a notebook shows stdout, not an unconfigured logger)


def target_for(
    settings: Settings, platform: PlatformConfig, cfg: ModelConfig
) -> EndpointTarget | None:
    """The endpoint target of ``cfg``; None when rollout is off (setting or config)."""
    if not cfg.endpoint.enabled:
        return None
    return open_target(settings, platform)


@task(name="resolve-version", cache_policy=NO_CACHE)  # a missing version stays missing
def resolve_version(store: Store, cfg: ModelConfig, version: str | None) -> VersionToServe:
    """What the target needs to serve ``version`` (default: the one ``latest.json`` names).

    The manifest is read once, and its sha256 must be the one the store recorded when the
    version was promoted (``latest.json``, the promotion history), if it ever was; the MLflow
    tag recorded at publication is compared by :func:`registered_version`.

    Raises:
        IntegrityError: the manifest differs from the recorded one (the message has both hashes).
        PublishError: no such complete version, or nothing promoted yet and no version given.
    """
    if version is None:
        latest = read_latest(store, cfg.name)
        if latest is None:
            raise PublishError(f"{cfg.name}: nothing promoted yet; name a version")
        version = str(latest["version"])
    manifest, manifest_sha256 = read_checked_manifest(
        store, cfg.name, version, recorded_manifest_sha256(store, cfg.name, version)
    )
    prefix = version_prefix(cfg.name, version)
    schema = json.loads(store.get_bytes(version_file_key(cfg.name, version, SCHEMA)))
    lineage = Lineage.from_dict(manifest.get("lineage", {}))
    contents = lineage.model_contents_sha256
    if not contents:
        raise PublishError(f"{cfg.name} {version}: the manifest has no model_contents_sha256")

    return VersionToServe(
        model=cfg.name,
        version=version,
        family=cfg.family,
        version_uri=store.url(prefix),
        model_data_uri=store.url(version_file_key(cfg.name, version, MODEL_TARBALL)),
        manifest_sha256=manifest_sha256,
        contents_sha256=str(contents),
        example_request=list(schema.get("example_request", [])),
        endpoint=cfg.endpoint,
        tags=lineage.tags(ENDPOINT_TAG_KEYS),
    )


@task(name="describe-endpoint", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def describe_endpoint(target: EndpointTarget, model: str) -> Serving | None:
    """What the model's endpoint serves now (None: no endpoint)."""
    return target.describe(model)


@task(name="deploy-endpoint", cache_policy=NO_CACHE)
def deploy_endpoint(target: EndpointTarget, wanted: VersionToServe) -> Serving:
    """Create or update the endpoint to serve ``wanted``; the target waits until it does.

    No task retries: the target already retries what is safe, and a second attempt of a
    failed blue/green update would hide the first failure's reason.
    """
    _log(f"{wanted.model}: deploying {wanted.version} to the {target.kind} endpoint")
    serving = target.deploy(wanted, _log)
    if serving.version != wanted.version:
        raise RolloutFailed(
            "verify", f"endpoint reports {serving.version}, expected {wanted.version}"
        )
    return serving


@task(name="smoke-test-endpoint", retries=1, retry_delay_seconds=3, cache_policy=NO_CACHE)
def smoke_test(target: EndpointTarget, wanted: VersionToServe) -> dict[str, Any]:
    """Send the example request from ``schema.json``; check the answer's size and version.

    Raises:
        RolloutFailed: no example, an error answer, the wrong number of predictions, or
            another version answering.
    """
    records = wanted.example_request
    if not records:
        raise RolloutFailed("smoke-test", f"{wanted.model} {wanted.version}: no example request")
    answer = target.invoke(wanted.model, records)
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(records):
        raise RolloutFailed(
            "smoke-test",
            f"expected {len(records)} predictions, got {str(predictions)[:200]!r}",
        )
    answered = answer.get("version")
    if answered is not None and answered != wanted.version:
        raise RolloutFailed("smoke-test", f"{answered} answered, expected {wanted.version}")
    _log(f"{wanted.model}: smoke test passed ({len(records)} predictions from {wanted.version})")
    return answer


@task(name="restore-endpoint", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def restore_endpoint(
    store: Store,
    cfg: ModelConfig,
    target: EndpointTarget,
    previous: str | None,
    failed: str | None = None,
) -> str:
    """After a failed rollout: serve ``previous`` again, or remove an endpoint that was new.

    A deploy that fails cleans up after itself, but a version that deployed and then failed its
    smoke test served for a moment: once ``previous`` serves again, the endpoint resources of
    ``failed`` (configs, models, variants) that nothing uses are deleted, so the attempt leaves
    nothing behind.
    """
    if previous is None:
        target.remove(cfg.name, _log)
        return f"{cfg.name}: no previous version; the new endpoint was removed"
    now = target.describe(cfg.name)
    # Only a settled endpoint counts: one still Updating may yet finish on the failed version
    # (a timed-out blue/green update goes on), so deploy waits for it and puts previous back.
    if now is not None and now.version == previous and now.status in SETTLED:
        restored = f"{cfg.name}: {previous} still serves"
    else:
        target.deploy(resolve_version.fn(store, cfg, previous), _log)
        restored = f"{cfg.name}: {previous} serves again"
    if failed is None or failed == previous:
        return restored
    deleted, kept = discard_version(target, cfg.name, failed)
    if deleted:
        restored += f"; removed {failed}'s {', '.join(deleted)}"
    if kept:
        restored += f"; left behind: {'; '.join(kept)}"
    return restored


def discard_version(
    target: EndpointTarget, model: str, version: str
) -> tuple[list[str], list[str]]:
    """Delete the target's resources of ``model`` ``version`` that no endpoint uses.

    Endpoints are never touched (one serves the model); the target re-checks use before each
    delete and refuses what became used since the listing.

    Returns:
        What was deleted (``kind name``) and what was left, with why.
    """
    deleted: list[str] = []
    kept: list[str] = []
    for resource in target.resources():
        if resource.model != model or resource.version != version:
            continue
        if resource.kind == "endpoint":
            continue
        label = f"{resource.kind} {resource.name}"
        if resource.in_use:
            kept.append(f"{label} (in use)")
            continue
        try:
            target.delete(resource)
        except ValueError as exc:
            kept.append(f"{label} ({exc})")
            continue
        _log(f"{model}: deleted {label} of the failed {version}")
        deleted.append(label)
    return deleted, kept


@task(
    name="registered-version",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_tampered,
    cache_policy=NO_CACHE,
)
def registered_version(registry: Registry, cfg: ModelConfig, wanted: VersionToServe) -> str:
    """The MLflow model version registered for ``wanted`` (checked before deploying it).

    Its ``manifest_sha256`` tag, written when the version was published, must be the hash of
    the manifest the store holds now: MLflow is the record a writer of the store cannot change.

    Raises:
        IntegrityError: the store's manifest is not the one registered.
        PublishError: the store version has no registered MLflow version to alias.
    """
    found = registry.version_for_store_version(cfg.name, wanted.version)
    if found is None:
        raise PublishError(
            f"{cfg.name} {wanted.version}: no registered MLflow version; nothing was deployed"
        )
    tags: dict[str, str] = next(
        (v["tags"] for v in registry.list_versions(cfg.name) if v["version"] == found), {}
    )
    recorded = tags.get("manifest_sha256")
    if recorded != wanted.manifest_sha256:
        raise mismatch(
            cfg.name,
            wanted.version,
            wanted.manifest_sha256,
            str(recorded),
            f"MLflow ({cfg.name} version {found}'s manifest_sha256 tag)",
        )
    return found


def version_to_restore(
    store: Store, cfg: ModelConfig, before: Serving | None, wanted: VersionToServe
) -> str | None:
    """What should serve if this rollout fails: the champion ``latest.json`` names.

    The endpoint's own version only when nothing is promoted (or the rollout redeploys the
    champion itself): after a crashed run an endpoint may serve a version never promoted, and
    after a reboot a local route may be down with no version at all.
    """
    champion = (read_latest(store, cfg.name) or {}).get("version")
    if champion and champion != wanted.version:
        return str(champion)
    served = before.version if before else None
    return served if served != wanted.version else None


@task(
    name="promote-champion",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_tampered,
    cache_policy=NO_CACHE,
)
def promote_version(
    store: Store,
    registry: Registry,
    cfg: ModelConfig,
    wanted: VersionToServe,
    serving: Serving | None,
    reason: str,
    mlflow_version: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Move ``latest.json`` (appending to the promotion history) and the ``champion`` alias.

    Args:
        store: the model store whose pointer moves.
        registry: the MLflow registry whose ``champion`` alias moves.
        cfg: the model's config.
        wanted: the version the endpoint now serves.
        serving: what the endpoint reported after the rollout; None when rollout is off.
        reason: why it is promoted, recorded in the pointer and the history.
        mlflow_version: the registered version of ``wanted`` (:func:`registered_version`).
        extra: more fields for the pointer and the history record (``rolled_back_from``).

    Returns:
        The new ``latest.json`` record.
    """
    extra = {**(extra or {}), "mlflow_version": mlflow_version, "uri": wanted.version_uri}
    if serving is not None:
        extra |= {
            "endpoint": serving.endpoint_name,
            "endpoint_config": serving.config_name,
            "endpoint_address": serving.address,
        }
    latest = move_latest(
        store,
        cfg.name,
        wanted.version,
        reason=reason,
        extra=extra,
        expected_manifest_sha256=wanted.manifest_sha256,
    )
    registry.set_alias(cfg.name, CHAMPION, mlflow_version)
    publish_markdown(
        f"rollout-{cfg.name}",
        rollout_markdown(wanted, serving, "promoted", reason),
        f"Rollout of {cfg.name} {wanted.version}",
    )
    return latest


def rollout_markdown(
    wanted: VersionToServe, serving: Serving | None, verdict: str, detail: str
) -> str:
    """A short report of one rollout for the Prefect UI."""
    where = (
        f"`{serving.endpoint_name}` at `{serving.address}` (config `{serving.config_name}`)"
        if serving
        else "no endpoint (rollout disabled)"
    )
    return "\n".join(
        [
            f"# Rollout `{wanted.model}` {wanted.version}: **{verdict}**",
            "",
            f"- endpoint: {where}",
            f"- version: `{wanted.version_uri}`",
            f"- manifest sha256: `{wanted.manifest_sha256}`",
            f"- {detail}",
        ]
    )


def record_failure(wanted: VersionToServe, reason: str, restored: str) -> None:
    """Publish the failed rollout as an artifact (the run's state message repeats it)."""
    publish_markdown(
        f"rollout-{wanted.model}",
        rollout_markdown(wanted, None, "FAILED", f"{reason}. {restored}"),
        f"Failed rollout of {wanted.model} {wanted.version}",
    )

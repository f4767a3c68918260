"""The champion pointer ``latest.json`` and the append-only history of its moves.

``latest.json`` moves only to a complete version (one with a manifest), and each move first
appends a record to ``promotions/`` (a conditional create of the next sequence number), so
history is never rewritten. A rollback finds its target in that history.

The keys are :mod:`adapters.layout`'s; the versions the pointer names are
:mod:`adapters.versions`'. The Prefect tasks that move the pointer live in :mod:`tasks.rollout`.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from adapters import layout
from adapters.layout import IntegrityError, PublishError, mismatch
from adapters.store import KeyNotFound, PreconditionFailed, Store, create_once
from adapters.versions import version_manifest_sha256

# Keys of a promotion record and of latest.json that ``extra`` may not override.
_CORE_RECORD_KEYS = frozenset(
    {"model", "seq", "version", "previous", "at", "reason", "manifest_sha256", "promoted_at"}
)


def read_latest(store: Store, model: str) -> dict[str, Any] | None:
    """The content of ``latest.json``, or None when nothing was promoted yet."""
    try:
        return dict(json.loads(store.get_bytes(layout.latest_key(model))))
    except KeyNotFound:
        return None


def _promotions(store: Store, model: str) -> dict[int, dict[str, Any]]:
    """Every promotion record of ``model`` by sequence number."""
    by_seq = {}
    for key in store.list(layout.promotions_prefix(model)):
        seq = layout.promotion_seq(key)
        if seq is not None:
            by_seq[seq] = json.loads(store.get_bytes(key))
    return by_seq


def promotion_history(store: Store, model: str) -> list[dict[str, Any]]:
    """Every pointer move of ``model``, oldest first."""
    by_seq = _promotions(store, model)
    return [by_seq[seq] for seq in sorted(by_seq)]


def recorded_manifest_sha256(store: Store, model: str, version: str) -> str | None:
    """The manifest hash the store recorded when ``version`` was promoted; None if never.

    ``latest.json`` (when it names the version) and every promotion record of it must agree:
    they were all written from the manifest as it was then.

    Raises:
        IntegrityError: two records of the same version name different hashes.
    """
    recorded: dict[str, str] = {}
    latest = read_latest(store, model) or {}
    if latest.get("version") == version and latest.get("manifest_sha256"):
        recorded["latest.json"] = str(latest["manifest_sha256"])
    for record in promotion_history(store, model):
        if record.get("version") == version and record.get("manifest_sha256"):
            recorded[f"promotion record {record.get('seq')}"] = str(record["manifest_sha256"])
    hashes = sorted(set(recorded.values()))
    if len(hashes) > 1:
        raise IntegrityError(
            f"{model} {version}: the store's records disagree on its manifest sha256: "
            + ", ".join(f"{where} {sha}" for where, sha in sorted(recorded.items()))
        )
    return hashes[0] if hashes else None


def rollback_target(history: list[dict[str, Any]], current: str) -> str | None:
    """The version a rollback from ``current`` returns to, from the promotion history.

    The newest version in ``history`` that is not ``current`` and was not rolled back from
    since (a record's ``rolled_back_from``): after rolling v4 back to v3, the next rollback goes
    to v2, not to the v4 that misbehaved.
    """
    bad: set[str] = set()
    for record in history:  # promoting a version again clears it
        bad.discard(record.get("version"))
        if record.get("rolled_back_from"):
            bad.add(record["rolled_back_from"])
    for record in reversed(history):
        version = record.get("version")
        if version and version != current and version not in bad:
            return str(version)
    return None


def move_latest(
    store: Store,
    model: str,
    version: str,
    *,
    reason: str,
    extra: dict[str, Any] | None = None,
    max_attempts: int = 50,
    expected_manifest_sha256: str | None = None,
) -> dict[str, Any]:
    """Point ``latest.json`` at a complete version, recording the move first.

    Appends ``promotions/{seq:06d}.json`` (conditional create of the next free sequence number;
    a lost race retries with the next one) and then writes ``latest.json`` conditionally (S3
    ``If-Match`` on the ETag it read, a lock on a local store): a pointer that moved meanwhile
    is re-read, and only a record older than ours is overwritten. A newer promotion that got
    there first wins, and this one fails saying so, so the newest record of the history and
    ``latest.json`` always name the same version. Moving the pointer to the version (and
    manifest) it already points at changes nothing and records nothing, so a retried promotion
    is a no-op.

    Args:
        store: the model store.
        model: model name.
        version: ``v{N}``; must have a manifest.
        reason: why the pointer moves (promotion, rollback, ...), recorded in both files.
        extra: more fields for both files (for example the MLflow version); may not override
            the core fields.
        max_attempts: sequence numbers (and pointer writes) to try before giving up.
        expected_manifest_sha256: the manifest hash the caller checked (and deployed); a
            manifest rewritten since is refused rather than recorded as the champion's.

    Returns:
        The new content of ``latest.json``.

    Raises:
        IntegrityError: the manifest is no longer ``expected_manifest_sha256``.
        PublishError: the version is incomplete or missing, no record could be appended, or a
            newer promotion moved the pointer first.
        ValueError: ``extra`` overrides a core field.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & _CORE_RECORD_KEYS)
    if clash:
        raise ValueError(f"extra may not override {clash}")
    manifest_sha256 = version_manifest_sha256(store, model, version)
    if expected_manifest_sha256 is not None and manifest_sha256 != expected_manifest_sha256:
        raise mismatch(model, version, manifest_sha256, expected_manifest_sha256, "the rollout")

    current = read_latest(store, model)
    if (
        current is not None
        and current.get("version") == version
        and current.get("manifest_sha256") == manifest_sha256
    ):
        return current

    for _ in range(max_attempts):
        by_seq = _promotions(store, model)
        seq = max(by_seq, default=0) + 1
        now = layout.timestamp(datetime.now(UTC))
        moves = [*(by_seq[s] for s in sorted(by_seq)), {"version": version, **extra}]
        record = {
            "seq": seq,
            "model": model,
            "version": version,
            "previous": rollback_target(moves, version),
            "at": now,
            "reason": reason,
            "manifest_sha256": manifest_sha256,
            **extra,
            "token": uuid.uuid4().hex,
        }
        if create_once(store, layout.promotion_key(model, seq), layout.document_bytes(record)):
            break
        # Someone else moved the pointer meanwhile: the next attempt reads their record too.
    else:
        raise PublishError(f"{model}: no promotion record appended after {max_attempts} attempts")

    latest = {
        "model": model,
        "version": version,
        "manifest_sha256": manifest_sha256,
        "promoted_at": now,
        "seq": seq,
        "previous": record["previous"],
        "reason": reason,
        **extra,
    }
    _write_latest(store, model, latest, max_attempts)
    return json.loads(layout.document_bytes(latest))


def _write_latest(store: Store, model: str, latest: dict[str, Any], max_attempts: int) -> None:
    """Compare-and-swap ``latest.json``: replace only what was read, and only an older record."""
    key, body = layout.latest_key(model), layout.document_bytes(latest)
    for _ in range(max_attempts):
        try:
            raw, etag = store.get_tagged(key)
            current: dict[str, Any] | None = json.loads(raw)
        except KeyNotFound:
            current, etag = None, None
        if current is not None and int(current.get("seq") or 0) > latest["seq"]:
            raise PublishError(
                f"{model}: a concurrent promotion (record {current['seq']}, "
                f"{current.get('version')}) moved latest.json after this one (record "
                f"{latest['seq']}, {latest['version']}); latest.json names "
                f"{current.get('version')}, as the newest record does. Promote "
                f"{latest['version']} again if it should serve."
            )
        try:
            if etag is None:
                store.put_bytes(key, body, if_none_match=True)
            else:
                store.put_bytes(key, body, if_match=etag)
            return
        except PreconditionFailed:
            continue  # someone wrote between our read and our write: read again
    raise PublishError(f"{model}: latest.json kept changing; not moved after {max_attempts} tries")

"""Versions of a model in the store: claim, publish, list, read and verify, delete.

The rules that make this safe with many writers and no locks:

* A version number is taken by creating ``claim.json`` with a conditional write (S3's
  ``If-None-Match: *``); whoever loses tries the next number, so no two publishers share one.
* ``manifest.json`` is written after every file, so its presence means the version is complete.
  A publish that dies midway leaves a claimed, incomplete version that nothing points at; the
  next publish takes the next number.
* A delete takes the manifest first (the version stops being complete) and the claim last (its
  number stays taken until everything else is gone).

The keys are :mod:`adapters.layout`'s; the pointer that names the champion is
:mod:`adapters.pointer`'s. Plain functions over a :class:`adapters.store.Store`; the Prefect
tasks that wrap them live in :mod:`tasks.promotion`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters import layout
from adapters.layout import PublishError, mismatch
from adapters.store import KeyNotFound, ObjectTooLarge, Store, create_once, sha256_file

MAX_FILE_BYTES = 4 << 30
"""Largest file a version may hold (4 GiB): a bound on what any manifest can make us download,
even one rewritten to claim more. A manifest's own ``bytes`` bounds each download further."""


@dataclass(frozen=True)
class PublishedVersion:
    """Identifiers of one complete published version.

    Attributes:
        model: model name.
        version: ``v{N}``.
        number: ``N``.
        uri: store URL of the version folder (``s3://.../models/{model}/v{N}`` or a path).
        manifest: the manifest exactly as stored.
        manifest_sha256: sha256 of the stored manifest bytes.
    """

    model: str
    version: str
    number: int
    uri: str
    manifest: dict[str, Any]
    manifest_sha256: str


def _now() -> str:
    return layout.timestamp(datetime.now(UTC))


def list_versions(store: Store, model: str) -> list[dict[str, Any]]:
    """Every version folder of ``model``, complete or not, ordered by number.

    Returns:
        ``[{"version": "v1", "number": 1, "complete": True}, ...]``; ``complete`` means the
        manifest exists.
    """
    found: dict[int, bool] = {}
    for key in store.list(layout.model_prefix(model)):
        parsed = layout.parse_version_key(key)
        if parsed is None:
            continue
        _, version, name = parsed
        number = layout.version_number(version)
        found[number] = found.get(number, False) or name == layout.MANIFEST
    return [
        {"version": layout.version_name(n), "number": n, "complete": found[n]}
        for n in sorted(found)
    ]


def claim_version(
    store: Store,
    model: str,
    *,
    claimed_by: dict[str, Any] | None = None,
    max_attempts: int = 50,
) -> int:
    """Atomically take the next free version number of ``model``.

    Starts at the highest existing number plus one and creates ``claim.json`` there with a
    conditional write; a number someone else took makes it try the next one, so two concurrent
    claimers never get the same number.

    Args:
        store: the model store.
        model: model name.
        claimed_by: who is claiming (for example ``{"flow_run_id": ...}``), recorded in the claim.
        max_attempts: how many numbers to try before giving up.

    Returns:
        The claimed number ``N`` (the version is ``v{N}``).

    Raises:
        PublishError: every attempt lost.
    """
    existing = list_versions(store, model)
    number = (existing[-1]["number"] if existing else 0) + 1
    for _ in range(max_attempts):
        version = layout.version_name(number)
        claim = {
            "model": model,
            "version": version,
            "claimed_at": _now(),
            "claimed_by": dict(claimed_by or {}),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": uuid.uuid4().hex,
        }
        if create_once(store, layout.claim_key(model, version), layout.document_bytes(claim)):
            return number
        number += 1
    raise PublishError(f"{model}: no version claimed after {max_attempts} attempts")


def publish_version(
    store: Store,
    model: str,
    files: dict[str, Path],
    lineage: dict[str, Any],
    *,
    claimed_by: dict[str, Any] | None = None,
) -> PublishedVersion:
    """Publish ``files`` as the next version of ``model``.

    Claims ``v{N}``, uploads every file, then writes ``manifest.json`` with the sha256 and size
    of each file and the lineage. If anything fails before the manifest, the version stays
    incomplete: nothing can point at it and the next publish takes ``v{N+1}``.

    Args:
        store: the model store.
        model: model name.
        files: store file name (a plain name such as ``model.tar.gz``) -> local path.
        lineage: where the model came from (snapshot, config hash, runs...); must be JSON-able
            (other values are stored as strings).
        claimed_by: recorded in ``claim.json``.

    Returns:
        The identifiers of the complete version.

    Raises:
        PublishError: a bad file name, a missing file, or no version could be claimed.
    """
    if not files:
        raise PublishError("nothing to publish: no files given")
    local: dict[str, Path] = {}
    for name, path in sorted(files.items()):
        layout.check_file_name(name)
        if not Path(path).is_file():
            raise PublishError(f"{name}: {path} is not a file")
        local[name] = Path(path)
    # Hash before claiming: a bad input should not burn a version number.
    entries = {
        name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for name, path in local.items()
    }

    number = claim_version(store, model, claimed_by=claimed_by)
    version = layout.version_name(number)
    for name, path in local.items():
        store.put_file(layout.version_file_key(model, version, name), path)
    manifest = {
        "model": model,
        "version": version,
        "created_at": _now(),
        "files": entries,
        "lineage": lineage,
    }
    body = layout.document_bytes(manifest)
    if not create_once(store, layout.version_manifest_key(model, version), body):
        # Only possible if something else wrote into a version we hold the claim of.
        raise PublishError(f"{model} {version}: a different manifest already exists")
    return PublishedVersion(
        model=model,
        version=version,
        number=number,
        uri=store.url(layout.version_prefix(model, version)),
        manifest=json.loads(body),
        manifest_sha256=hashlib.sha256(body).hexdigest(),
    )


def _manifest_bytes(store: Store, model: str, version: str) -> bytes:
    key = layout.version_manifest_key(model, version)
    try:
        return store.get_bytes(key)
    except KeyNotFound as exc:
        raise PublishError(
            f"{model} {version} has no manifest: it is incomplete or does not exist"
        ) from exc


def _parse_manifest(model: str, version: str, body: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise PublishError(f"{model} {version}: manifest is not JSON: {exc}") from exc
    if (
        not isinstance(manifest, dict)
        or manifest.get("model") != model
        or manifest.get("version") != version
        or not isinstance(manifest.get("files"), dict)
    ):
        raise PublishError(f"{model} {version}: manifest does not describe this version")
    return manifest


def read_version_manifest(store: Store, model: str, version: str) -> dict[str, Any]:
    """The manifest of a complete version.

    Raises:
        PublishError: the version is incomplete or missing, or its manifest is malformed.
    """
    return _parse_manifest(model, version, _manifest_bytes(store, model, version))


def version_manifest_sha256(store: Store, model: str, version: str) -> str:
    """sha256 of the stored manifest bytes of a complete version (what a pointer records).

    Raises:
        PublishError: the version is incomplete or missing, or its manifest is malformed.
    """
    return read_checked_manifest(store, model, version)[1]


def read_checked_manifest(
    store: Store, model: str, version: str, expected_sha256: str | None = None
) -> tuple[dict[str, Any], str]:
    """The manifest of a complete version and the sha256 of its bytes, from one read.

    One read matters: a manifest read twice (once parsed, once hashed) could be rewritten in
    between, pairing one manifest's content with another's hash.

    Args:
        store: the model store.
        model: model name.
        version: ``vN``.
        expected_sha256: the hash recorded when the version was published or promoted (MLflow
            tag, ``latest.json``, the promotion history); a different manifest is refused.

    Raises:
        IntegrityError: the manifest's sha256 is not ``expected_sha256``.
        PublishError: the version is incomplete or missing, or its manifest is malformed.
    """
    body = _manifest_bytes(store, model, version)
    digest = hashlib.sha256(body).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise mismatch(model, version, digest, expected_sha256, "its publication")
    return _parse_manifest(model, version, body), digest


def _file_size(model: str, version: str, name: str, meta: Any, max_file_bytes: int) -> int:
    size = meta.get("bytes") if isinstance(meta, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise PublishError(f"{model} {version}: manifest entry for {name} is malformed")
    if size > max_file_bytes:
        raise PublishError(
            f"{model} {version}: {name} is listed at {size} bytes, over the "
            f"{max_file_bytes}-byte limit of a model file"
        )
    return size


def verify_version(
    store: Store,
    model: str,
    version: str,
    dest: Path,
    *,
    expected_manifest_sha256: str | None = None,
    max_file_bytes: int | None = None,
) -> dict[str, Any]:
    """Download every file of a version into ``dest`` and check it against the manifest.

    Each file is downloaded under a temporary name and renamed only once its sha256 and size
    match, so ``dest`` never holds an unverified file under a published name. No download reads
    past the size the manifest lists: a larger object is refused from its size alone.

    Args:
        store: the model store.
        model: model name.
        version: ``vN``.
        dest: local directory the files land in.
        expected_manifest_sha256: the manifest hash recorded at publication or promotion; a
            rewritten manifest is refused before any file is downloaded.
        max_file_bytes: refuse a manifest that lists a larger file (default
            :data:`MAX_FILE_BYTES`).

    Returns:
        The manifest.

    Raises:
        IntegrityError: the manifest is not the one recorded.
        PublishError: the version is incomplete, a file is missing, too large, or its sha256 or
            size differs from the manifest (the message names the file).
    """
    manifest, _ = read_checked_manifest(store, model, version, expected_manifest_sha256)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, meta in sorted(manifest["files"].items()):
        # The manifest comes from the store: a name with a path in it must not escape dest.
        layout.check_file_name(name)
        limit = MAX_FILE_BYTES if max_file_bytes is None else max_file_bytes
        size_listed = _file_size(model, version, name, meta, limit)
        final = dest / name
        final.parent.mkdir(parents=True, exist_ok=True)  # model/ of an unpacked model
        part = final.with_name(f".{final.name}.part")
        try:
            store.get_file(
                layout.version_file_key(model, version, name), part, max_bytes=size_listed
            )
        except KeyNotFound as exc:
            raise PublishError(f"{model} {version}: {name} is missing from the store") from exc
        except ObjectTooLarge as exc:
            part.unlink(missing_ok=True)
            raise PublishError(
                f"{model} {version}: {name} does not match the manifest ({exc})"
            ) from exc
        digest, size = sha256_file(part), part.stat().st_size
        if digest != meta.get("sha256") or size != meta.get("bytes"):
            part.unlink(missing_ok=True)
            raise PublishError(
                f"{model} {version}: {name} does not match the manifest "
                f"(sha256 {digest}, {size} bytes; expected {meta.get('sha256')}, "
                f"{meta.get('bytes')} bytes)"
            )
        os.replace(part, final)
    return manifest


def delete_version(store: Store, model: str, version: str) -> list[str]:
    """Delete every file of a version, complete or not; return the keys deleted, in order.

    The manifest goes first, so the version stops being complete (nothing can point at it)
    before any file of it is gone; the claim goes last, so its number stays taken until
    everything else is gone and no publisher reuses it meanwhile. Whether the version may be
    deleted (champion, rollback target, served, aliased) is the caller's question.
    """
    keys = store.list(f"{layout.version_prefix(model, version)}/")
    first = [k for k in keys if k.endswith(f"/{layout.MANIFEST}")]
    last = [k for k in keys if k.endswith(f"/{layout.CLAIM}")]
    ordered = first + [k for k in keys if k not in first and k not in last] + last
    for key in ordered:
        store.delete(key)
    return ordered

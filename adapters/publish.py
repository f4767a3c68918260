"""Versioned publishing of models into the store, and the ``latest.json`` pointer.

Layout, relative to the store root::

    models/{model}/v{N}/claim.json              conditional create: who claimed vN, and when
    models/{model}/v{N}/model.tar.gz, ...       the published files
    models/{model}/v{N}/manifest.json           written last: sha256 and size of every file, lineage
    models/{model}/latest.json                  the champion pointer, moved only on promotion
    models/{model}/promotions/{seq:06d}.json    append-only history of pointer moves

The rules that make this safe with many writers and no locks:

* A version number is taken by creating ``claim.json`` with a conditional write (S3's
  ``If-None-Match: *``); whoever loses tries the next number, so no two publishers share one.
* ``manifest.json`` is written after every file, so its presence means the version is complete.
  A publish that dies midway leaves a claimed, incomplete version that nothing points at; the
  next publish takes the next number.
* ``latest.json`` moves only to a complete version, and each move first appends a record to
  ``promotions/`` (conditional create of the next sequence number), so history is never rewritten.

Plain functions over a :class:`adapters.store.Store`; the Prefect tasks that wrap them live in
:mod:`tasks.promotion`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import socket
import stat
import tarfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from adapters.store import KeyNotFound, PreconditionFailed, Store, sha256_file

MODELS = "models"
CLAIM = "claim.json"
MANIFEST = "manifest.json"
LATEST = "latest.json"
PROMOTIONS = "promotions"
RESERVED_FILES = frozenset({CLAIM, MANIFEST})

_VERSION = re.compile(r"^v([1-9][0-9]*)$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SEQ_FILE = re.compile(r"^([0-9]{6,})\.json$")
# Keys of a promotion record and of latest.json that ``extra`` may not override.
_CORE_RECORD_KEYS = frozenset(
    {"model", "seq", "version", "previous", "at", "reason", "manifest_sha256", "promoted_at"}
)


class PublishError(RuntimeError):
    """A version cannot be published, read, verified or promoted as asked."""


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


def version_number(version: str) -> int:
    """The number of a version name: ``"v12"`` -> ``12``.

    Raises:
        ValueError: not ``v`` followed by a positive integer without leading zeros.
    """
    match = _VERSION.match(version) if isinstance(version, str) else None
    if not match:
        raise ValueError(f"not a version name: {version!r} (expected v1, v2, ...)")
    return int(match[1])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _model_prefix(model: str) -> str:
    if not isinstance(model, str) or not _MODEL.match(model):
        raise PublishError(f"invalid model name {model!r}")
    return f"{MODELS}/{model}"


def _version_prefix(model: str, version: str) -> str:
    version_number(version)
    return f"{_model_prefix(model)}/{version}"


def _dumps(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()


UNPACKED = "model"
"""Folder of a version holding the unpacked model files (``endpoint.model_data: uncompressed``)."""


def _check_file_name(name: str) -> None:
    plain = name
    unpacked = isinstance(name, str) and name.startswith(f"{UNPACKED}/")
    if unpacked:
        plain = name[len(UNPACKED) + 1 :]  # one folder level: model/<plain name>
    if (
        not isinstance(plain, str)
        or not plain
        or "/" in plain
        or "\\" in plain
        or plain.startswith(".")
        or (plain in RESERVED_FILES and not unpacked)
    ):
        raise PublishError(
            f"invalid file name {name!r}: plain names only (no '/' but one "
            f"'{UNPACKED}/' folder, no leading '.'), "
            f"and {sorted(RESERVED_FILES)} are reserved"
        )


def _create_once(store: Store, key: str, body: bytes) -> bool:
    """Conditionally create ``key``; True if created, or if it already holds exactly ``body``.

    The second case covers a client retry of a write whose first attempt did succeed (its
    response was lost): the retry sees 412, yet the object is ours. Callers put a unique token
    in ``body`` so that someone else's object never compares equal.
    """
    try:
        store.put_bytes(key, body, if_none_match=True)
        return True
    except PreconditionFailed:
        try:
            return store.get_bytes(key) == body
        except KeyNotFound:
            return False


def list_versions(store: Store, model: str) -> list[dict[str, Any]]:
    """Every version folder of ``model``, complete or not, ordered by number.

    Returns:
        ``[{"version": "v1", "number": 1, "complete": True}, ...]``; ``complete`` means the
        manifest exists.
    """
    prefix = _model_prefix(model)
    found: dict[int, bool] = {}
    for key in store.list(prefix):
        parts = key[len(prefix) + 1 :].split("/")
        if len(parts) < 2:
            continue
        match = _VERSION.match(parts[0])
        if not match:
            continue
        number = int(match[1])
        found[number] = found.get(number, False) or (len(parts) == 2 and parts[1] == MANIFEST)
    return [{"version": f"v{n}", "number": n, "complete": found[n]} for n in sorted(found)]


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
    prefix = _model_prefix(model)
    existing = list_versions(store, model)
    number = (existing[-1]["number"] if existing else 0) + 1
    for _ in range(max_attempts):
        claim = {
            "model": model,
            "version": f"v{number}",
            "claimed_at": _now(),
            "claimed_by": dict(claimed_by or {}),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": uuid.uuid4().hex,
        }
        if _create_once(store, f"{prefix}/v{number}/{CLAIM}", _dumps(claim)):
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
        _check_file_name(name)
        if not Path(path).is_file():
            raise PublishError(f"{name}: {path} is not a file")
        local[name] = Path(path)
    # Hash before claiming: a bad input should not burn a version number.
    entries = {
        name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for name, path in local.items()
    }

    number = claim_version(store, model, claimed_by=claimed_by)
    version = f"v{number}"
    prefix = _version_prefix(model, version)
    for name, path in local.items():
        store.put_file(f"{prefix}/{name}", path)
    manifest = {
        "model": model,
        "version": version,
        "created_at": _now(),
        "files": entries,
        "lineage": lineage,
    }
    body = _dumps(manifest)
    if not _create_once(store, f"{prefix}/{MANIFEST}", body):
        # Only possible if something else wrote into a version we hold the claim of.
        raise PublishError(f"{model} {version}: a different manifest already exists")
    return PublishedVersion(
        model=model,
        version=version,
        number=number,
        uri=store.url(prefix),
        manifest=json.loads(body),
        manifest_sha256=hashlib.sha256(body).hexdigest(),
    )


def _manifest_bytes(store: Store, model: str, version: str) -> bytes:
    prefix = _version_prefix(model, version)
    try:
        return store.get_bytes(f"{prefix}/{MANIFEST}")
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


def read_manifest(store: Store, model: str, version: str) -> dict[str, Any]:
    """The manifest of a complete version.

    Raises:
        PublishError: the version is incomplete or missing, or its manifest is malformed.
    """
    return _parse_manifest(model, version, _manifest_bytes(store, model, version))


def verify_version(store: Store, model: str, version: str, dest: Path) -> dict[str, Any]:
    """Download every file of a version into ``dest`` and check it against the manifest.

    Each file is downloaded under a temporary name and renamed only once its sha256 and size
    match, so ``dest`` never holds an unverified file under a published name.

    Returns:
        The manifest.

    Raises:
        PublishError: the version is incomplete, a file is missing, or a file's sha256 or size
            differs from the manifest (the message names the file).
    """
    manifest = read_manifest(store, model, version)
    prefix = _version_prefix(model, version)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, meta in sorted(manifest["files"].items()):
        # The manifest comes from the store: a name with a path in it must not escape dest.
        _check_file_name(name)
        if not isinstance(meta, dict):
            raise PublishError(f"{model} {version}: manifest entry for {name} is malformed")
        final = dest / name
        final.parent.mkdir(parents=True, exist_ok=True)  # model/ of an unpacked model
        part = final.with_name(f".{final.name}.part")
        try:
            store.get_file(f"{prefix}/{name}", part)
        except KeyNotFound as exc:
            raise PublishError(f"{model} {version}: {name} is missing from the store") from exc
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


def read_latest(store: Store, model: str) -> dict[str, Any] | None:
    """The content of ``latest.json``, or None when nothing was promoted yet."""
    try:
        return dict(json.loads(store.get_bytes(f"{_model_prefix(model)}/{LATEST}")))
    except KeyNotFound:
        return None


def _promotions(store: Store, model: str) -> dict[int, dict[str, Any]]:
    """Every promotion record of ``model`` by sequence number."""
    prefix = f"{_model_prefix(model)}/{PROMOTIONS}"
    by_seq = {}
    for key in store.list(prefix):
        match = _SEQ_FILE.match(key.rsplit("/", 1)[-1])
        if match:
            by_seq[int(match[1])] = json.loads(store.get_bytes(key))
    return by_seq


def promotion_history(store: Store, model: str) -> list[dict[str, Any]]:
    """Every pointer move of ``model``, oldest first."""
    by_seq = _promotions(store, model)
    return [by_seq[seq] for seq in sorted(by_seq)]


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
) -> dict[str, Any]:
    """Point ``latest.json`` at a complete version, recording the move first.

    Appends ``promotions/{seq:06d}.json`` (conditional create of the next free sequence number;
    a lost race retries with the next one) and then writes ``latest.json``. Moving the pointer to
    the version (and manifest) it already points at changes nothing and records nothing, so a
    retried promotion is a no-op.

    Args:
        store: the model store.
        model: model name.
        version: ``v{N}``; must have a manifest.
        reason: why the pointer moves (promotion, rollback, ...), recorded in both files.
        extra: more fields for both files (for example the MLflow version); may not override
            the core fields.
        max_attempts: sequence numbers to try before giving up.

    Returns:
        The new content of ``latest.json``.

    Raises:
        PublishError: the version is incomplete or missing, or no record could be appended.
        ValueError: ``extra`` overrides a core field.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & _CORE_RECORD_KEYS)
    if clash:
        raise ValueError(f"extra may not override {clash}")
    body = _manifest_bytes(store, model, version)
    _parse_manifest(model, version, body)
    manifest_sha256 = hashlib.sha256(body).hexdigest()

    prefix = _model_prefix(model)
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
        now = _now()
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
        if _create_once(store, f"{prefix}/{PROMOTIONS}/{seq:06d}.json", _dumps(record)):
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
    store.put_bytes(f"{prefix}/{LATEST}", _dumps(latest))
    return json.loads(_dumps(latest))


# --- the model tarball -----------------------------------------------------------------------

_TAR_FORMAT = tarfile.PAX_FORMAT
_GZIP_LEVEL = 6


def _tar_entries(src_dir: Path, skip: Path | None) -> list[tuple[Path, str]]:
    entries: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(src_dir, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            if skip is not None and path.absolute() == skip:
                continue
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise PublishError(f"{path}: only regular files and directories can be packed")
            entries.append((path, path.relative_to(src_dir).as_posix()))
    return sorted(entries, key=lambda e: e[1])


def make_tarball(src_dir: Path, dest: Path) -> Path:
    """Pack the contents of ``src_dir`` into a deterministic ``.tar.gz`` at ``dest``.

    Files sit at the archive root (SageMaker extracts ``model.tar.gz`` into ``/opt/ml/model``).
    Entries are sorted, with mtime 0, uid/gid 0, no owner names, modes normalised to 0644/0755,
    and the gzip header carries no timestamp or file name: the same directory gives the same
    bytes, hence the same sha256, on every run.

    Raises:
        PublishError: ``src_dir`` is not a directory or holds a link or a special file.
    """
    src_dir = Path(src_dir)
    dest = Path(dest)
    if not src_dir.is_dir():
        raise PublishError(f"{src_dir} is not a directory")
    entries = _tar_entries(src_dir, dest.absolute())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        with (
            tmp.open("wb") as raw,
            gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0
            ) as gz,
            tarfile.open(fileobj=gz, mode="w", format=_TAR_FORMAT) as tar,
        ):
            for path, arcname in entries:
                info = tarfile.TarInfo(arcname)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                st = path.lstat()
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                else:
                    info.size = st.st_size
                    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                    with path.open("rb") as fh:
                        tar.addfile(info, fh)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def extract_tarball(path: Path, dest: Path) -> Path:
    """Unpack a model tarball into ``dest``, treating it as untrusted input.

    Every member is checked before anything is written: absolute names, ``..`` parts, links
    (symbolic or hard) and device or FIFO entries are refused, so a bad archive writes nothing.

    Returns:
        ``dest``.

    Raises:
        PublishError: the archive holds a refused member or cannot be read.
    """
    dest = Path(dest)
    try:
        with tarfile.open(path, mode="r:*") as tar:
            members = tar.getmembers()
            for member in members:
                name = member.name
                parts = PurePosixPath(name).parts
                if not name or name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute():
                    raise PublishError(f"{path}: absolute member name {name!r}")
                if ".." in parts or "\\" in name:
                    raise PublishError(f"{path}: member {name!r} escapes the destination")
                if not (member.isreg() or member.isdir()):
                    raise PublishError(f"{path}: member {name!r} is a link or special file")
            dest.mkdir(parents=True, exist_ok=True)
            # The "data" filter re-checks paths and strips modes the archive should not set.
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PublishError(f"{path}: cannot unpack: {exc}") from exc
    return dest


# --- what is inside the tarball ---------------------------------------------------------------

CONTENTS = "contents.json"
"""Written into the model directory before packing: the sha256 of every file inside
``model.tar.gz``. SageMaker mounts only the unpacked archive at ``/opt/ml/model``, so the serving
app checks this file against ``model_contents_sha256`` from the version's manifest (passed to
the container in its environment) and then every file against this file, before loading a byte
of the model (a skops or JSON model file is still input that deserves a check)."""


def write_contents(model_dir: Path, model: str, family: str) -> str:
    """Write ``contents.json`` (file -> sha256) into ``model_dir``; return the sha256 of it.

    Raises:
        PublishError: ``model_dir`` holds a link or a special file.
    """
    model_dir = Path(model_dir)
    target = model_dir / CONTENTS
    files = {
        rel: sha256_file(path)
        for path, rel in _tar_entries(model_dir, target.absolute())
        if path.is_file()
    }
    body = _dumps({"model": model, "family": family, "files": files})
    target.write_bytes(body)
    return hashlib.sha256(body).hexdigest()


def verify_contents(model_dir: Path, expected_sha256: str) -> dict[str, Any]:
    """Check ``contents.json`` against ``expected_sha256`` and every listed file against it.

    Files in ``model_dir`` that ``contents.json`` does not list are refused too: nothing
    unchecked is ever next to the model.

    Returns:
        The parsed ``contents.json``.

    Raises:
        PublishError: a missing, extra or changed file, or a ``contents.json`` that does not
            match ``expected_sha256``.
    """
    model_dir = Path(model_dir)
    path = model_dir / CONTENTS
    if not path.is_file():
        raise PublishError(f"{model_dir}: no {CONTENTS}; not a published model directory")
    body = path.read_bytes()
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected_sha256:
        raise PublishError(
            f"{path}: sha256 {actual} does not match the manifest's {expected_sha256}"
        )
    contents = json.loads(body)
    listed: dict[str, str] = contents.get("files", {})
    present = {rel for p, rel in _tar_entries(model_dir, path.absolute()) if p.is_file()}
    extra = sorted(present - set(listed))
    missing = sorted(set(listed) - present)
    if extra or missing:
        raise PublishError(f"{model_dir}: unlisted files {extra}, missing files {missing}")
    for rel, digest in sorted(listed.items()):
        got = sha256_file(model_dir / rel)
        if got != digest:
            raise PublishError(f"{model_dir / rel}: sha256 {got} does not match {digest}")
    return dict(contents)

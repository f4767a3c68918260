"""The model package: the deterministic ``model.tar.gz`` and the ``contents.json`` inside it.

This is all the serving container needs of the store side (it checks the unpacked model before
loading a byte of it), so it imports no cloud, orchestration or tracking library: only
:mod:`adapters.layout` (the error and the document encoding) and :mod:`adapters.store`'s
``sha256_file``. ``docker/serving.Dockerfile`` copies exactly these modules.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import tarfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from adapters.layout import PublishError, document_bytes
from adapters.store import sha256_file

# --- the model tarball -----------------------------------------------------------------------

_TAR_FORMAT = tarfile.PAX_FORMAT
_GZIP_LEVEL = 6

MAX_MEMBERS = 10_000
"""Most entries a model tarball may hold (the largest family writes a few dozen)."""
MAX_UNPACKED_BYTES = 4 << 30
"""Most bytes a model tarball may unpack to (4 GiB), whatever its compressed size."""


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


def _bounded_members(
    tar: tarfile.TarFile, path: Path, max_members: int, max_bytes: int
) -> list[tarfile.TarInfo]:
    """Read member headers one by one, stopping as soon as a limit is passed.

    ``getmembers()`` would read every header of a 100k-member archive first; stopping at the
    first header over a limit bounds the work (decompression included) by the limits.
    """
    members: list[tarfile.TarInfo] = []
    total = 0
    while (member := tar.next()) is not None:
        members.append(member)
        total += max(member.size, 0)
        if len(members) > max_members:
            raise PublishError(f"{path}: more than {max_members} members; refusing to unpack")
        if total > max_bytes:
            raise PublishError(
                f"{path}: members add up to more than {max_bytes} bytes; refusing to unpack"
            )
    return members


def extract_tarball(
    path: Path,
    dest: Path,
    *,
    max_members: int | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Unpack a model tarball into ``dest``, treating it as untrusted input.

    Every member is checked before anything is written: absolute names, ``..`` parts, links
    (symbolic or hard) and device or FIFO entries are refused, and so is an archive with more
    than ``max_members`` entries or whose entries add up to more than ``max_bytes`` (a
    decompression bomb), so a bad archive writes nothing. The limits default to
    :data:`MAX_MEMBERS` and :data:`MAX_UNPACKED_BYTES`.

    Returns:
        ``dest``.

    Raises:
        PublishError: the archive holds a refused member, passes a limit, or cannot be read.
    """
    dest = Path(dest)
    try:
        with tarfile.open(path, mode="r:*") as tar:
            members = _bounded_members(
                tar,
                Path(path),
                MAX_MEMBERS if max_members is None else max_members,
                MAX_UNPACKED_BYTES if max_bytes is None else max_bytes,
            )
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
    body = document_bytes({"model": model, "family": family, "files": files})
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

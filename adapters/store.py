"""The model and snapshot store: a local directory or S3, with one key layout.

Keys are ``/``-separated paths relative to the store root, for example
``models/abuse_detector/v3/manifest.json``. Both backends offer the same small interface,
including a conditional create (``if_none_match=True``, S3's ``If-None-Match: *``) that fails
with :class:`PreconditionFailed` when the key exists, which is what makes version claims atomic.

Two constructors, both called when a store is needed, never at import time:

* :func:`store_from_settings`: the pipeline's store, as :class:`core.settings.Settings` name it
  (URI, KMS key, AWS endpoint, profile and region). Flows and tasks use this one.
* :func:`store_from_uri`: a store from its URI alone (``s3://bucket/prefix`` or a local path)
  plus optional AWS details, for code that holds no settings (a local endpoint process, a test).

What the keys are (``models/...``, ``snapshots/...``) is :mod:`adapters.layout`'s business.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from core.settings import Settings

# The errors live in a module of their own, which adapters.bucket imports without this one.
from adapters.store_errors import (
    KeyNotFound,
    ObjectTooLarge,
    PreconditionFailed,
    StoreError,
)

CHUNK = 1 << 20
CONFLICT_RETRIES = 5


def _too_large(url: str, size: int, max_bytes: int) -> ObjectTooLarge:
    return ObjectTooLarge(f"{url} holds {size} bytes, more than the {max_bytes} allowed")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class Store(Protocol):
    """What the pipeline needs from a store."""

    uri: str

    def url(self, key: str) -> str:
        """Full URI of ``key`` (``s3://bucket/prefix/key`` or an absolute path)."""
        ...

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> None:
        """Write ``data`` at ``key`` atomically.

        With ``if_none_match`` only if the key is new; with ``if_match`` only if the key still
        has that entity tag (from :meth:`get_tagged`). A lost condition raises
        :class:`PreconditionFailed`.
        """
        ...

    def put_file(self, key: str, path: Path, *, if_none_match: bool = False) -> None:
        """Upload a local file to ``key`` atomically."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read ``key``; raises :class:`KeyNotFound`."""
        ...

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        """Read ``key`` and its entity tag (for a later ``put_bytes(if_match=...)``)."""
        ...

    def get_file(self, key: str, dest: Path, *, max_bytes: int | None = None) -> Path:
        """Download ``key`` to ``dest``; raises :class:`KeyNotFound`.

        With ``max_bytes``, an object larger than that is refused with
        :class:`ObjectTooLarge` before its body is read, and reading stops at the limit if the
        object grows meanwhile.
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""
        ...

    def mark_superseded(self, key: str) -> str:
        """Hand ``key`` to the store's expiry: ``tagged`` (S3) or ``deleted`` (a directory)."""
        ...


def create_once(store: Store, key: str, body: bytes) -> bool:
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


def _etag_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _copy_limited(src: Any, dest: Any, url: str, max_bytes: int | None) -> None:
    """Copy in chunks; past ``max_bytes`` stop and raise (the object grew after its size check)."""
    copied = 0
    for block in iter(lambda: src.read(CHUNK), b""):
        copied += len(block)
        if max_bytes is not None and copied > max_bytes:
            raise _too_large(url, copied, max_bytes)
        dest.write(block)


def _clean(key: str) -> str:
    cleaned = key.strip("/")
    # Parts starting with "." are refused: the local store keeps its temporary files under such
    # names and hides them from list(), so allowing them would make the two backends disagree.
    if not cleaned or any(
        part in ("", ".", "..") or part.startswith(".") for part in cleaned.split("/")
    ):
        raise StoreError(f"invalid store key {key!r}")
    return cleaned


def _fsync_dir(path: Path) -> None:
    # Makes a rename or link durable: without it a crash can forget the new directory entry.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalStore:
    """A directory with the S3 key layout; writes go through a temp file and a rename."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _clean(key)

    def url(self, key: str) -> str:
        """The absolute path of ``key`` under the root."""
        return str(self._path(key))

    def _open_temp(self, dest: Path) -> tuple[int, str]:
        # A concurrent delete() may remove the freshly made, still empty parent: make it again.
        for attempt in range(5):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = str(dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp")
            try:
                # 0o666 and the umask, like any other file (mkstemp would force 0o600).
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
            except FileNotFoundError:
                if attempt == 4:
                    raise
                time.sleep(0.01)
        raise AssertionError("unreachable")

    def _write(
        self, key: str, writer: Any, if_none_match: bool, if_match: str | None = None
    ) -> None:
        dest = self._path(key)
        if if_match is not None:
            # Compare-and-swap under an exclusive lock on a hidden file beside the key: a
            # directory has no ETag, so the lock is what makes the check and the rename one step.
            dest.parent.mkdir(parents=True, exist_ok=True)
            lock = dest.parent / f".{dest.name}.lock"
            with lock.open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    current = _etag_of(dest.read_bytes()) if dest.is_file() else None
                    if current != if_match:
                        raise PreconditionFailed(f"{key} changed since it was read")
                    self._write(key, writer, False)
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
            return
        fd, tmp = self._open_temp(dest)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                os.fsync(fh.fileno())
            if if_none_match:
                # link() fails if dest exists: an atomic create-if-absent, like If-None-Match.
                try:
                    os.link(tmp, dest)
                except FileExistsError as exc:
                    raise PreconditionFailed(f"{key} already exists") from exc
            else:
                os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> None:
        """Write ``data`` through a temp file; ``if_none_match`` links instead of renaming.

        ``if_match`` compares the key's current content tag under a lock first.
        """
        self._write(key, lambda fh: fh.write(data), if_none_match, if_match)

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        """Read ``key`` and a tag of its content (sha256, as the lock compares it)."""
        data = self.get_bytes(key)
        return data, _etag_of(data)

    def put_file(self, key: str, path: Path, *, if_none_match: bool = False) -> None:
        """Copy the file at ``path`` in, as :meth:`put_bytes` writes (temp file, then rename)."""

        def copy(fh: Any) -> None:
            with Path(path).open("rb") as src:
                shutil.copyfileobj(src, fh, CHUNK)

        self._write(key, copy, if_none_match)

    def get_bytes(self, key: str) -> bytes:
        """Read ``key``; a directory counts as missing, as a prefix does on S3."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            # A "directory" is a prefix, not a key: missing, as on S3.
            raise KeyNotFound(key) from exc

    def get_file(self, key: str, dest: Path, *, max_bytes: int | None = None) -> Path:
        """Copy ``key`` to ``dest`` (parents created); raises :class:`KeyNotFound`.

        ``max_bytes``: refuse a larger file (stat first), and stop copying at the limit.
        """
        src = self._path(key)
        if not src.is_file():
            raise KeyNotFound(key)
        size = src.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise _too_large(self.url(key), size, max_bytes)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with src.open("rb") as fh_in, dest.open("wb") as fh_out:
            _copy_limited(fh_in, fh_out, self.url(key), max_bytes)
        return dest

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a file (a directory is only a prefix)."""
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        """Every file under ``prefix``, sorted, without the hidden temp files of writes."""
        base = self._path(prefix) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        keys = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        ]
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Remove ``key`` and the directories it leaves empty; a missing key is no error."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Drop directories the delete left empty, up to the root.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:  # not empty (perhaps a concurrent write), or already gone
                break
            parent = parent.parent

    def mark_superseded(self, key: str) -> str:
        """Delete ``key`` now: a directory has no lifecycle rules to expire it later."""
        self.delete(key)
        return "deleted"


class S3Store:
    """S3 (or anything speaking its API, such as moto server) under ``s3://bucket/prefix``.

    Every write asks for server-side encryption: SSE-KMS with ``kms_key_id`` when given,
    SSE-S3 (AES256) otherwise. The first write checks once that the bucket is set up
    (:func:`adapters.bucket.require_ready`: "run ``mlops store setup``" otherwise); reads do
    not, so ``mlops status`` and cleanup's plan still answer on a bucket not set up.
    """

    def __init__(
        self,
        uri: str,
        *,
        kms_key_id: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if not uri.startswith("s3://"):
            raise StoreError(f"not an s3:// URI: {uri!r}")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise StoreError(f"no bucket in {uri!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.kms_key_id = kms_key_id
        if client is None:
            from adapters.aws import aws_clients

            # The profile and region SageMaker uses too (settings), so both act as one account.
            client = aws_clients(
                ["s3"], profile=profile, region=region, endpoint_url=endpoint_url, max_attempts=6
            )["s3"]
        self.client = client
        self._ready = False

    def _check_ready(self) -> None:
        if not self._ready:
            from adapters.bucket import require_ready

            require_ready(self.client, self.bucket, self.uri)
            self._ready = True

    def _key(self, key: str) -> str:
        key = _clean(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        """``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self._key(key)}"

    def _sse(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> None:
        """One encrypted PUT; a 409 conflict on a conditional write is retried with backoff.

        ``if_none_match`` sends ``If-None-Match: *``; ``if_match`` sends ``If-Match`` with the
        ETag from :meth:`get_tagged` (S3's compare-and-swap).
        """
        self._check_ready()
        extra: dict[str, Any] = dict(self._sse())
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)
                return
            except Exception as exc:
                code = self._code(exc)
                if code in ("PreconditionFailed", "412"):
                    raise PreconditionFailed(
                        f"{self.url(key)} "
                        + ("changed since it was read" if if_match else "already exists")
                    ) from exc
                if code in ("NoSuchKey", "404") and if_match is not None:
                    raise PreconditionFailed(
                        f"{self.url(key)} was deleted since it was read"
                    ) from exc
                # 409: a concurrent conditional write to the same key was in flight. S3 asks
                # for a retry, whose answer (created, or 412) settles who won.
                conditional = if_none_match or if_match is not None
                if code in ("ConditionalRequestConflict", "409") and conditional:
                    if attempt < CONFLICT_RETRIES:
                        time.sleep(0.05 * 2**attempt)
                        continue
                    raise PreconditionFailed(f"{self.url(key)}: write conflict persisted") from exc
                raise

    def put_file(self, key: str, path: Path, *, if_none_match: bool = False) -> None:
        """Upload the file (multipart when large); a conditional write is one PUT instead."""
        self._check_ready()
        if if_none_match:
            # Conditional writes need a single PUT; claims and pointers are small anyway.
            self.put_bytes(key, Path(path).read_bytes(), if_none_match=True)
            return
        self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs=self._sse())

    def get_bytes(self, key: str) -> bytes:
        """GET ``key``; raises :class:`KeyNotFound` on ``NoSuchKey``."""
        return self.get_tagged(key)[0]

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        """GET ``key`` with its ETag; raises :class:`KeyNotFound` on ``NoSuchKey``."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                raise KeyNotFound(self.url(key)) from exc
            raise
        return bytes(response["Body"].read()), str(response["ETag"])

    def get_file(self, key: str, dest: Path, *, max_bytes: int | None = None) -> Path:
        """Download ``key`` to ``dest`` (parents created); raises :class:`KeyNotFound`.

        Without a limit, boto3's managed (parallel, ranged) download. With ``max_bytes``, one
        GET whose ``Content-Length`` is compared before the body is read, then streamed with the
        limit enforced (so a swapped 1 GiB object costs one header, not a gigabyte).
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if max_bytes is None:
                self.client.download_file(self.bucket, self._key(key), str(dest))
                return dest
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                raise KeyNotFound(self.url(key)) from exc
            raise
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if size > max_bytes:
                raise _too_large(self.url(key), size, max_bytes)
            with dest.open("wb") as fh:
                _copy_limited(body, fh, self.url(key), max_bytes)
        finally:
            body.close()
        return dest

    def exists(self, key: str) -> bool:
        """HEAD ``key``: False on 404, any other error raised."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, relative to the store's prefix, sorted (all pages)."""
        if prefix.strip("/"):
            full = self._key(prefix) + "/"
        else:
            full = f"{self.prefix}/" if self.prefix else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        """DELETE ``key``; S3 answers success for a missing key too."""
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def mark_superseded(self, key: str) -> str:
        """Tag ``key`` superseded; the bucket's lifecycle rule expires it (mlops store setup)."""
        from core.bucket_plan import SUPERSEDED_TAG

        tag = {"Key": SUPERSEDED_TAG[0], "Value": SUPERSEDED_TAG[1]}
        self.client.put_object_tagging(
            Bucket=self.bucket, Key=self._key(key), Tagging={"TagSet": [tag]}
        )
        return "tagged"


def store_from_uri(
    uri: str,
    *,
    kms_key_id: str | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
) -> LocalStore | S3Store:
    """The store at ``uri``: :class:`S3Store` for ``s3://bucket/prefix``, else :class:`LocalStore`.

    Args:
        uri: ``s3://bucket/prefix`` or a local directory (created on the first write).
        kms_key_id: S3 only: the KMS key every write is encrypted with (default SSE-S3).
        endpoint_url: S3 only: another endpoint than AWS's (moto server, MinIO); the client
            also reads ``AWS_ENDPOINT_URL`` from the environment when this is None.
        profile: S3 only: the AWS profile of the client's session.
        region: S3 only: the region of the client's session.
    """
    if uri.startswith("s3://"):
        return S3Store(
            uri, kms_key_id=kms_key_id, endpoint_url=endpoint_url, profile=profile, region=region
        )
    return LocalStore(uri)


def store_from_settings(settings: Settings) -> LocalStore | S3Store:
    """The pipeline's store: :func:`store_from_uri` with what ``settings`` name.

    ``settings.store`` is the URI; the KMS key, AWS endpoint, profile and region come from the
    same settings, so the store and the SageMaker clients act as one account.
    """
    return store_from_uri(
        settings.store,
        kms_key_id=settings.kms_key_id,
        endpoint_url=settings.aws_endpoint_url,
        profile=settings.aws_profile,
        region=settings.aws_region,
    )

"""A tampered store, an archive bomb and racing promotions, on the local store.

Each test is a finding of the security review (README, "What a writer of the store can do"):
the version rewritten with a consistent manifest (1), unbounded downloads and extraction (2),
``latest.json`` written last-writer-wins (5), and serving processes that inherited every secret
of the caller's environment (10). The S3 side of the same rules is in
``tests/integration/test_faults.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from adapters import package
from adapters.endpoints.local.processes import ServingProcesses
from adapters.layout import IntegrityError, PublishError
from adapters.package import extract_tarball
from adapters.pointer import move_latest, promotion_history, read_latest
from adapters.store import LocalStore, PreconditionFailed
from adapters.versions import read_checked_manifest, verify_version
from tests.fixtures.published import MODEL, publish_files


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def rewrite_version(store: LocalStore, version: str, name: str, data: bytes) -> str:
    """What an attacker with write access does: new file, manifest made consistent with it."""
    key = f"models/{MODEL}/{version}/manifest.json"
    manifest = json.loads(store.get_bytes(key))
    store.put_bytes(f"models/{MODEL}/{version}/{name}", data)
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    body = json.dumps(manifest).encode()
    store.put_bytes(key, body)
    return hashlib.sha256(body).hexdigest()


# --- 1. the recorded hash is the truth ----------------------------------------------------------


def test_a_consistently_rewritten_version_is_refused_against_the_recorded_hash(
    store: LocalStore, tmp_path: Path
) -> None:
    published = publish_files(store, tmp_path)
    new_hash = rewrite_version(store, "v1", "model.tar.gz", b"a different model")

    # The rewrite is self-consistent: without the recorded hash it verifies.
    verify_version(store, MODEL, "v1", tmp_path / "unchecked")
    with pytest.raises(IntegrityError) as err:
        verify_version(
            store,
            MODEL,
            "v1",
            tmp_path / "checked",
            expected_manifest_sha256=published.manifest_sha256,
        )
    assert published.manifest_sha256 in str(err.value) and new_hash in str(err.value)
    assert not (tmp_path / "checked" / "model.tar.gz").exists()  # nothing downloaded


def test_move_latest_refuses_a_manifest_changed_since_the_rollout_checked_it(
    store: LocalStore, tmp_path: Path
) -> None:
    published = publish_files(store, tmp_path)
    rewrite_version(store, "v1", "metrics.json", b"{}")
    with pytest.raises(IntegrityError, match="v1 was changed in the store"):
        move_latest(
            store, MODEL, "v1", reason="t", expected_manifest_sha256=published.manifest_sha256
        )
    assert read_latest(store, MODEL) is None and promotion_history(store, MODEL) == []


def test_manifest_and_hash_come_from_one_read(store: LocalStore, tmp_path: Path) -> None:
    published = publish_files(store, tmp_path)
    manifest, digest = read_checked_manifest(store, MODEL, "v1")
    assert digest == published.manifest_sha256 and manifest == published.manifest


# --- 2. bounded work for any artifact ----------------------------------------------------------


class CountingStore(LocalStore):
    """A local store that records how many bytes each download wrote."""

    written: list[int]

    def get_file(self, key: str, dest: Path, *, max_bytes: int | None = None) -> Path:
        self.written = getattr(self, "written", [])
        try:
            return super().get_file(key, dest, max_bytes=max_bytes)
        finally:
            self.written.append(dest.stat().st_size if dest.exists() else 0)


def test_an_oversized_object_is_refused_from_its_size_before_its_body_is_copied(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path / "store")
    published = publish_files(store, tmp_path)
    listed = published.manifest["files"]["model.tar.gz"]["bytes"]
    big = store.root / f"models/{MODEL}/v1/model.tar.gz"
    with big.open("r+b") as fh:  # 64 MiB, sparse: cheap to make, costly to copy and hash
        fh.truncate(64 << 20)

    with pytest.raises(PublishError, match=r"model.tar.gz does not match the manifest"):
        verify_version(store, MODEL, "v1", tmp_path / "dest")
    assert max(store.written) <= listed  # never copied past what the manifest lists
    assert not [p.name for p in (tmp_path / "dest").iterdir() if "model.tar.gz" in p.name]


def test_a_manifest_listing_a_file_over_the_limit_is_refused(
    store: LocalStore, tmp_path: Path
) -> None:
    publish_files(store, tmp_path)
    with pytest.raises(PublishError, match="over the 10-byte limit"):
        verify_version(store, MODEL, "v1", tmp_path / "dest", max_file_bytes=10)


def _tarball(path: Path, members: list[tuple[str, int]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"\0" * size))
    return path


def test_a_decompression_bomb_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(package, "MAX_UNPACKED_BYTES", 4 << 20)
    # 24 MiB of zeros in a ~25 kB archive: passes any check on the archive's own size.
    bomb = _tarball(tmp_path / "bomb.tar.gz", [("a.bin", 8 << 20), ("b.bin", 16 << 20)])
    assert bomb.stat().st_size < 100_000
    with pytest.raises(PublishError, match="more than 4194304 bytes"):
        extract_tarball(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_archive_with_too_many_members_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(package, "MAX_MEMBERS", 100)
    many = _tarball(tmp_path / "many.tar.gz", [(f"f{i}", 0) for i in range(500)])
    with pytest.raises(PublishError, match="more than 100 members"):
        extract_tarball(many, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # Within the limits the same code unpacks.
    ok = _tarball(tmp_path / "ok.tar.gz", [("model.json", 10)])
    assert (extract_tarball(ok, tmp_path / "ok") / "model.json").stat().st_size == 10


# --- 5. one writer wins, visibly ----------------------------------------------------------------


def test_local_if_match_refuses_a_stale_tag(store: LocalStore) -> None:
    store.put_bytes("models/m/latest.json", b"one")
    _, tag = store.get_tagged("models/m/latest.json")
    store.put_bytes("models/m/latest.json", b"two", if_match=tag)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("models/m/latest.json", b"three", if_match=tag)
    assert store.get_bytes("models/m/latest.json") == b"two"
    assert store.list("models/m") == ["models/m/latest.json"]  # the lock file stays hidden


class PausingStore(LocalStore):
    """Holds the first ``latest.json`` write of one thread until another promotion is done."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.slow_thread: str | None = None
        self.paused = threading.Event()
        self.resume = threading.Event()

    def _pause(self, key: str) -> None:
        if key.endswith("latest.json") and threading.current_thread().name == self.slow_thread:
            self.slow_thread = None
            self.paused.set()
            assert self.resume.wait(10)

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        self._pause(key)
        return super().get_tagged(key)

    def put_bytes(self, key: str, data: bytes, **kwargs: Any) -> None:
        self._pause(key)
        super().put_bytes(key, data, **kwargs)


def test_a_promotion_overtaken_by_a_newer_one_fails_and_the_pointer_agrees_with_history(
    tmp_path: Path,
) -> None:
    store = PausingStore(tmp_path / "store")
    publish_files(store, tmp_path, "a")
    publish_files(store, tmp_path, "b")
    errors: list[BaseException] = []

    def promote_v1() -> None:
        try:
            move_latest(store, MODEL, "v1", reason="slow")
        except BaseException as exc:  # the thread's outcome is asserted below
            errors.append(exc)

    store.slow_thread = "slow-promotion"
    slow = threading.Thread(target=promote_v1, name="slow-promotion")
    slow.start()
    assert store.paused.wait(10)  # v1's record (seq 1) is written, its pointer write waits
    move_latest(store, MODEL, "v2", reason="fast")  # record seq 2, pointer v2
    store.resume.set()
    slow.join(10)

    history = promotion_history(store, MODEL)
    assert [r["version"] for r in history] == ["v1", "v2"]
    assert read_latest(store, MODEL)["version"] == history[-1]["version"] == "v2"  # type: ignore[index]
    assert len(errors) == 1 and "a concurrent promotion (record 2, v2)" in str(errors[0])


def test_concurrent_promotions_never_leave_the_pointer_behind_the_history(
    store: LocalStore, tmp_path: Path
) -> None:
    for tag in "abcd":
        publish_files(store, tmp_path, tag)
    for _ in range(5):
        threads = [threading.Thread(target=_try_move, args=(store, f"v{n}")) for n in range(1, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        latest, newest = read_latest(store, MODEL), promotion_history(store, MODEL)[-1]
        assert latest is not None and latest["seq"] == newest["seq"]
        assert latest["version"] == newest["version"]


def _try_move(store: LocalStore, version: str) -> None:
    try:
        move_latest(store, MODEL, version, reason="race")
    except PublishError as exc:
        assert "concurrent promotion" in str(exc)


# --- 10. serving processes get an allowlisted environment -------------------------------------


def test_a_serving_process_inherits_no_secret_of_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = {
        "MLOPS_DATABASE_URL": "postgresql://etl:PLANTED-db@db/api",
        "AWS_SECRET_ACCESS_KEY": "PLANTED-aws",
        "MLFLOW_TRACKING_PASSWORD": "PLANTED-mlflow",
        "SLACK_WEBHOOK_URL": "https://hooks.example/PLANTED-hook",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    processes = ServingProcesses(sys.executable, stop_seconds=5)
    proc = processes.start(["check"], tmp_path / "check.log", tmp_path, {"MLOPS_MODEL_NAME": "m"})
    try:
        environ = _environ_after_exec(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)
    assert not [k for k, v in environ.items() if "PLANTED" in v], environ
    assert environ["MLOPS_MODEL_NAME"] == "m" and environ["PATH"] == os.environ["PATH"]


def _environ_after_exec(pid: int) -> dict[str, str]:
    """The environment of ``pid`` once it runs ``python -m serving`` (not the forked parent's)."""
    proc_dir = Path(f"/proc/{pid}")
    for _ in range(200):
        if b"serving" in (proc_dir / "cmdline").read_bytes():
            raw = (proc_dir / "environ").read_bytes()
            pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
            return {k.decode(): v.decode(errors="replace") for k, _, v in pairs}
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never ran python -m serving")


# --- 14. loaders open only files inside the verified directory ---------------------------------


def test_a_loader_refuses_a_model_file_outside_its_directory(tmp_path: Path) -> None:
    import numpy as np
    from xgboost import XGBRegressor

    from core.families import get_family, model_file
    from core.families.limit_optimiser import FEATURES, INDEX_FILE

    # A valid booster that contents.json does not list, outside the model directory.
    outside = tmp_path / "elsewhere.ubj"
    XGBRegressor(n_estimators=2).fit(np.zeros((8, len(FEATURES))), np.arange(8.0)).save_model(
        outside
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    index = {"family": "limit_optimiser", "features": FEATURES}
    family = get_family("limit_optimiser")
    for name, why in [
        (str(outside), "must be a relative path"),
        ("../elsewhere.ubj", "outside the model directory"),
    ]:
        (model_dir / INDEX_FILE).write_text(json.dumps({**index, "model_file": name}))
        with pytest.raises(ValueError, match=why):
            family.load(model_dir)

    # Inside, but not listed in a published directory's contents.json: refused too.
    (model_dir / "booster.ubj").write_bytes(outside.read_bytes())
    (model_dir / "contents.json").write_text(json.dumps({"files": {INDEX_FILE: "x"}}))
    with pytest.raises(ValueError, match=r"not listed in contents\.json"):
        model_file(model_dir, "booster.ubj")
    (model_dir / "link.ubj").symlink_to(outside)
    with pytest.raises(ValueError, match=r"outside the model directory|not a regular file"):
        model_file(model_dir, "link.ubj")

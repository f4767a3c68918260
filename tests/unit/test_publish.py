"""Versioned publishing on the local store: claims, manifests, the pointer, history, tarballs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

import adapters.publish as publish_module
from adapters.publish import (
    PublishedVersion,
    PublishError,
    claim_version,
    extract_tarball,
    list_versions,
    make_tarball,
    move_latest,
    promotion_history,
    publish_version,
    read_latest,
    read_manifest,
    rollback_target,
    verify_version,
    version_number,
)
from adapters.store import LocalStore, PreconditionFailed

MODEL = "abuse_detector"
LINEAGE = {"snapshot_id": "20261116T000000Z-ab12", "config_hash": "c0ffee", "flow_run_id": "run-1"}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _files(tmp_path: Path, tag: str = "a") -> dict[str, Path]:
    folder = tmp_path / f"files-{tag}"
    folder.mkdir(exist_ok=True)
    contents = {
        "model.tar.gz": f"model bytes {tag}".encode() * 100,
        "metrics.json": json.dumps({"auc": 0.9, "tag": tag}).encode(),
        "schema.json": b'{"columns": ["a", "b"]}',
    }
    out = {}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


def _publish(store: LocalStore, tmp_path: Path, tag: str = "a") -> PublishedVersion:
    return publish_version(store, MODEL, _files(tmp_path, tag), {**LINEAGE, "tag": tag})


# --- version names -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "number"), [("v1", 1), ("v12", 12), ("v100000", 100000)])
def test_version_number_parses(name: str, number: int) -> None:
    assert version_number(name) == number


@pytest.mark.parametrize("name", ["1", "v", "v0", "v01", "V1", "v-1", "v1.0", "v1/", " v1", ""])
def test_version_number_rejects_other_spellings(name: str) -> None:
    # One spelling per number, or "v01" and "v1" could name two folders of the same version.
    with pytest.raises(ValueError):
        version_number(name)


# --- publish ------------------------------------------------------------------------------------


def test_versions_increase_from_v1(store: LocalStore, tmp_path: Path) -> None:
    published = [_publish(store, tmp_path, tag) for tag in "abc"]
    assert [p.version for p in published] == ["v1", "v2", "v3"]
    assert [p.number for p in published] == [1, 2, 3]
    assert published[1].uri == store.url(f"models/{MODEL}/v2")
    assert list_versions(store, MODEL) == [
        {"version": "v1", "number": 1, "complete": True},
        {"version": "v2", "number": 2, "complete": True},
        {"version": "v3", "number": 3, "complete": True},
    ]


def test_versions_go_past_nine_in_numeric_order(store: LocalStore, tmp_path: Path) -> None:
    # Lexical order would put v10 before v2 and reuse a number.
    for _ in range(10):
        claim_version(store, MODEL)
    assert _publish(store, tmp_path).version == "v11"
    assert [v["number"] for v in list_versions(store, MODEL)] == list(range(1, 12))


def test_manifest_records_every_file_hash_and_the_lineage(
    store: LocalStore, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    published = publish_version(store, MODEL, files, LINEAGE, claimed_by={"flow_run_id": "run-1"})
    manifest = read_manifest(store, MODEL, "v1")

    assert manifest == published.manifest
    assert manifest["model"] == MODEL and manifest["version"] == "v1"
    assert manifest["created_at"]
    assert manifest["lineage"] == LINEAGE
    assert set(manifest["files"]) == set(files)
    for name, path in files.items():
        data = path.read_bytes()
        assert manifest["files"][name] == {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
        assert store.get_bytes(f"models/{MODEL}/v1/{name}") == data
    stored = store.get_bytes(f"models/{MODEL}/v1/manifest.json")
    assert published.manifest_sha256 == hashlib.sha256(stored).hexdigest()
    claim = json.loads(store.get_bytes(f"models/{MODEL}/v1/claim.json"))
    assert claim["claimed_by"] == {"flow_run_id": "run-1"} and claim["version"] == "v1"


def test_models_do_not_share_numbers(store: LocalStore, tmp_path: Path) -> None:
    _publish(store, tmp_path)
    other = publish_version(store, "abuse_detector_2", _files(tmp_path), LINEAGE)
    # "abuse_detector" is a prefix of "abuse_detector_2": listing must not mix them.
    assert other.version == "v1"
    assert _publish(store, tmp_path, "b").version == "v2"


@pytest.mark.parametrize(
    "name",
    [
        "a/b",
        "../escape",
        "manifest.json",
        "claim.json",
        "",
        ".hidden",
        "dir\\file",
        "model/a/b",
        "model/../x",
        "model/",
    ],
)
def test_bad_file_names_are_refused_before_claiming(
    store: LocalStore, tmp_path: Path, name: str
) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(PublishError):
        publish_version(store, MODEL, {name: src}, LINEAGE)
    assert list_versions(store, MODEL) == []  # no number burnt


def test_missing_local_file_is_refused_before_claiming(store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match=r"model\.tar\.gz"):
        publish_version(store, MODEL, {"model.tar.gz": tmp_path / "absent"}, LINEAGE)
    assert list_versions(store, MODEL) == []


@pytest.mark.parametrize("model", ["", "a/b", "../x", ".m"])
def test_bad_model_names_are_refused(store: LocalStore, tmp_path: Path, model: str) -> None:
    with pytest.raises(PublishError):
        publish_version(store, model, _files(tmp_path), LINEAGE)


# --- concurrent claims -------------------------------------------------------------------------


def test_concurrent_claims_in_threads_get_distinct_numbers(store: LocalStore) -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    numbers: list[int] = []
    errors: list[BaseException] = []

    def claim() -> None:
        barrier.wait()
        try:
            numbers.append(claim_version(store, MODEL))
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=claim) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors
    assert sorted(numbers) == list(range(1, threads + 1))


# Each claimer is a fresh interpreter: it announces it is ready, waits for the go file so that
# all of them claim at once, then prints the numbers it got.
_CLAIMER = """
import json, os, sys, time
from pathlib import Path
from adapters.publish import claim_version
from adapters.store import LocalStore

root, model, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = LocalStore(root)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
got = [claim_version(store, model, claimed_by={"pid": os.getpid()}) for _ in range(count)]
print(json.dumps(got), flush=True)
"""


def test_concurrent_claims_in_processes_get_distinct_numbers(
    store: LocalStore, tmp_path: Path
) -> None:
    workers, each = 3, 6
    go = tmp_path / "go"
    # Not multiprocessing: a spawned child inherits sys.path, which loading an MLflow model with
    # code paths prepends to, and could then import another copy of the project.
    project = Path(publish_module.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(project)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(store.root), MODEL, str(each), str(go)],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0] * workers
    numbers = [n for out in outputs for n in json.loads(out)]
    assert sorted(numbers) == list(range(1, workers * each + 1))
    pids = {
        json.loads(store.get_bytes(f"models/{MODEL}/v{n}/claim.json"))["claimed_by"]["pid"]
        for n in numbers
    }
    assert pids == {proc.pid for proc in procs}


# --- interrupted publishes ---------------------------------------------------------------------


def test_interrupted_publish_stays_incomplete_and_unpromotable(
    store: LocalStore, tmp_path: Path
) -> None:
    first = _publish(store, tmp_path, "a")
    move_latest(store, MODEL, first.version, reason="first")
    # A publisher that died after claiming v2 and uploading one file, before the manifest.
    number = claim_version(store, MODEL)
    store.put_bytes(f"models/{MODEL}/v{number}/model.tar.gz", b"half a model")

    assert list_versions(store, MODEL)[-1] == {"version": "v2", "number": 2, "complete": False}
    with pytest.raises(PublishError, match="incomplete"):
        read_manifest(store, MODEL, "v2")
    with pytest.raises(PublishError):
        move_latest(store, MODEL, "v2", reason="should be refused")
    with pytest.raises(PublishError):
        verify_version(store, MODEL, "v2", tmp_path / "dl")
    # The pointer and its history did not move.
    assert read_latest(store, MODEL)["version"] == "v1"  # type: ignore[index]
    assert [r["version"] for r in promotion_history(store, MODEL)] == ["v1"]
    # The next publish does not reuse the broken number.
    assert _publish(store, tmp_path, "c").version == "v3"


def test_publish_failing_midway_leaves_an_incomplete_version(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put_file = store.put_file
    calls: list[str] = []

    def flaky_put_file(key: str, path: Path, *, if_none_match: bool = False) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise ConnectionError("network dropped")
        real_put_file(key, path, if_none_match=if_none_match)

    monkeypatch.setattr(store, "put_file", flaky_put_file)
    with pytest.raises(ConnectionError):
        _publish(store, tmp_path)
    monkeypatch.undo()

    assert list_versions(store, MODEL) == [{"version": "v1", "number": 1, "complete": False}]
    assert not store.exists(f"models/{MODEL}/v1/manifest.json")
    assert _publish(store, tmp_path, "b").version == "v2"


def test_list_versions_ignores_what_is_not_a_version(store: LocalStore, tmp_path: Path) -> None:
    published = _publish(store, tmp_path)
    move_latest(store, MODEL, published.version, reason="r")
    for stray in ("vnext/x", "v0/x", "v01/x", "notes.txt", "v7"):
        store.put_bytes(f"models/{MODEL}/{stray}", b"1")
    assert list_versions(store, MODEL) == [{"version": "v1", "number": 1, "complete": True}]


# --- verify -------------------------------------------------------------------------------------


def test_verify_downloads_every_file(store: LocalStore, tmp_path: Path) -> None:
    files = _files(tmp_path)
    publish_version(store, MODEL, files, LINEAGE)
    dest = tmp_path / "download"
    manifest = verify_version(store, MODEL, "v1", dest)
    assert manifest["version"] == "v1"
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    for name, path in files.items():
        assert (dest / name).read_bytes() == path.read_bytes()


def test_verify_detects_a_tampered_file(store: LocalStore, tmp_path: Path) -> None:
    _publish(store, tmp_path)
    key = f"models/{MODEL}/v1/model.tar.gz"
    original = store.get_bytes(key)
    # Same size, one byte flipped: only the hash can tell.
    store.put_bytes(key, bytes([original[0] ^ 1]) + original[1:])
    dest = tmp_path / "download"
    with pytest.raises(PublishError, match=r"model\.tar\.gz"):
        verify_version(store, MODEL, "v1", dest)
    assert not (dest / "model.tar.gz").exists()  # the bad file is not left under its name


def test_verify_detects_a_missing_file(store: LocalStore, tmp_path: Path) -> None:
    _publish(store, tmp_path)
    store.delete(f"models/{MODEL}/v1/schema.json")
    with pytest.raises(PublishError, match=r"schema\.json"):
        verify_version(store, MODEL, "v1", tmp_path / "download")


def test_verify_refuses_a_manifest_naming_a_path(store: LocalStore, tmp_path: Path) -> None:
    _publish(store, tmp_path)
    key = f"models/{MODEL}/v1/manifest.json"
    manifest = json.loads(store.get_bytes(key))
    manifest["files"]["../../evil"] = manifest["files"]["schema.json"]
    store.put_bytes(key, json.dumps(manifest).encode())
    with pytest.raises(PublishError):
        verify_version(store, MODEL, "v1", tmp_path / "a" / "b")
    assert not (tmp_path / "evil").exists()


# --- the pointer and its history ---------------------------------------------------------------


def test_latest_is_none_before_any_promotion(store: LocalStore, tmp_path: Path) -> None:
    _publish(store, tmp_path)
    assert read_latest(store, MODEL) is None
    assert promotion_history(store, MODEL) == []


def test_move_latest_points_at_the_version_and_appends_history(
    store: LocalStore, tmp_path: Path
) -> None:
    v1, v2 = _publish(store, tmp_path, "a"), _publish(store, tmp_path, "b")

    latest = move_latest(store, MODEL, "v1", reason="first champion", extra={"mlflow_version": "1"})
    assert latest["version"] == "v1"
    assert latest["manifest_sha256"] == v1.manifest_sha256
    assert latest["mlflow_version"] == "1" and latest["promoted_at"]
    assert read_latest(store, MODEL) == latest
    first_record = store.get_bytes(f"models/{MODEL}/promotions/000001.json")

    move_latest(store, MODEL, "v2", reason="better auc", extra={"mlflow_version": "2"})
    move_latest(store, MODEL, "v1", reason="rollback")

    assert read_latest(store, MODEL)["manifest_sha256"] == v1.manifest_sha256  # type: ignore[index]
    history = promotion_history(store, MODEL)
    assert [(r["seq"], r["version"], r["previous"], r["reason"]) for r in history] == [
        (1, "v1", None, "first champion"),
        (2, "v2", "v1", "better auc"),
        (3, "v1", "v2", "rollback"),
    ]
    assert history[1]["mlflow_version"] == "2"
    assert history[1]["manifest_sha256"] == v2.manifest_sha256
    assert all(r["at"] for r in history)
    # Append-only: the first record is byte for byte what it was.
    assert store.get_bytes(f"models/{MODEL}/promotions/000001.json") == first_record
    assert store.list(f"models/{MODEL}/promotions") == [
        f"models/{MODEL}/promotions/{n:06d}.json" for n in (1, 2, 3)
    ]


def test_history_records_cannot_be_overwritten(store: LocalStore, tmp_path: Path) -> None:
    _publish(store, tmp_path)
    move_latest(store, MODEL, "v1", reason="r")
    with pytest.raises(PreconditionFailed):
        store.put_bytes(f"models/{MODEL}/promotions/000001.json", b"{}", if_none_match=True)


def test_moving_to_the_current_version_is_a_no_op(store: LocalStore, tmp_path: Path) -> None:
    # A retried promotion task must not add a second record.
    _publish(store, tmp_path)
    first = move_latest(store, MODEL, "v1", reason="r")
    again = move_latest(store, MODEL, "v1", reason="retry")
    assert again == first
    assert len(promotion_history(store, MODEL)) == 1


def test_move_latest_refuses_unknown_versions_and_core_overrides(
    store: LocalStore, tmp_path: Path
) -> None:
    _publish(store, tmp_path)
    with pytest.raises(PublishError):
        move_latest(store, MODEL, "v9", reason="r")
    with pytest.raises(ValueError):
        move_latest(store, MODEL, "latest", reason="r")
    with pytest.raises(ValueError, match="version"):
        move_latest(store, MODEL, "v1", reason="r", extra={"version": "v7"})
    assert read_latest(store, MODEL) is None


def test_concurrent_moves_keep_every_record(store: LocalStore, tmp_path: Path) -> None:
    for tag in "abcdef":
        _publish(store, tmp_path, tag)
    versions = [f"v{n}" for n in range(1, 7)]
    barrier = threading.Barrier(len(versions))

    def move(version: str) -> None:
        barrier.wait()
        move_latest(store, MODEL, version, reason=f"race {version}")

    pool = [threading.Thread(target=move, args=(v,)) for v in versions]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    history = promotion_history(store, MODEL)
    assert [r["seq"] for r in history] == list(range(1, 7))
    assert sorted(r["version"] for r in history) == versions
    assert read_latest(store, MODEL)["version"] in versions  # type: ignore[index]


# --- tarballs -----------------------------------------------------------------------------------


def _model_dir(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.joblib").write_bytes(b"weights" * 1000)
    (root / "params.json").write_text('{"n": 1}')
    (root / "sub" / "extra.txt").write_text("x")
    return root


def test_tarball_is_deterministic(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "model")
    first = make_tarball(src, tmp_path / "one.tar.gz").read_bytes()
    # Different mtimes and modes must not change the bytes.
    for path in src.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    (src / "params.json").chmod(0o600)
    second = make_tarball(src, tmp_path / "two.tar.gz").read_bytes()
    assert first == second
    assert first[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime
    assert first[3] & 0x08 == 0  # no file name in the gzip header
    (src / "params.json").write_text('{"n": 2}')
    assert make_tarball(src, tmp_path / "three.tar.gz").read_bytes() != first


def test_tarball_holds_files_at_the_root(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "model")
    tarball = make_tarball(src, tmp_path / "model.tar.gz")
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["model.joblib", "params.json", "sub", "sub/extra.txt"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    out = extract_tarball(tarball, tmp_path / "out")
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_file():
            assert (out / rel).read_bytes() == path.read_bytes()


def test_tarball_inside_its_source_leaves_itself_out(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "model")
    tarball = make_tarball(src, src / "model.tar.gz")
    with tarfile.open(tarball) as tar:
        assert "model.tar.gz" not in tar.getnames()


def test_make_tarball_refuses_links(tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "model")
    (src / "link").symlink_to(tmp_path)
    with pytest.raises(PublishError, match="link"):
        make_tarball(src, tmp_path / "m.tar.gz")
    assert not (tmp_path / "m.tar.gz").exists()


def _evil_tarball(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../evil"),
        _member("sub/../../evil"),
        _member("/tmp/evil-absolute"),
        _member("link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("link", tarfile.SYMTYPE, "ok.txt"),
        _member("hard", tarfile.LNKTYPE, "ok.txt"),
        _member("dev", tarfile.CHRTYPE),
        _member("blk", tarfile.BLKTYPE),
        _member("fifo", tarfile.FIFOTYPE),
    ],
    ids=lambda m: f"{m.name}-{m.type!r}",
)
def test_extract_refuses_untrusted_members(tmp_path: Path, member: tarfile.TarInfo) -> None:
    tarball = _evil_tarball(tmp_path / "evil.tar.gz", member, b"pwned" if member.isreg() else b"")
    dest = tmp_path / "work" / "out"
    with pytest.raises(PublishError):
        extract_tarball(tarball, dest)
    # Nothing was written, not even the harmless member before the bad one.
    assert not dest.exists() or list(dest.iterdir()) == []
    assert not (tmp_path / "work" / "evil").exists() and not (tmp_path / "evil").exists()


def test_extract_accepts_a_dot_prefixed_tarball(tmp_path: Path) -> None:
    # `tar -czf model.tar.gz -C dir .` writes ./ names; SageMaker users produce these.
    src = _model_dir(tmp_path / "model")
    tarball = tmp_path / "dot.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname=".")
    out = extract_tarball(tarball, tmp_path / "out")
    assert (out / "model.joblib").read_bytes() == (src / "model.joblib").read_bytes()
    assert (out / "sub" / "extra.txt").read_text() == "x"


def test_extract_refuses_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gzip.compress(b"not a tar archive at all" * 40))
    with pytest.raises(PublishError):
        extract_tarball(bad, tmp_path / "out")


@pytest.mark.parametrize(
    ("history", "current", "expected"),
    [
        ([], "v1", None),
        ([{"version": "v1"}], "v1", None),
        ([{"version": "v1"}, {"version": "v2"}], "v2", "v1"),
        # v4 misbehaved and was rolled back to v3: the next rollback goes to v2, not v4.
        (
            [
                {"version": "v2"},
                {"version": "v3"},
                {"version": "v4"},
                {"version": "v3", "rolled_back_from": "v4"},
            ],
            "v3",
            "v2",
        ),
        # ... unless v4 was promoted again since.
        (
            [
                {"version": "v3"},
                {"version": "v4"},
                {"version": "v3", "rolled_back_from": "v4"},
                {"version": "v4"},
            ],
            "v4",
            "v3",
        ),
    ],
)
def test_rollback_target_skips_versions_rolled_back_from(
    history: list[dict[str, str]], current: str, expected: str | None
) -> None:
    assert rollback_target(history, current) == expected


def test_unpacked_model_files_go_under_model_with_their_hashes(
    store: LocalStore, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    weights = tmp_path / "weights.json"
    weights.write_text('{"w": [1, 2]}')
    published = publish_version(store, MODEL, {**files, "model/weights.json": weights}, LINEAGE)
    entry = published.manifest["files"]["model/weights.json"]
    assert entry["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    key = f"models/{MODEL}/{published.version}/model/weights.json"
    assert store.get_bytes(key) == weights.read_bytes()
    verify_version(store, MODEL, published.version, tmp_path / "check")
    assert (tmp_path / "check" / "model" / "weights.json").read_bytes() == weights.read_bytes()

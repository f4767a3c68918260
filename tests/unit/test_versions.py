"""Versions on the local store: claims, manifests, verification, interrupted publishes, deletes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import adapters.versions as versions_module
from adapters.layout import PublishError
from adapters.pointer import move_latest, promotion_history, read_latest
from adapters.store import LocalStore
from adapters.versions import (
    claim_version,
    delete_version,
    list_versions,
    publish_version,
    read_version_manifest,
    verify_version,
)
from tests.fixtures.published import LINEAGE, MODEL, files_for, publish_files


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


# --- publish ------------------------------------------------------------------------------------


def test_versions_increase_from_v1(store: LocalStore, tmp_path: Path) -> None:
    published = [publish_files(store, tmp_path, tag) for tag in "abc"]
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
    assert publish_files(store, tmp_path).version == "v11"
    assert [v["number"] for v in list_versions(store, MODEL)] == list(range(1, 12))


def test_manifest_records_every_file_hash_and_the_lineage(
    store: LocalStore, tmp_path: Path
) -> None:
    files = files_for(tmp_path)
    published = publish_version(store, MODEL, files, LINEAGE, claimed_by={"flow_run_id": "run-1"})
    manifest = read_version_manifest(store, MODEL, "v1")

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
    publish_files(store, tmp_path)
    other = publish_version(store, "abuse_detector_2", files_for(tmp_path), LINEAGE)
    # "abuse_detector" is a prefix of "abuse_detector_2": listing must not mix them.
    assert other.version == "v1"
    assert publish_files(store, tmp_path, "b").version == "v2"


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
        publish_version(store, model, files_for(tmp_path), LINEAGE)


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
from adapters.versions import claim_version
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
    project = Path(versions_module.__file__).resolve().parent.parent
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
    first = publish_files(store, tmp_path, "a")
    move_latest(store, MODEL, first.version, reason="first")
    # A publisher that died after claiming v2 and uploading one file, before the manifest.
    number = claim_version(store, MODEL)
    store.put_bytes(f"models/{MODEL}/v{number}/model.tar.gz", b"half a model")

    assert list_versions(store, MODEL)[-1] == {"version": "v2", "number": 2, "complete": False}
    with pytest.raises(PublishError, match="incomplete"):
        read_version_manifest(store, MODEL, "v2")
    with pytest.raises(PublishError):
        move_latest(store, MODEL, "v2", reason="should be refused")
    with pytest.raises(PublishError):
        verify_version(store, MODEL, "v2", tmp_path / "dl")
    # The pointer and its history did not move.
    assert read_latest(store, MODEL)["version"] == "v1"  # type: ignore[index]
    assert [r["version"] for r in promotion_history(store, MODEL)] == ["v1"]
    # The next publish does not reuse the broken number.
    assert publish_files(store, tmp_path, "c").version == "v3"


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
        publish_files(store, tmp_path)
    monkeypatch.undo()

    assert list_versions(store, MODEL) == [{"version": "v1", "number": 1, "complete": False}]
    assert not store.exists(f"models/{MODEL}/v1/manifest.json")
    assert publish_files(store, tmp_path, "b").version == "v2"


def test_list_versions_ignores_what_is_not_a_version(store: LocalStore, tmp_path: Path) -> None:
    published = publish_files(store, tmp_path)
    move_latest(store, MODEL, published.version, reason="r")
    for stray in ("vnext/x", "v0/x", "v01/x", "notes.txt", "v7"):
        store.put_bytes(f"models/{MODEL}/{stray}", b"1")
    assert list_versions(store, MODEL) == [{"version": "v1", "number": 1, "complete": True}]


# --- verify -------------------------------------------------------------------------------------


def test_verify_downloads_every_file(store: LocalStore, tmp_path: Path) -> None:
    files = files_for(tmp_path)
    publish_version(store, MODEL, files, LINEAGE)
    dest = tmp_path / "download"
    manifest = verify_version(store, MODEL, "v1", dest)
    assert manifest["version"] == "v1"
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    for name, path in files.items():
        assert (dest / name).read_bytes() == path.read_bytes()


def test_verify_detects_a_tampered_file(store: LocalStore, tmp_path: Path) -> None:
    publish_files(store, tmp_path)
    key = f"models/{MODEL}/v1/model.tar.gz"
    original = store.get_bytes(key)
    # Same size, one byte flipped: only the hash can tell.
    store.put_bytes(key, bytes([original[0] ^ 1]) + original[1:])
    dest = tmp_path / "download"
    with pytest.raises(PublishError, match=r"model\.tar\.gz"):
        verify_version(store, MODEL, "v1", dest)
    assert not (dest / "model.tar.gz").exists()  # the bad file is not left under its name


def test_verify_detects_a_missing_file(store: LocalStore, tmp_path: Path) -> None:
    publish_files(store, tmp_path)
    store.delete(f"models/{MODEL}/v1/schema.json")
    with pytest.raises(PublishError, match=r"schema\.json"):
        verify_version(store, MODEL, "v1", tmp_path / "download")


def test_verify_refuses_a_manifest_naming_a_path(store: LocalStore, tmp_path: Path) -> None:
    publish_files(store, tmp_path)
    key = f"models/{MODEL}/v1/manifest.json"
    manifest = json.loads(store.get_bytes(key))
    manifest["files"]["../../evil"] = manifest["files"]["schema.json"]
    store.put_bytes(key, json.dumps(manifest).encode())
    with pytest.raises(PublishError):
        verify_version(store, MODEL, "v1", tmp_path / "a" / "b")
    assert not (tmp_path / "evil").exists()


def test_unpacked_model_files_go_under_model_with_their_hashes(
    store: LocalStore, tmp_path: Path
) -> None:
    files = files_for(tmp_path)
    weights = tmp_path / "weights.json"
    weights.write_text('{"w": [1, 2]}')
    published = publish_version(store, MODEL, {**files, "model/weights.json": weights}, LINEAGE)
    entry = published.manifest["files"]["model/weights.json"]
    assert entry["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    key = f"models/{MODEL}/{published.version}/model/weights.json"
    assert store.get_bytes(key) == weights.read_bytes()
    verify_version(store, MODEL, published.version, tmp_path / "check")
    assert (tmp_path / "check" / "model" / "weights.json").read_bytes() == weights.read_bytes()


# --- delete -------------------------------------------------------------------------------------


def test_delete_version_takes_the_manifest_first_and_the_claim_last(
    store: LocalStore, tmp_path: Path
) -> None:
    files = files_for(tmp_path)
    weights = tmp_path / "weights.json"
    weights.write_text("{}")
    publish_version(store, MODEL, {**files, "model/weights.json": weights}, LINEAGE)
    kept = publish_files(store, tmp_path, "b")
    prefix = f"models/{MODEL}/v1/"
    deleted = delete_version(store, MODEL, "v1")
    # Complete no more before any file goes; the number stays taken until the end.
    assert deleted[0] == f"{prefix}manifest.json" and deleted[-1] == f"{prefix}claim.json"
    assert sorted(deleted) == sorted(
        [f"{prefix}{n}" for n in (*files, "model/weights.json", "manifest.json", "claim.json")]
    )
    assert store.list(prefix) == []
    assert list_versions(store, MODEL) == [{"version": "v2", "number": 2, "complete": True}]
    assert read_version_manifest(store, MODEL, kept.version) == kept.manifest
    assert delete_version(store, MODEL, "v1") == []  # a second delete finds nothing

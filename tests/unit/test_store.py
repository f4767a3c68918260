"""The store contract, kept by both backends; then what only the local store promises.

The contract tests run once per backend: the local directory here, and S3 on a moto server over
real HTTP on loopback (marked ``integration``; ``tests/integration/test_s3_store.py`` has what
only S3 promises: encryption, the server's own 412, 409 retries, objects outside the prefix).
Each backend is opened through a factory, so a test can hold several independent handles (each
S3 one with a client and connection pool of its own) on one store, as concurrent writers do.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.store import (
    KeyNotFound,
    LocalStore,
    PreconditionFailed,
    S3Store,
    Store,
    StoreError,
    create_once,
    store_from_settings,
    store_from_uri,
)
from core.settings import load_settings
from tests.fixtures.moto import boto_client

OpenStore = Callable[[], Store]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def open_same(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    """A factory of independent handles on one fresh store of the parametrised backend."""
    if request.param == "local":
        root = tmp_path / "store"
        return lambda: LocalStore(root)
    uri = request.getfixturevalue("s3_store_uri")
    endpoint = request.getfixturevalue("moto_server")
    return lambda: S3Store(uri, client=boto_client("s3", endpoint))


@pytest.fixture
def store(open_same: OpenStore) -> Store:
    return open_same()


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _all_files(root: Path) -> list[str]:
    """Every file under ``root``, hidden ones included (temporary files are hidden)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


INVALID_KEYS = [
    "",
    "/",
    "..",
    "../evil",
    "a/../../evil",
    "a/../b",
    "a//b",
    "./a",
    "a/./b",
    ".hidden",
    "a/.tmp",
]


# --- the contract, on both backends -------------------------------------------------------------


def test_put_get_roundtrip_bytes_and_file(store: Store, tmp_path: Path) -> None:
    store.put_bytes("a/b/c.json", b'{"x": 1}')
    src = tmp_path / "model.bin"
    src.write_bytes(b"\x00\x01" * 1000)
    store.put_file("a/model.bin", src)

    assert store.get_bytes("a/b/c.json") == b'{"x": 1}'
    assert store.get_bytes("a/model.bin") == src.read_bytes()
    out = store.get_file("a/model.bin", tmp_path / "out" / "copy.bin")
    assert out.read_bytes() == src.read_bytes()
    assert store.exists("a/b/c.json")
    assert not store.exists("a/b/missing.json")
    assert store.url("a/b/c.json") == f"{store.uri}/a/b/c.json"


def test_overwrite_replaces_content(store: Store) -> None:
    store.put_bytes("k", b"old")
    store.put_bytes("k", b"new")
    assert store.get_bytes("k") == b"new"


def test_delete_removes_the_key(store: Store) -> None:
    store.put_bytes("a/b.json", b"1")
    store.put_bytes("a/c.json", b"2")
    store.delete("a/b.json")
    assert not store.exists("a/b.json")
    assert store.list("") == ["a/c.json"]
    store.delete("a/b.json")  # deleting a missing key is not an error


def test_list_is_sorted_and_scoped_by_prefix(store: Store) -> None:
    for key in ["m/b/2.json", "m/a/1.json", "m/a/0.json", "n/x.json", "mm/y.json"]:
        store.put_bytes(key, b"1")
    assert store.list("") == ["m/a/0.json", "m/a/1.json", "m/b/2.json", "mm/y.json", "n/x.json"]
    assert store.list("m") == ["m/a/0.json", "m/a/1.json", "m/b/2.json"]  # not mm/
    assert store.list("m/") == store.list("m")
    assert store.list("m/a") == ["m/a/0.json", "m/a/1.json"]
    assert store.list("m/a/") == store.list("m/a")
    assert store.list("nothing/here") == []
    assert store.list("nothing") == []


def test_get_missing_raises_key_not_found(store: Store, tmp_path: Path) -> None:
    store.put_bytes("dir/file", b"1")
    with pytest.raises(KeyNotFound):
        store.get_bytes("missing")
    # A prefix is not a key, as on S3.
    with pytest.raises(KeyNotFound):
        store.get_bytes("dir")
    with pytest.raises(KeyNotFound):
        store.get_file("missing", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # Callers that expect a dict-like miss can catch KeyError.
    with pytest.raises(KeyError):
        store.get_bytes("missing")


def test_conditional_create_refuses_an_existing_key(store: Store, tmp_path: Path) -> None:
    store.put_bytes("claim.json", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("claim.json", b"second", if_none_match=True)
    src = tmp_path / "f"
    src.write_bytes(b"third")
    with pytest.raises(PreconditionFailed):
        store.put_file("claim.json", src, if_none_match=True)
    assert store.get_bytes("claim.json") == b"first"
    store.put_file("other.json", src, if_none_match=True)
    assert store.get_bytes("other.json") == b"third"
    store.put_bytes("claim.json", b"overwrite")  # unconditional writes still replace
    assert store.get_bytes("claim.json") == b"overwrite"


def test_conditional_create_has_one_winner_across_handles(open_same: OpenStore) -> None:
    threads = 8
    stores = [open_same() for _ in range(threads)]
    barrier = threading.Barrier(threads)
    winners: list[int] = []
    losers: list[int] = []

    def claim(i: int) -> None:
        barrier.wait()
        try:
            stores[i].put_bytes("models/m/v1/claim.json", str(i).encode(), if_none_match=True)
            winners.append(i)
        except PreconditionFailed:
            losers.append(i)

    pool = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(winners) == 1 and len(losers) == threads - 1
    assert stores[0].get_bytes("models/m/v1/claim.json") == str(winners[0]).encode()


def test_create_once_is_true_for_a_retry_of_its_own_write(store: Store) -> None:
    # A client retry of a write whose response was lost must not count as losing.
    assert create_once(store, "k", b"mine")
    assert create_once(store, "k", b"mine")
    assert not create_once(store, "k", b"someone else's")
    assert store.get_bytes("k") == b"mine"


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_rejected(store: Store, key: str) -> None:
    with pytest.raises(StoreError):
        store.put_bytes(key, b"x")
    with pytest.raises(StoreError):
        store.get_bytes(key)
    with pytest.raises(StoreError):
        store.exists(key)
    with pytest.raises(StoreError):
        store.delete(key)
    assert store.list("") == []


def test_list_refuses_a_prefix_that_escapes_the_root(store: Store, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    with pytest.raises(StoreError):
        store.list("../")


def test_leading_and_trailing_slashes_name_the_same_key(store: Store) -> None:
    store.put_bytes("/a/b/", b"1")
    assert store.get_bytes("a/b") == b"1"


# --- the local store only -----------------------------------------------------------------------


def test_the_local_url_names_the_real_file(local: LocalStore) -> None:
    # A human can open it.
    local.put_bytes("a/b/c.json", b'{"x": 1}')
    assert Path(local.url("a/b/c.json")).read_bytes() == b'{"x": 1}'


def test_files_follow_the_umask_not_0600(local: LocalStore) -> None:
    # A serving process running as another user reads the local store.
    old = os.umask(0o022)
    try:
        local.put_bytes("k", b"v")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(Path(local.url("k")).stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IRGRP, oct(mode)


def test_delete_removes_key_and_empty_folders(local: LocalStore) -> None:
    local.put_bytes("a/b/c", b"1")
    local.put_bytes("a/d", b"2")
    local.delete("a/b/c")
    assert not local.exists("a/b/c")
    assert local.list("") == ["a/d"]
    assert not (local.root / "a" / "b").exists()
    local.delete("a/b/c")  # deleting a missing key is not an error
    local.delete("a/d")
    assert local.list("") == []
    assert local.root.exists()  # the root itself stays


def test_failed_write_leaves_no_key_and_no_temp_file(
    local: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * (3 << 20))

    def copy_half_then_fail(fsrc, fdst, length=0):  # type: ignore[no-untyped-def]
        fdst.write(fsrc.read(1 << 20))
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfileobj", copy_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        local.put_file("models/m/v1/model.tar.gz", src)
    assert not local.exists("models/m/v1/model.tar.gz")
    assert local.list("") == []
    assert _all_files(local.root) == []  # no temporary file left behind either


def test_failed_overwrite_keeps_the_old_value(
    local: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.put_bytes("k", b"complete old value")
    src = tmp_path / "new.bin"
    src.write_bytes(b"n" * 4096)

    def fail(fsrc, fdst, length=0):  # type: ignore[no-untyped-def]
        fdst.write(b"partial")
        raise OSError("interrupted")

    monkeypatch.setattr(shutil, "copyfileobj", fail)
    with pytest.raises(OSError):
        local.put_file("k", src)
    assert local.get_bytes("k") == b"complete old value"


def test_readers_never_see_a_partial_write(local: LocalStore) -> None:
    values = [bytes([i]) * (256 << 10) for i in range(1, 5)]
    local.put_bytes("k", values[0])
    stop = threading.Event()
    seen: set[bytes] = set()

    def read() -> None:
        while not stop.is_set():
            seen.add(local.get_bytes("k"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            for value in values:
                local.put_bytes("k", value)
    finally:
        stop.set()
        reader.join()
    assert seen <= set(values), "a reader saw a value that was never written whole"


def test_losing_conditional_creates_leave_no_temporary_file(
    local: LocalStore, tmp_path: Path
) -> None:
    local.put_bytes("claim.json", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        local.put_bytes("claim.json", b"second", if_none_match=True)
    src = tmp_path / "f"
    src.write_bytes(b"third")
    with pytest.raises(PreconditionFailed):
        local.put_file("claim.json", src, if_none_match=True)
    assert _all_files(local.root) == ["claim.json"]  # the losers left nothing behind


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_write_nothing_inside_or_outside_the_root(
    local: LocalStore, tmp_path: Path, key: str
) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(StoreError):
        local.put_bytes(key, b"x")
    with pytest.raises(StoreError):
        local.put_file(key, src)
    assert not (tmp_path / "evil").exists()
    assert not local.root.exists() or _all_files(local.root) == []


def test_store_from_uri_picks_the_backend(tmp_path: Path) -> None:
    local = store_from_uri(str(tmp_path / "s"))
    assert isinstance(local, LocalStore)
    assert local.uri == str((tmp_path / "s").resolve())


def test_store_from_settings_opens_the_configured_store(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLOPS_STORE_URI", str(tmp_path / "configured"))
    store = store_from_settings(load_settings())
    assert isinstance(store, LocalStore)
    assert store.uri == str((tmp_path / "configured").resolve())

"""LocalStore: the embedded store must keep the promises S3 keeps (atomic, conditional writes)."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from adapters.store import KeyNotFound, LocalStore, PreconditionFailed, StoreError, store_from_uri


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _all_files(root: Path) -> list[str]:
    """Every file under ``root``, hidden ones included (temporary files are hidden)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_put_get_roundtrip_bytes_and_file(store: LocalStore, tmp_path: Path) -> None:
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
    # The URL names the real file, so a human can open it.
    assert Path(store.url("a/b/c.json")).read_bytes() == b'{"x": 1}'


def test_overwrite_replaces_content(store: LocalStore) -> None:
    store.put_bytes("k", b"old")
    store.put_bytes("k", b"new")
    assert store.get_bytes("k") == b"new"


def test_files_follow_the_umask_not_0600(store: LocalStore) -> None:
    # A serving process running as another user reads the local store.
    old = os.umask(0o022)
    try:
        store.put_bytes("k", b"v")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(Path(store.url("k")).stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IRGRP, oct(mode)


def test_list_is_sorted_and_scoped_by_prefix(store: LocalStore) -> None:
    for key in ["m/b/2.json", "m/a/1.json", "m/a/0.json", "n/x.json", "mm/y.json"]:
        store.put_bytes(key, b"1")
    assert store.list("") == ["m/a/0.json", "m/a/1.json", "m/b/2.json", "mm/y.json", "n/x.json"]
    assert store.list("m") == ["m/a/0.json", "m/a/1.json", "m/b/2.json"]
    assert store.list("m/") == store.list("m")
    assert store.list("m/a") == ["m/a/0.json", "m/a/1.json"]
    assert store.list("nothing/here") == []


def test_get_missing_raises_key_not_found(store: LocalStore, tmp_path: Path) -> None:
    store.put_bytes("dir/file", b"1")
    with pytest.raises(KeyNotFound):
        store.get_bytes("missing")
    # A prefix is not a key, as on S3.
    with pytest.raises(KeyNotFound):
        store.get_bytes("dir")
    with pytest.raises(KeyNotFound):
        store.get_file("missing", tmp_path / "x")
    # Callers that expect a dict-like miss can catch KeyError.
    with pytest.raises(KeyError):
        store.get_bytes("missing")


def test_delete_removes_key_and_empty_folders(store: LocalStore) -> None:
    store.put_bytes("a/b/c", b"1")
    store.put_bytes("a/d", b"2")
    store.delete("a/b/c")
    assert not store.exists("a/b/c")
    assert store.list("") == ["a/d"]
    assert not (store.root / "a" / "b").exists()
    store.delete("a/b/c")  # deleting a missing key is not an error
    store.delete("a/d")
    assert store.list("") == []
    assert store.root.exists()  # the root itself stays


def test_failed_write_leaves_no_key_and_no_temp_file(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * (3 << 20))

    def copy_half_then_fail(fsrc, fdst, length=0):  # type: ignore[no-untyped-def]
        fdst.write(fsrc.read(1 << 20))
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfileobj", copy_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store.put_file("models/m/v1/model.tar.gz", src)
    assert not store.exists("models/m/v1/model.tar.gz")
    assert store.list("") == []
    assert _all_files(store.root) == []  # no temporary file left behind either


def test_failed_overwrite_keeps_the_old_value(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_bytes("k", b"complete old value")
    src = tmp_path / "new.bin"
    src.write_bytes(b"n" * 4096)

    def fail(fsrc, fdst, length=0):  # type: ignore[no-untyped-def]
        fdst.write(b"partial")
        raise OSError("interrupted")

    monkeypatch.setattr(shutil, "copyfileobj", fail)
    with pytest.raises(OSError):
        store.put_file("k", src)
    assert store.get_bytes("k") == b"complete old value"


def test_readers_never_see_a_partial_write(store: LocalStore) -> None:
    values = [bytes([i]) * (256 << 10) for i in range(1, 5)]
    store.put_bytes("k", values[0])
    stop = threading.Event()
    seen: set[bytes] = set()

    def read() -> None:
        while not stop.is_set():
            seen.add(store.get_bytes("k"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            for value in values:
                store.put_bytes("k", value)
    finally:
        stop.set()
        reader.join()
    assert seen <= set(values), "a reader saw a value that was never written whole"


def test_conditional_create_refuses_an_existing_key(store: LocalStore, tmp_path: Path) -> None:
    store.put_bytes("claim.json", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("claim.json", b"second", if_none_match=True)
    src = tmp_path / "f"
    src.write_bytes(b"third")
    with pytest.raises(PreconditionFailed):
        store.put_file("claim.json", src, if_none_match=True)
    assert store.get_bytes("claim.json") == b"first"
    assert _all_files(store.root) == ["claim.json"]  # the losers left nothing behind
    store.put_file("other.json", src, if_none_match=True)
    assert store.get_bytes("other.json") == b"third"


def test_conditional_create_has_one_winner_under_concurrency(store: LocalStore) -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    winners: list[int] = []
    losers: list[int] = []

    def claim(i: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("models/m/v1/claim.json", str(i).encode(), if_none_match=True)
            winners.append(i)
        except PreconditionFailed:
            losers.append(i)

    pool = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(winners) == 1 and len(losers) == threads - 1
    assert store.get_bytes("models/m/v1/claim.json") == str(winners[0]).encode()


@pytest.mark.parametrize(
    "key", ["", "/", "..", "../evil", "a/../../evil", "a//b", "./a", "a/./b", ".hidden", "a/.tmp"]
)
def test_invalid_keys_are_rejected(store: LocalStore, tmp_path: Path, key: str) -> None:
    with pytest.raises(StoreError):
        store.put_bytes(key, b"x")
    with pytest.raises(StoreError):
        store.get_bytes(key)
    with pytest.raises(StoreError):
        store.exists(key)
    with pytest.raises(StoreError):
        store.delete(key)
    assert not (tmp_path / "evil").exists()
    assert not store.root.exists() or _all_files(store.root) == []


def test_list_refuses_a_prefix_that_escapes_the_root(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    with pytest.raises(StoreError):
        store.list("../")


def test_leading_and_trailing_slashes_name_the_same_key(store: LocalStore) -> None:
    store.put_bytes("/a/b/", b"1")
    assert store.get_bytes("a/b") == b"1"


def test_store_from_uri_picks_the_backend(tmp_path: Path) -> None:
    local = store_from_uri(str(tmp_path / "s"))
    assert isinstance(local, LocalStore)
    assert local.uri == str((tmp_path / "s").resolve())

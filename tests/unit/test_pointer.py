"""The pointer on the local store: latest.json, its append-only history, the rollback target."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from adapters.layout import PublishError
from adapters.pointer import move_latest, promotion_history, read_latest, rollback_target
from adapters.store import LocalStore, PreconditionFailed
from tests.fixtures.published import MODEL, publish_files


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


# --- the pointer and its history ---------------------------------------------------------------


def test_latest_is_none_before_any_promotion(store: LocalStore, tmp_path: Path) -> None:
    publish_files(store, tmp_path)
    assert read_latest(store, MODEL) is None
    assert promotion_history(store, MODEL) == []


def test_move_latest_points_at_the_version_and_appends_history(
    store: LocalStore, tmp_path: Path
) -> None:
    v1, v2 = publish_files(store, tmp_path, "a"), publish_files(store, tmp_path, "b")

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
    publish_files(store, tmp_path)
    move_latest(store, MODEL, "v1", reason="r")
    with pytest.raises(PreconditionFailed):
        store.put_bytes(f"models/{MODEL}/promotions/000001.json", b"{}", if_none_match=True)


def test_moving_to_the_current_version_is_a_no_op(store: LocalStore, tmp_path: Path) -> None:
    # A retried promotion task must not add a second record.
    publish_files(store, tmp_path)
    first = move_latest(store, MODEL, "v1", reason="r")
    again = move_latest(store, MODEL, "v1", reason="retry")
    assert again == first
    assert len(promotion_history(store, MODEL)) == 1


def test_move_latest_refuses_unknown_versions_and_core_overrides(
    store: LocalStore, tmp_path: Path
) -> None:
    publish_files(store, tmp_path)
    with pytest.raises(PublishError):
        move_latest(store, MODEL, "v9", reason="r")
    with pytest.raises(ValueError):
        move_latest(store, MODEL, "latest", reason="r")
    with pytest.raises(ValueError, match="version"):
        move_latest(store, MODEL, "v1", reason="r", extra={"version": "v7"})
    assert read_latest(store, MODEL) is None


def test_concurrent_moves_keep_every_record(store: LocalStore, tmp_path: Path) -> None:
    for tag in "abcdef":
        publish_files(store, tmp_path, tag)
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

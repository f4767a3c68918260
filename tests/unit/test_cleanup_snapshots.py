"""Superseded snapshots: which ones cleanup plans, and what applying the plan does to them.

On a directory store applying deletes them; on S3 it tags them for the bucket's lifecycle rule
(``tests/integration/test_bucket_setup.py`` checks the tag against the rule on moto server).
A snapshot is planned only when no training can read it again and no kept version's lineage
names it; applying re-reads the lineage of what the store holds then.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from adapters import layout
from adapters.registry import Registry
from adapters.store import LocalStore
from adapters.versions import publish_version
from core.cleanup_plan import DatasetInventory, plan_cleanup, superseded_snapshots
from core.config import RetentionPolicy
from tasks.cleanup import apply_plan, take_inventory

DATASET = "client_windows"


class NoRegistry:
    """A registry with no versions: the snapshot rules do not depend on it."""

    def list_versions(self, model: str) -> list[dict[str, Any]]:
        return []


def _snapshot(
    store: LocalStore, sid: str, newest: str, watermark: int, status: bool | None
) -> None:
    for name in ("part-00000.parquet", "part-00001.parquet"):
        store.put_bytes(layout.snapshot_file_key(DATASET, sid, name), b"rows")
    manifest = {
        "dataset": DATASET,
        "snapshot_id": sid,
        "created_at": newest,
        "watermark": {"column": "id", "from": None, "to": watermark},
        "event_time": {"column": "ts", "min": None, "max": newest},
    }
    store.put_bytes(layout.snapshot_manifest_key(DATASET, sid), json.dumps(manifest).encode())
    if status is not None:
        body = json.dumps({"success": status}).encode()
        store.put_bytes(layout.snapshot_validation_key(DATASET, sid), body)


def _version(store: LocalStore, tmp_path: Path, snapshots: str) -> None:
    model = tmp_path / f"model-{snapshots}.tar.gz"
    model.write_bytes(snapshots.encode())
    publish_version(store, "m", {"model.tar.gz": model}, {"snapshots": snapshots})


def _store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    _snapshot(store, "S1", "2026-01-01T10:00:00", 10, True)  # old, unused: superseded
    _snapshot(store, "S2", "2026-01-08T10:00:00", 20, True)  # old, named by v1's lineage
    _snapshot(store, "S3", "2026-03-01T10:00:00", 40, True)  # newest: the window's end
    _snapshot(store, "S4", "2026-01-02T10:00:00", 45, None)  # not validated: maybe in flight
    _snapshot(store, "S5", "2026-01-03T10:00:00", 50, False)  # rejected, old: superseded
    _snapshot(store, "S6", "2026-02-15T10:00:00", 30, True)  # inside the 30-day window
    _version(store, tmp_path, "S2")
    return store


def _plan(store: LocalStore, clean_store: bool = True) -> list[Any]:
    registry = cast(Registry, NoRegistry())
    inventory = take_inventory.fn(store, registry, ["m"], None, False, {DATASET: 30})
    return plan_cleanup(inventory, RetentionPolicy(), clean_store=clean_store)


def test_only_snapshots_no_training_or_kept_version_reads_are_planned(tmp_path: Path) -> None:
    store = _store(tmp_path)
    snapshots = {p.name: p for p in _plan(store) if p.kind == "snapshot"}
    assert set(snapshots) == {f"{DATASET}/S1", f"{DATASET}/S5"}
    assert all(p.action == "delete" for p in snapshots.values())
    assert "30-day training window" in snapshots[f"{DATASET}/S1"].reason
    # Without --clean-s3 no snapshot is planned, as no store version is.
    assert not [p for p in _plan(store, clean_store=False) if p.kind == "snapshot"]


def test_the_snapshot_holding_the_watermark_is_kept_however_old() -> None:
    old = datetime(2026, 1, 1)
    dataset = DatasetInventory(
        DATASET,
        7,
        [
            {"snapshot_id": "A", "status": "accepted", "max_event_time": old, "watermark_to": 99},
            {
                "snapshot_id": "B",
                "status": "accepted",
                "max_event_time": old.replace(month=3),
                "watermark_to": 50,
            },
        ],
    )
    # A's rows are older than the window, but the export resumes from its watermark.
    assert superseded_snapshots(dataset, set()) == []


def test_applying_retires_the_planned_snapshot_and_rechecks_the_lineage(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plan = _plan(store)
    # Between plan and apply, a new version names S5 in its lineage.
    _version(store, tmp_path, "S5,S3")
    done = {d["name"]: d["outcome"] for d in apply_plan.fn(store, None, plan, None)}
    assert done == {
        f"{DATASET}/S1": "deleted 4 file(s)",  # two parts, manifest, validation
        f"{DATASET}/S5": "skipped: a model version's lineage names it now",
    }
    assert store.list(layout.snapshot_prefix(DATASET, "S1")) == []
    assert store.list(layout.snapshot_prefix(DATASET, "S5"))
    assert store.list(layout.snapshot_prefix(DATASET, "S2"))  # v1's lineage

"""Parquet snapshots in the store: write one, list them, read them back, record validation.

A snapshot is ``snapshots/{dataset}/{snapshot_id}/part-NNNNN.parquet`` plus ``manifest.json``,
written last: a folder without a manifest is an interrupted export and is ignored. The manifest
records rows, schema, per-part and overall sha256, the watermark range, the event-time range,
the SQL and the (password-masked) source URL. After validation, ``validation.json`` beside it
says whether the snapshot was accepted.

The watermark (an autoincrement ``id``) only advances over *accepted* snapshots: rows of a
rejected or not-yet-validated snapshot are exported again next time, so rows fixed at the source
are picked up and nothing is skipped.

The keys are :mod:`adapters.layout`'s; the SQL that produces the part files is
:mod:`tasks.export`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from adapters import layout
from adapters.store import KeyNotFound, Store, sha256_file
from core.config import DatasetConfig

log = logging.getLogger(__name__)

ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us"),
    "bool": pa.bool_(),
}
"""Arrow type of each column type allowed in ``dataset.columns``."""


@dataclass(frozen=True)
class SnapshotInfo:
    """What one export wrote (the manifest's essentials).

    Attributes:
        dataset: dataset name (snapshot folder).
        snapshot_id: ``YYYYMMDDTHHMMSSZ-<first 8 hex of sha256>``, sortable by time.
        rows: rows in the snapshot.
        watermark_from: exclusive lower bound of the watermark (None: from the start).
        watermark_to: largest watermark value exported.
        min_event_time: ISO time of the oldest row ("" if every event time is null).
        max_event_time: ISO time of the newest row ("" if every event time is null).
        sha256: sha256 over the part files' hashes, in order.
        manifest_key: store key of ``manifest.json``.
        uri: store URL of the snapshot folder.
    """

    dataset: str
    snapshot_id: str
    rows: int
    watermark_from: int | None
    watermark_to: int
    min_event_time: str
    max_event_time: str
    sha256: str
    manifest_key: str
    uri: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def arrow_schema(dataset: DatasetConfig) -> pa.Schema:
    """The explicit Arrow schema of ``dataset.columns`` (every column nullable)."""
    return pa.schema([pa.field(name, ARROW_TYPES[kind]) for name, kind in dataset.columns.items()])


def combined_sha256(part_hashes: Sequence[str]) -> str:
    """sha256 over the part hashes, in order, one per line."""
    return hashlib.sha256("\n".join(part_hashes).encode()).hexdigest()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _new_snapshot_id(store: Store, dataset_name: str, created: datetime, digest: str) -> str:
    """``YYYYMMDDTHHMMSSZ-<hash8>``, moved on by a second while that folder is taken.

    Two exports of the same rows within one second would otherwise share a folder, and the
    second would inherit the first one's ``validation.json``.
    """
    stamp = created
    while True:
        snapshot_id = f"{stamp:%Y%m%dT%H%M%SZ}-{digest[:8]}"
        if not store.list(layout.snapshot_prefix(dataset_name, snapshot_id)):
            return snapshot_id
        stamp += timedelta(seconds=1)


# --- write ----------------------------------------------------------------------------------


def write_snapshot(
    store: Store,
    dataset: DatasetConfig,
    parts: Sequence[tuple[Path, int]],
    *,
    query: str,
    source: str,
    watermark_from: int | None,
    watermark_to: int,
    min_event_time: datetime | None,
    max_event_time: datetime | None,
) -> SnapshotInfo:
    """Upload local Parquet part files as a new snapshot of ``dataset``, the manifest last.

    Args:
        store: the store.
        dataset: the dataset the parts hold (its columns are the manifest's schema).
        parts: ``(local part file, rows in it)``, in order; at least one.
        query: the SQL that produced the rows, recorded in the manifest.
        source: the source database's URL with any password masked, recorded likewise.
        watermark_from: exclusive lower bound of the watermark (None: from the start).
        watermark_to: largest watermark value in the parts.
        min_event_time: oldest event time in the parts (None if every one is null).
        max_event_time: newest event time in the parts (None if every one is null).

    Returns:
        The new snapshot.
    """
    part_meta: list[dict[str, Any]] = [
        {"name": path.name, "rows": n, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path, n in parts
    ]
    rows = sum(n for _, n in parts)
    digest = combined_sha256([str(p["sha256"]) for p in part_meta])
    created = datetime.now(UTC)
    snapshot_id = _new_snapshot_id(store, dataset.name, created.replace(microsecond=0), digest)
    entries = []
    for (path, _), meta in zip(parts, part_meta, strict=True):
        key = layout.snapshot_file_key(dataset.name, snapshot_id, meta["name"])
        store.put_file(key, path)
        entries.append(
            {"key": key, "rows": meta["rows"], "sha256": meta["sha256"], "bytes": meta["bytes"]}
        )
    manifest = {
        "dataset": dataset.name,
        "snapshot_id": snapshot_id,
        "created_at": created.isoformat(),
        "rows": rows,
        "schema": dict(dataset.columns),
        "arrow_schema": {f.name: str(f.type) for f in arrow_schema(dataset)},
        "parts": entries,
        "sha256": digest,
        "watermark": {"column": dataset.watermark, "from": watermark_from, "to": watermark_to},
        "event_time": {
            "column": dataset.event_time,
            "min": _iso(min_event_time),
            "max": _iso(max_event_time),
        },
        "query": query,
        "source": source,
    }
    key = layout.snapshot_manifest_key(dataset.name, snapshot_id)
    # Last: the manifest's presence is what makes the snapshot exist.
    store.put_bytes(key, json.dumps(manifest, indent=2).encode())
    log.info(
        "%s: snapshot %s, %s rows in %s part(s)", dataset.name, snapshot_id, rows, len(entries)
    )
    return SnapshotInfo(
        dataset=dataset.name,
        snapshot_id=snapshot_id,
        rows=rows,
        watermark_from=watermark_from,
        watermark_to=watermark_to,
        min_event_time=_iso(min_event_time) or "",
        max_event_time=_iso(max_event_time) or "",
        sha256=digest,
        manifest_key=key,
        uri=store.url(layout.snapshot_prefix(dataset.name, snapshot_id)),
    )


# --- catalogue ------------------------------------------------------------------------------


def _status(store: Store, dataset_name: str, snapshot_id: str) -> str:
    try:
        outcome = json.loads(
            store.get_bytes(layout.snapshot_validation_key(dataset_name, snapshot_id))
        )
    except KeyNotFound:
        return "pending"
    return "accepted" if outcome.get("success") is True else "rejected"


def list_snapshots(store: Store, dataset_name: str) -> list[dict[str, Any]]:
    """Manifests of the complete snapshots of ``dataset_name``, oldest first.

    Each manifest gets a ``status`` key: ``accepted`` or ``rejected`` from ``validation.json``,
    ``pending`` when the snapshot has not been validated. Folders without ``manifest.json``
    (interrupted exports) are left out.
    """
    manifests = []
    for key in store.list(layout.snapshot_prefix(dataset_name)):
        parsed = layout.parse_snapshot_key(key)
        if parsed is None or parsed[2] != layout.MANIFEST:
            continue
        manifest = json.loads(store.get_bytes(key))
        manifest["status"] = _status(store, dataset_name, manifest["snapshot_id"])
        manifests.append(manifest)
    manifests.sort(key=lambda m: (m["created_at"], m["snapshot_id"]))
    return manifests


def record_validation(
    store: Store, dataset_name: str, snapshot_id: str, result: dict[str, Any]
) -> str:
    """Write ``validation.json`` next to a snapshot's manifest; return its key.

    ``result`` must say ``success`` (True: the snapshot is accepted and its rows move the
    watermark; False: rejected). It is stored as given, with ``recorded_at`` added.

    Raises:
        KeyError: ``result`` has no ``success``.
        KeyNotFound: no such snapshot.
    """
    if "success" not in result:
        raise KeyError("result needs a 'success' entry")
    if not store.exists(layout.snapshot_manifest_key(dataset_name, snapshot_id)):
        raise KeyNotFound(f"no snapshot {dataset_name}/{snapshot_id}")
    body = {
        "recorded_at": datetime.now(UTC).isoformat(),
        **result,
        "success": bool(result["success"]),
    }
    key = layout.snapshot_validation_key(dataset_name, snapshot_id)
    store.put_bytes(key, json.dumps(body, indent=2, default=str).encode())
    return key


def current_watermark(store: Store, dataset_name: str) -> int | None:
    """Largest watermark exported in an *accepted* snapshot (None if there is none)."""
    accepted = [m for m in list_snapshots(store, dataset_name) if m["status"] == "accepted"]
    if not accepted:
        return None
    return max(int(m["watermark"]["to"]) for m in accepted)


def retire_snapshot(store: Store, dataset_name: str, snapshot_id: str) -> str:
    """Hand a superseded snapshot's files to the store's expiry, the manifest last.

    On S3 each file is tagged for the bucket's lifecycle rule (``mlops store setup``), which
    expires it; a directory deletes them. The manifest goes last so that an interrupted call
    leaves a snapshot that still lists, and the next cleanup finishes it.

    Returns:
        What happened: ``tagged N file(s)`` or ``deleted N file(s)``.
    """
    keys = store.list(layout.snapshot_prefix(dataset_name, snapshot_id))
    manifest = layout.snapshot_manifest_key(dataset_name, snapshot_id)
    outcomes = [store.mark_superseded(k) for k in sorted(keys, key=lambda k: k == manifest)]
    return f"{outcomes[0] if outcomes else 'no'} {len(outcomes)} file(s)"


def read_snapshot_manifest(store: Store, dataset_name: str, snapshot_id: str) -> dict[str, Any]:
    """A snapshot's manifest.

    Raises:
        KeyNotFound: no such snapshot (or it is incomplete).
    """
    return json.loads(store.get_bytes(layout.snapshot_manifest_key(dataset_name, snapshot_id)))


def read_snapshots(store: Store, dataset: DatasetConfig, snapshot_ids: list[str]) -> pd.DataFrame:
    """The rows of ``snapshot_ids``, concatenated in the order given.

    Each part's sha256 is checked against its manifest before it is read. Columns follow
    ``dataset.columns``: ``int64``, ``float64``, ``str``, ``bool`` and naive ``datetime64[us]``;
    an integer column holding nulls comes back as ``float64`` with NaN (numpy integers have no
    null), which validation reports as nulls.

    Raises:
        ValueError: a part's content does not match its manifest (names the part), or a
            snapshot's columns differ from ``dataset.columns``.
        KeyNotFound: a snapshot or part is missing.
    """
    schema = arrow_schema(dataset)
    tables: list[pa.Table] = []
    with tempfile.TemporaryDirectory(prefix=f"read-{dataset.name}-") as tmp:
        for snapshot_id in snapshot_ids:
            manifest = read_snapshot_manifest(store, dataset.name, snapshot_id)
            for i, part in enumerate(manifest["parts"]):
                local = store.get_file(part["key"], Path(tmp) / f"{snapshot_id}-{i:05d}.parquet")
                actual = sha256_file(local)
                if actual != part["sha256"]:
                    raise ValueError(
                        f"{part['key']}: sha256 {actual} does not match the manifest's "
                        f"{part['sha256']}; the part changed after export"
                    )
                table = pq.read_table(local)
                if table.column_names != schema.names:
                    raise ValueError(
                        f"{part['key']}: columns {table.column_names} differ from the "
                        f"dataset's {schema.names}"
                    )
                tables.append(table.cast(schema))
                local.unlink()
    combined = pa.concat_tables(tables) if tables else schema.empty_table()
    frame = combined.to_pandas()
    for name, kind in dataset.columns.items():
        if kind == "string":
            frame[name] = frame[name].astype("str")
        elif kind == "timestamp":
            frame[name] = frame[name].astype("datetime64[us]")
    return frame

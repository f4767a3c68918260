"""Incremental export of source tables into Parquet snapshots in the store, and reading them back.

A snapshot is ``snapshots/{dataset}/{snapshot_id}/part-NNNNN.parquet`` plus ``manifest.json``,
written last: a folder without a manifest is an interrupted export and is ignored. The manifest
records rows, schema, per-part and overall sha256, the watermark range, the event-time range,
the SQL and the (password-masked) source URL. After validation, ``validation.json`` beside it
says whether the snapshot was accepted.

The watermark (an autoincrement ``id``) only advances over *accepted* snapshots: rows of a
rejected or not-yet-validated snapshot are exported again next time, so rows fixed at the source
are picked up and nothing is skipped.

The export streams: rows arrive in chunks from a server-side cursor, become Arrow record
batches with the dataset's explicit schema, and go to a Parquet writer that rolls to a new part
file every ``part_rows``; memory stays flat whatever the table's size.

Plain functions first (no Prefect), then thin Prefect tasks for the flows.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import make_url

from adapters.store import KeyNotFound, Store, sha256_file
from core.config import DatasetConfig, ModelConfig

log = logging.getLogger(__name__)

ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us"),
    "bool": pa.bool_(),
}
"""Arrow type of each column type allowed in ``dataset.columns``."""

PARQUET_COMPRESSION = "zstd"


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


# --- keys and small helpers -----------------------------------------------------------------


def snapshot_prefix(dataset_name: str, snapshot_id: str | None = None) -> str:
    """``snapshots/{dataset}`` or ``snapshots/{dataset}/{snapshot_id}``."""
    base = f"snapshots/{dataset_name}"
    return f"{base}/{snapshot_id}" if snapshot_id else base


def manifest_key(dataset_name: str, snapshot_id: str) -> str:
    """Store key of a snapshot's manifest."""
    return f"{snapshot_prefix(dataset_name, snapshot_id)}/manifest.json"


def validation_key(dataset_name: str, snapshot_id: str) -> str:
    """Store key of a snapshot's validation outcome."""
    return f"{snapshot_prefix(dataset_name, snapshot_id)}/validation.json"


def arrow_schema(dataset: DatasetConfig) -> pa.Schema:
    """The explicit Arrow schema of ``dataset.columns`` (every column nullable)."""
    return pa.schema([pa.field(name, ARROW_TYPES[kind]) for name, kind in dataset.columns.items()])


def combined_sha256(part_hashes: Sequence[str]) -> str:
    """sha256 over the part hashes, in order, one per line."""
    return hashlib.sha256("\n".join(part_hashes).encode()).hexdigest()


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return make_url(url).render_as_string(hide_password=True)


def export_query(dataset: DatasetConfig, incremental: bool) -> str:
    """The SELECT run by the export: ``dataset.query`` with the watermark predicate and order."""
    where = f" WHERE {dataset.watermark} > :wm" if incremental else ""
    return f"{dataset.query}{where} ORDER BY {dataset.watermark}"


def _to_arrow(values: Sequence[Any], kind: str, column: str) -> pa.Array:
    """One column of a chunk as an Arrow array of the dataset's type.

    Drivers differ: SQLite returns timestamps as text and booleans as 0/1, PostgreSQL a
    NUMERIC as Decimal. Values that do not convert directly are converted by Arrow's cast,
    which parses ISO timestamps and refuses anything lossy.
    """
    target = ARROW_TYPES[kind]
    try:
        return pa.array(values, type=target, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        pass
    try:
        raw = pa.array(values)
        if kind == "timestamp" and pa.types.is_string(raw.type):
            # "2026-01-05 00:00:00.000000" (SQLite) -> timestamp; Arrow's ISO-8601 parser.
            return pc.cast(raw, target)
        return pc.cast(raw, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"column {column!r}: cannot convert values to {kind}: {exc}") from exc


def _batch(
    rows: Sequence[Sequence[Any]], dataset: DatasetConfig, schema: pa.Schema
) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in dataset.columns]
    arrays = [
        _to_arrow(values, kind, name)
        for values, (name, kind) in zip(columns, dataset.columns.items(), strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class _PartWriter:
    """Writes record batches to ``part-NNNNN.parquet`` files of at most ``part_rows`` rows."""

    def __init__(self, directory: Path, schema: pa.Schema, part_rows: int) -> None:
        self.directory = directory
        self.schema = schema
        self.part_rows = part_rows
        self.parts: list[tuple[Path, int]] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_part = 0

    def _open(self) -> None:
        path = self.directory / f"part-{len(self.parts):05d}.parquet"
        self._writer = pq.ParquetWriter(path, self.schema, compression=PARQUET_COMPRESSION)
        self.parts.append((path, 0))
        self._rows_in_part = 0

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            path, _ = self.parts[-1]
            self.parts[-1] = (path, self._rows_in_part)
            self._writer = None

    def write(self, batch: pa.RecordBatch) -> None:
        offset = 0
        while offset < batch.num_rows:
            if self._writer is None:
                self._open()
            assert self._writer is not None
            take = min(self.part_rows - self._rows_in_part, batch.num_rows - offset)
            self._writer.write_batch(batch.slice(offset, take))
            self._rows_in_part += take
            offset += take
            if self._rows_in_part >= self.part_rows:
                self._close_part()

    def close(self) -> list[tuple[Path, int]]:
        self._close_part()
        return self.parts


class _Range:
    """Running min/max of a column across batches (nulls ignored)."""

    def __init__(self) -> None:
        self.min: Any = None
        self.max: Any = None

    def update(self, array: pa.Array) -> None:
        result = pc.min_max(array)
        lo, hi = result["min"].as_py(), result["max"].as_py()
        if lo is not None and (self.min is None or lo < self.min):
            self.min = lo
        if hi is not None and (self.max is None or hi > self.max):
            self.max = hi


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while rows stream through.

    Each chunk allocates tens of thousands of row tuples while the previous ones are still
    alive, which triggers collections that traverse all of them: measured here, that doubled
    the export time. The loop creates no reference cycles; reference counting frees each
    chunk as the next arrives, so memory stays flat either way.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _new_snapshot_id(store: Any, dataset_name: str, created: datetime, digest: str) -> str:
    """``YYYYMMDDTHHMMSSZ-<hash8>``, moved on by a second while that folder is taken.

    Two exports of the same rows within one second would otherwise share a folder, and the
    second would inherit the first one's ``validation.json``.
    """
    stamp = created
    while True:
        snapshot_id = f"{stamp:%Y%m%dT%H%M%SZ}-{digest[:8]}"
        if not store.list(snapshot_prefix(dataset_name, snapshot_id)):
            return snapshot_id
        stamp += timedelta(seconds=1)


# --- export ---------------------------------------------------------------------------------


def export_snapshot(
    url: str,
    store: Any,
    dataset: DatasetConfig,
    *,
    chunk_rows: int = 50_000,
    part_rows: int = 1_000_000,
    progress: Callable[[int], None] | None = None,
) -> SnapshotInfo | None:
    """Export the rows added since the last accepted snapshot as a new snapshot.

    Args:
        url: SQLAlchemy URL of the source database.
        store: a :mod:`adapters.store` store (local or S3).
        dataset: what to export (table, columns and their types, watermark, event time).
        chunk_rows: rows fetched from the database per chunk.
        part_rows: rows per Parquet part file.
        progress: called with the number of rows exported so far after each chunk.

    Returns:
        The new snapshot, or ``None`` when there are no rows past the watermark.

    Raises:
        ValueError: a value cannot be converted to its column's type (names the column).
        sqlalchemy.exc.SQLAlchemyError: the query failed (missing table or column, ...).
    """
    if chunk_rows < 1 or part_rows < 1:
        raise ValueError("chunk_rows and part_rows must be >= 1")
    watermark = current_watermark(store, dataset.name)
    sql = export_query(dataset, incremental=watermark is not None)
    params = {"wm": watermark} if watermark is not None else {}
    schema = arrow_schema(dataset)
    wm_range, event_range = _Range(), _Range()
    rows = 0
    engine = sa.create_engine(url)
    try:
        with tempfile.TemporaryDirectory(prefix=f"export-{dataset.name}-") as tmp:
            writer = _PartWriter(Path(tmp), schema, part_rows)
            try:
                with _gc_paused(), engine.connect() as conn:
                    result = conn.execution_options(
                        stream_results=True, yield_per=chunk_rows
                    ).execute(sa.text(sql), params)
                    # The size is explicit: without a server-side cursor (SQLite) the result
                    # would otherwise fall back to the DBAPI's arraysize, one row.
                    for chunk in result.partitions(chunk_rows):
                        batch = _batch(chunk, dataset, schema)
                        writer.write(batch)
                        wm_range.update(batch.column(dataset.watermark))
                        event_range.update(batch.column(dataset.event_time))
                        rows += batch.num_rows
                        if progress:
                            progress(rows)
            finally:
                parts = writer.close()
            if rows == 0:
                log.info("%s: no rows past watermark %s", dataset.name, watermark)
                return None
            return _upload(
                store, dataset, parts, rows, sql, url, watermark, wm_range, event_range, schema
            )
    finally:
        engine.dispose()


def _upload(
    store: Any,
    dataset: DatasetConfig,
    parts: list[tuple[Path, int]],
    rows: int,
    sql: str,
    url: str,
    watermark: int | None,
    wm_range: _Range,
    event_range: _Range,
    schema: pa.Schema,
) -> SnapshotInfo:
    part_meta: list[dict[str, Any]] = [
        {"name": path.name, "rows": n, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path, n in parts
    ]
    digest = combined_sha256([str(p["sha256"]) for p in part_meta])
    created = datetime.now(UTC)
    snapshot_id = _new_snapshot_id(store, dataset.name, created.replace(microsecond=0), digest)
    prefix = snapshot_prefix(dataset.name, snapshot_id)
    entries = []
    for (path, _), meta in zip(parts, part_meta, strict=True):
        key = f"{prefix}/{meta['name']}"
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
        "arrow_schema": {f.name: str(f.type) for f in schema},
        "parts": entries,
        "sha256": digest,
        "watermark": {"column": dataset.watermark, "from": watermark, "to": int(wm_range.max)},
        "event_time": {
            "column": dataset.event_time,
            "min": _iso(event_range.min),
            "max": _iso(event_range.max),
        },
        "query": sql,
        "source": mask_url(url),
    }
    key = manifest_key(dataset.name, snapshot_id)
    # Last: the manifest's presence is what makes the snapshot exist.
    store.put_bytes(key, json.dumps(manifest, indent=2).encode())
    log.info(
        "%s: snapshot %s, %s rows in %s part(s)", dataset.name, snapshot_id, rows, len(entries)
    )
    return SnapshotInfo(
        dataset=dataset.name,
        snapshot_id=snapshot_id,
        rows=rows,
        watermark_from=watermark,
        watermark_to=int(wm_range.max),
        min_event_time=_iso(event_range.min) or "",
        max_event_time=_iso(event_range.max) or "",
        sha256=digest,
        manifest_key=key,
        uri=store.url(prefix),
    )


# --- catalogue ------------------------------------------------------------------------------


def _status(store: Any, dataset_name: str, snapshot_id: str) -> str:
    try:
        outcome = json.loads(store.get_bytes(validation_key(dataset_name, snapshot_id)))
    except KeyNotFound:
        return "pending"
    return "accepted" if outcome.get("success") is True else "rejected"


def list_snapshots(store: Any, dataset_name: str) -> list[dict[str, Any]]:
    """Manifests of the complete snapshots of ``dataset_name``, oldest first.

    Each manifest gets a ``status`` key: ``accepted`` or ``rejected`` from ``validation.json``,
    ``pending`` when the snapshot has not been validated. Folders without ``manifest.json``
    (interrupted exports) are left out.
    """
    manifests = []
    for key in store.list(snapshot_prefix(dataset_name)):
        if not key.endswith("/manifest.json"):
            continue
        manifest = json.loads(store.get_bytes(key))
        manifest["status"] = _status(store, dataset_name, manifest["snapshot_id"])
        manifests.append(manifest)
    manifests.sort(key=lambda m: (m["created_at"], m["snapshot_id"]))
    return manifests


def record_validation(
    store: Any, dataset_name: str, snapshot_id: str, result: dict[str, Any]
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
    if not store.exists(manifest_key(dataset_name, snapshot_id)):
        raise KeyNotFound(f"no snapshot {dataset_name}/{snapshot_id}")
    body = {
        "recorded_at": datetime.now(UTC).isoformat(),
        **result,
        "success": bool(result["success"]),
    }
    key = validation_key(dataset_name, snapshot_id)
    store.put_bytes(key, json.dumps(body, indent=2, default=str).encode())
    return key


def current_watermark(store: Any, dataset_name: str) -> int | None:
    """Largest watermark exported in an *accepted* snapshot (None if there is none)."""
    accepted = [m for m in list_snapshots(store, dataset_name) if m["status"] == "accepted"]
    if not accepted:
        return None
    return max(int(m["watermark"]["to"]) for m in accepted)


def read_manifest(store: Any, dataset_name: str, snapshot_id: str) -> dict[str, Any]:
    """A snapshot's manifest.

    Raises:
        KeyNotFound: no such snapshot (or it is incomplete).
    """
    return json.loads(store.get_bytes(manifest_key(dataset_name, snapshot_id)))


def read_snapshots(store: Any, dataset: DatasetConfig, snapshot_ids: list[str]) -> pd.DataFrame:
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
            manifest = read_manifest(store, dataset.name, snapshot_id)
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


# --- Prefect tasks --------------------------------------------------------------------------


def _run_logger() -> Any:
    """The Prefect run logger inside a run, this module's logger outside one (``task.fn``)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


@task(name="export-snapshot", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def export_task(
    url: str,
    store: Any,
    dataset: DatasetConfig,
    chunk_rows: int = 50_000,
    part_rows: int = 1_000_000,
) -> SnapshotInfo | None:
    """:func:`export_snapshot` as a Prefect task (retried: the database or store may blip)."""
    return export_snapshot(url, store, dataset, chunk_rows=chunk_rows, part_rows=part_rows)


@task(name="export-new-data", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def export_new_data(
    source_url: str, store: Store, cfg: ModelConfig, chunk_rows: int, part_rows: int
) -> SnapshotInfo | None:
    """Export the model's dataset from the source database into the store.

    Args:
        source_url: SQLAlchemy URL of the source database.
        store: where snapshots go.
        cfg: the model whose dataset is exported.
        chunk_rows: rows fetched per database round trip.
        part_rows: rows per Parquet part file.

    Returns:
        The new snapshot, or ``None`` when no rows arrived since the last accepted snapshot.
    """
    logger = _run_logger()
    info = export_snapshot(
        source_url, store, cfg.dataset, chunk_rows=chunk_rows, part_rows=part_rows
    )
    if info is None:
        logger.info("%s: no new rows since the last accepted snapshot", cfg.dataset.name)
    else:
        logger.info(
            "%s: snapshot %s with %s rows (watermark %s -> %s, events %s .. %s)",
            cfg.dataset.name, info.snapshot_id, info.rows, info.watermark_from,
            info.watermark_to, info.min_event_time, info.max_event_time,
        )  # fmt: skip
    return info


@task(name="list-snapshots", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def list_snapshots_task(store: Any, dataset_name: str) -> list[dict[str, Any]]:
    """:func:`list_snapshots` as a Prefect task."""
    return list_snapshots(store, dataset_name)


@task(name="record-validation", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def record_validation_task(
    store: Any, dataset_name: str, snapshot_id: str, result: dict[str, Any]
) -> str:
    """:func:`record_validation` as a Prefect task (idempotent: it overwrites one key)."""
    return record_validation(store, dataset_name, snapshot_id, result)

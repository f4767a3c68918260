"""Incremental export of source tables into Parquet snapshots in the store.

The export streams: rows arrive in chunks from a server-side cursor, become Arrow record
batches with the dataset's explicit schema, and go to a Parquet writer that rolls to a new part
file every ``part_rows``; memory stays flat whatever the table's size. The parts then become a
snapshot through :func:`adapters.snapshots.write_snapshot` (the snapshot's keys, manifest and
watermark are :mod:`adapters.snapshots`'). Which rows are new is :mod:`tasks.watermark`'s rule,
shared with the check ``mlops retrain`` makes before it starts a flow.

Plain functions first (no Prefect), then thin Prefect tasks for the flows.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters import layout
from adapters.snapshots import ARROW_TYPES, SnapshotInfo, arrow_schema, write_snapshot
from adapters.source import mask_url, stream_rows
from adapters.store import Store
from core.config import DatasetConfig, ModelConfig
from tasks.watermark import export_range

log = logging.getLogger(__name__)

PARQUET_COMPRESSION = "zstd"


# --- rows to Arrow and Parquet --------------------------------------------------------------


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
        path = self.directory / layout.snapshot_part_name(len(self.parts))
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


# --- export ---------------------------------------------------------------------------------


def export_snapshot(
    url: str,
    store: Store,
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
    pending = export_range(store, dataset)
    watermark, sql = pending.watermark, pending.sql
    schema = arrow_schema(dataset)
    wm_range, event_range = _Range(), _Range()
    rows = 0
    with tempfile.TemporaryDirectory(prefix=f"export-{dataset.name}-") as tmp:
        writer = _PartWriter(Path(tmp), schema, part_rows)
        try:
            with stream_rows(url, sql, pending.params, chunk_rows) as chunks:
                for chunk in chunks:
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
        return write_snapshot(
            store,
            dataset,
            parts,
            query=sql,
            source=mask_url(url),
            watermark_from=watermark,
            watermark_to=int(wm_range.max),
            min_event_time=event_range.min,
            max_event_time=event_range.max,
        )


# --- Prefect tasks --------------------------------------------------------------------------


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
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
    store: Store,
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

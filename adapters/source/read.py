"""Reading the source database: the export's streamed query and the monitor's recent rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from adapters.source.schema import gc_paused
from core.config import DatasetConfig


def export_query(dataset: DatasetConfig, incremental: bool, *, ordered: bool = True) -> str:
    """The SELECT run by the export: ``dataset.query`` with the watermark predicate and order.

    ``ordered=False`` leaves the ORDER BY out, for :func:`has_rows`: whether any row matches
    does not depend on the order, and a database need not sort to answer it.
    """
    where = f" WHERE {dataset.watermark} > :wm" if incremental else ""
    order = f" ORDER BY {dataset.watermark}" if ordered else ""
    return f"{dataset.query}{where}{order}"


def has_rows(url: str, sql: str, params: dict[str, Any]) -> bool:
    """Whether ``sql`` returns at least one row; the database stops at the first one.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or the query fails
            (a missing table or column), as the export's own query would.
    """
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            probe = sa.text(f"SELECT 1 FROM ({sql}) AS pending LIMIT 1")
            return conn.execute(probe, params).first() is not None
    finally:
        engine.dispose()


@contextmanager
def stream_rows(
    url: str, sql: str, params: dict[str, Any], chunk_rows: int
) -> Iterator[Iterator[Sequence[Sequence[Any]]]]:
    """Run ``sql`` on a server-side cursor; yield an iterator of chunks of ``chunk_rows`` rows.

    The garbage collector is paused while the rows stream (see :func:`gc_paused`), and the
    engine is disposed when the block ends.
    """
    engine = sa.create_engine(url)
    try:
        with gc_paused(), engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(
                sa.text(sql), params
            )
            # The size is explicit: without a server-side cursor (SQLite) the result would
            # otherwise fall back to the DBAPI's arraysize, one row.
            yield result.partitions(chunk_rows)
    finally:
        engine.dispose()


def recent_rows(url: str, dataset: DatasetConfig, days: int) -> list[tuple[Any, ...]]:
    """The rows of ``dataset`` from the last ``days`` before its table's latest event time.

    The window ends at the newest row, not at the clock, so a source that stopped receiving
    data still shows its last ``days`` of it.

    Args:
        url: SQLAlchemy URL of the source database.
        dataset: the model's dataset (table, columns, event time, watermark).
        days: length of the window, in days.

    Returns:
        Plain tuples in the order of ``dataset.columns``, ordered by the watermark; empty when
        the table has no rows. Types are as the driver returns them (SQLite gives text
        timestamps): :func:`core.drift.coerce_frame` makes a typed frame of them.
    """
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            latest = conn.execute(
                sa.text(f"SELECT max({dataset.event_time}) FROM {dataset.table}")
            ).scalar()
            if latest is None:
                return []
            since = pd.Timestamp(latest).to_pydatetime() - timedelta(days=days)
            sql = (
                f"{dataset.query} WHERE {dataset.event_time} > :since ORDER BY {dataset.watermark}"
            )
            return [tuple(r) for r in conn.execute(sa.text(sql), {"since": since})]
    finally:
        engine.dispose()


def label_rows(url: str, dataset: DatasetConfig, label: str, since: Any) -> pd.DataFrame:
    """The key columns and the ``label`` column of ``dataset``'s rows after ``since``.

    The late labels an experiment joins to its captured answers (abuse incidents, the limit
    that served a client, the hour's actual traffic), read from the source table itself.
    """
    columns = [*dataset.key_columns, label]
    sql = (
        f"SELECT {', '.join(columns)} FROM {dataset.table} "
        f"WHERE {dataset.event_time} >= :since ORDER BY {dataset.watermark}"
    )
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(sql), {"since": since}).all()
    finally:
        engine.dispose()
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)

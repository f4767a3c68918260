"""Filling the source database: synthetic weeks of traffic, and deliberately bad rows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from adapters.source.schema import (
    create_source_tables,
    engine_for,
    gc_paused,
    source_extent,
    source_tables,
)
from core.synth import generate
from core.tables import EVENT_TIME, KEYS, SCHEMAS, TABLES

log = logging.getLogger(__name__)

INSERT_CHUNK = 20_000
"""Rows per ``INSERT`` batch when seeding."""


def last_monday(today: date | None = None) -> datetime:
    """Midnight UTC of the latest Monday on or before ``today`` (default: today, UTC).

    Seeded data ends there, so it covers whole weeks and looks current.
    """
    today = today or datetime.now(UTC).date()
    monday = today - timedelta(days=today.weekday())
    return datetime(monday.year, monday.month, monday.day)


def _rows(frame: pd.DataFrame) -> Iterator[list[tuple[Any, ...]]]:
    """``frame`` as lists of plain-Python tuples, ``INSERT_CHUNK`` rows at a time."""
    for lo in range(0, len(frame), INSERT_CHUNK):
        part = frame.iloc[lo : lo + INSERT_CHUNK]
        columns = []
        for name in frame.columns:
            values = part[name].to_numpy()
            if np.issubdtype(values.dtype, np.datetime64):
                # datetime64[us] -> datetime.datetime, which every driver accepts.
                columns.append(values.astype("datetime64[us]").astype(object).tolist())
            else:
                columns.append(values.tolist())
        yield list(zip(*columns, strict=True))


def _insert(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> int:
    """Append ``frame`` to ``table`` in the connection's transaction; return the rows written."""
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        return _copy_psycopg(conn, table, frame)
    if conn.dialect.name == "sqlite" and conn.dialect.paramstyle == "qmark":
        return _executemany_sqlite(conn, table, frame)
    names = list(frame.columns)
    written = 0
    for rows in _rows(frame):
        conn.execute(table.insert(), [dict(zip(names, row, strict=True)) for row in rows])
        written += len(rows)
    return written


def _executemany_sqlite(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> int:
    """Insert ``frame`` with one prepared INSERT over plain tuples (SQLite).

    SQLAlchemy's per-row parameter handling took three quarters of the seeding time.

    Timestamps are written as text in the exact format SQLAlchemy's SQLite ``DateTime`` uses,
    so reading them back through the table definitions gives the same values.
    """
    stamps = {c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])}
    if stamps:
        frame = frame.assign(
            **{c: frame[c].dt.strftime("%Y-%m-%d %H:%M:%S.%f").astype(object) for c in stamps}
        )
    quote = conn.dialect.identifier_preparer.quote
    names = list(frame.columns)
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"VALUES ({', '.join('?' for _ in names)})"
    )
    written = 0
    for rows in _rows(frame):
        conn.exec_driver_sql(sql, rows)
        written += len(rows)
    return written


def _copy_psycopg(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> int:
    """PostgreSQL's COPY through psycopg 3: several times faster than batched INSERTs."""
    names = list(frame.columns)
    quote = conn.dialect.identifier_preparer.quote
    sql = f"COPY {quote(table.name)} ({', '.join(quote(n) for n in names)}) FROM STDIN"
    raw = conn.connection.driver_connection
    assert raw is not None
    written = 0
    with raw.cursor() as cursor, cursor.copy(sql) as copy:
        for rows in _rows(frame):
            for row in rows:
                copy.write_row(row)
            written += len(rows)
    return written


def seed_source(
    url: str,
    *,
    weeks: int = 8,
    append_weeks: int | None = None,
    drift: float = 0.0,
    seed: int = 42,
    n_clients: int = 200,
    n_services: int = 5,
    progress: Callable[[str], None] | None = None,
    today: date | None = None,
) -> dict[str, int]:
    """Create the source tables and fill them with synthetic data.

    An empty table gets ``weeks`` weeks ending at the latest Monday 00:00 UTC (see
    :func:`last_monday`); a table with data gets ``append_weeks`` (default 1) more weeks,
    starting at midnight after its latest event time. Each table is written in one transaction.

    Args:
        url: SQLAlchemy URL (SQLite or PostgreSQL with psycopg).
        weeks: weeks to create in an empty table.
        append_weeks: weeks to append to a table that has data (default 1).
        drift: distribution shift of the new rows (0 = baseline); see :func:`core.synth.generate`.
        seed: random seed; the same seed gives the same clients and services.
        n_clients: clients in the client tables.
        n_services: services in ``service_traffic``.
        progress: called with a short message before each table is generated and written.
        today: the date seeding pretends it is (default: today, UTC).

    Returns:
        Rows written per table.
    """
    if weeks < 1:
        raise ValueError("weeks must be >= 1")
    append = 1 if append_weeks is None else append_weeks
    if append < 1:
        raise ValueError("append_weeks must be >= 1")
    engine = engine_for(url)
    try:
        create_source_tables(engine)
        extent = source_extent(engine)
        tables = source_tables()
        written: dict[str, int] = {}
        for name in TABLES:
            latest = extent[name]
            if latest is None:
                days = 7 * weeks
                start = last_monday(today) - timedelta(days=days)
            else:
                days = 7 * append
                start = datetime(latest.year, latest.month, latest.day) + timedelta(days=1)
            msg = f"{name}: {days} days from {start:%Y-%m-%d}"
            if progress:
                progress(f"generating {msg}")
            frame = generate(
                name,
                start,
                days,
                n_clients=n_clients,
                n_services=n_services,
                seed=seed,
                drift=drift,
            )
            if progress:
                progress(f"writing {len(frame):,} rows of {msg}")
            with gc_paused(), engine.begin() as conn:
                written[name] = _insert(conn, tables[name], frame)
            log.info("seeded %s rows of %s", written[name], msg)
        return written
    finally:
        engine.dispose()


# Per table: a column that must not be null, a count that must not be negative, and a column
# with a bounded range, as configs/models/<model>.yaml expects.
_DAMAGE: dict[str, dict[str, tuple[str, Any]]] = {
    "client_windows": {
        "null": ("requests", None),
        "negative": ("login_attempts", -7),
        "out_of_range": ("error_rate", 1.7),
    },
    "client_limits": {
        "null": ("best_limit", None),
        "negative": ("account_age_days", -3),
        "out_of_range": ("error_rate", 1.7),
    },
    "service_traffic": {
        "null": ("requests", None),
        "negative": ("requests", -120),
        "out_of_range": ("is_holiday", 2),
    },
}


def corrupt_source(url: str, table: str, *, seed: int = 0) -> dict[str, int]:
    """Append rows to ``table`` that break its dataset's expectations (for tests and demos).

    The bad rows copy rows at the latest event time (so they fall in the newest data) and change one
    thing each: a null in a required column, a negative count, an out-of-range value (an
    ``error_rate`` of 1.7, an ``is_holiday`` of 2), and an exact copy of an existing row's
    natural key. Apart from the duplicate, each bad row gets a key of its own (a suffixed
    client or service name), so each row breaks exactly one expectation.

    Returns:
        Rows appended by kind: ``null``, ``negative``, ``out_of_range``, ``duplicate_key``.

    Raises:
        ValueError: unknown table, or the table has no rows to copy.
    """
    if table not in SCHEMAS:
        raise ValueError(f"unknown table {table!r}; known: {list(TABLES)}")
    engine = engine_for(url)
    try:
        tab = source_tables()[table]
        columns = [tab.c[c] for c in SCHEMAS[table]]
        with engine.begin() as conn:
            event = tab.c[EVENT_TIME[table]]
            latest = sa.select(sa.func.max(event)).scalar_subquery()
            query = sa.select(*columns).where(event == latest).order_by(tab.c.id).limit(50)
            recent = [dict(r._mapping) for r in conn.execute(query)]
            if not recent:
                raise ValueError(f"{table} has no rows to copy; seed it first")
            rng = np.random.default_rng(seed)
            picks = rng.choice(len(recent), size=4, replace=len(recent) < 4)
            label = KEYS[table][0]  # client_id or service
            rows: list[dict[str, Any]] = []
            counts: dict[str, int] = {}
            for i, (kind, (column, value)) in enumerate(_DAMAGE[table].items()):
                row = dict(recent[picks[i]])
                row[label] = f"{row[label]}-bad-{kind}-{seed}"
                row[column] = value
                rows.append(row)
                counts[kind] = 1
            rows.append(dict(recent[picks[3]]))  # the same natural key again
            counts["duplicate_key"] = 1
            conn.execute(tab.insert(), rows)
        return counts
    finally:
        engine.dispose()

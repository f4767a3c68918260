"""The source database: table definitions, seeding with synthetic data, and deliberate damage.

Tables are SQLAlchemy Core definitions built from :data:`core.synth.SCHEMAS`, plus an ``id``
autoincrement primary key that the exporter uses as its watermark. The natural keys are
deliberately *not* unique in the database: duplicates are a data-quality problem that the
pipeline's validation must be able to see, so the database must be able to hold them.

Works on SQLite (the embedded default) and PostgreSQL (``postgresql+psycopg://...``).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.config import DatasetConfig
from core.synth import EVENT_TIME, KEYS, SCHEMAS, TABLES, generate

log = logging.getLogger(__name__)

INSERT_CHUNK = 20_000
"""Rows per ``INSERT`` batch when seeding."""

_SA_TYPES: dict[str, Callable[[], sa.types.TypeEngine[Any]]] = {
    "int64": sa.BigInteger,
    "float64": sa.Double,
    "string": lambda: sa.String(64),
    "timestamp": sa.DateTime,  # naive, UTC by convention
    "bool": sa.Boolean,
}


def source_tables(metadata: sa.MetaData | None = None) -> dict[str, sa.Table]:
    """The source tables, defined on ``metadata`` (a new one when not given).

    Each table has ``id`` (a BigInteger autoincrement primary key; INTEGER on SQLite so that it
    is the rowid and autoincrements) followed by the columns of :data:`core.synth.SCHEMAS`, all
    nullable, and a non-unique index on the event time.
    """
    metadata = metadata if metadata is not None else sa.MetaData()
    tables: dict[str, sa.Table] = {}
    for name in TABLES:
        if name in metadata.tables:
            tables[name] = metadata.tables[name]
            continue
        columns = [
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            *(
                sa.Column(col, _SA_TYPES[kind](), nullable=True)
                for col, kind in SCHEMAS[name].items()
            ),
        ]
        event = EVENT_TIME[name]
        tables[name] = sa.Table(name, metadata, *columns, sa.Index(f"ix_{name}_{event}", event))
    return tables


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _engine(url: str) -> sa.Engine:
    """An engine for ``url``; for a SQLite file, its directory is created first."""
    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def create_source_tables(engine: sa.Engine) -> None:
    """Create the source tables and their indexes where missing (idempotent)."""
    metadata = sa.MetaData()
    source_tables(metadata)
    metadata.create_all(engine, checkfirst=True)


def source_extent(engine: sa.Engine | str) -> dict[str, datetime | None]:
    """Per table, the latest event time (``None`` when the table is empty or missing).

    Looking never creates anything: a SQLite file that does not exist reads as empty.
    """
    owned = isinstance(engine, str)
    if isinstance(engine, str):
        path = _sqlite_file(engine)
        if path is not None and not path.exists():
            return dict.fromkeys(TABLES)
        engine = sa.create_engine(engine)
    try:
        existing = set(sa.inspect(engine).get_table_names())
        tables = source_tables()
        out: dict[str, datetime | None] = {}
        with engine.connect() as conn:
            for name, table in tables.items():
                if name not in existing:
                    out[name] = None
                    continue
                value = conn.execute(sa.select(sa.func.max(table.c[EVENT_TIME[name]]))).scalar()
                out[name] = _to_datetime(value)
        return out
    finally:
        if owned:
            engine.dispose()


def _to_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)  # a datetime, or text on drivers that return it
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime()


def source_has_data(url: str) -> bool:
    """Whether any source table exists and holds at least one row."""
    return any(v is not None for v in source_extent(url).values())


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


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many short-lived row objects are built.

    Collections would traverse every live row of the chunk, again and again; the insert loop
    makes no reference cycles, so reference counting alone frees each chunk.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    """One prepared INSERT run over plain tuples: SQLAlchemy's per-row parameter handling
    took three quarters of the seeding time.

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
    engine = _engine(url)
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
            with _gc_paused(), engine.begin() as conn:
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
    engine = _engine(url)
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

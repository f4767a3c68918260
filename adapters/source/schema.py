"""The source database's tables and connections (SQLAlchemy Core).

Tables are built from :data:`core.tables.SCHEMAS`, plus an ``id`` autoincrement primary key that
the exporter uses as its watermark. The natural keys are deliberately *not* unique in the
database: duplicates are a data-quality problem that the pipeline's validation must be able to
see, so the database must be able to hold them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core import secrets
from core.tables import EVENT_TIME, SCHEMAS, TABLES

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
    is the rowid and autoincrements) followed by the columns of :data:`core.tables.SCHEMAS`, all
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


def engine_for(url: str) -> sa.Engine:
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


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: in the userinfo and in the query string.

    SQLAlchemy masks the userinfo of the URLs it parses; :func:`core.secrets.mask_url` adds the
    password-like query keys (``?password=``) that drivers also accept, and unparseable text.
    """
    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL: mask it as any URL
        rendered = url
    return secrets.mask_url(rendered)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many short-lived row objects are built.

    Inserting or exporting a chunk allocates tens of thousands of row tuples while the previous
    ones are still alive, which triggers collections that traverse all of them: measured here,
    that doubled the export time. The loops make no reference cycles, so reference counting
    alone frees each chunk and memory stays flat either way.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

"""The source database adapter: the only code that talks SQL (SQLAlchemy).

- :mod:`~adapters.source.schema`: the tables, engines, what the source holds.
- :mod:`~adapters.source.seed`: filling it with synthetic weeks, or with deliberately bad rows.
- :mod:`~adapters.source.read`: the export's streamed query and the monitor's recent rows.

Works on SQLite (the embedded default) and PostgreSQL (``postgresql+psycopg://...``).
"""

from adapters.source.read import export_query, has_rows, recent_rows, stream_rows
from adapters.source.schema import (
    create_source_tables,
    mask_url,
    source_extent,
    source_has_data,
    source_tables,
)
from adapters.source.seed import corrupt_source, last_monday, seed_source

__all__ = [
    "corrupt_source",
    "create_source_tables",
    "export_query",
    "has_rows",
    "last_monday",
    "mask_url",
    "recent_rows",
    "seed_source",
    "source_extent",
    "source_has_data",
    "source_tables",
    "stream_rows",
]

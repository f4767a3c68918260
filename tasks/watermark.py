"""Which rows the next export takes: those past the watermark of the last accepted snapshot.

One rule, two callers: :func:`tasks.export.export_snapshot` streams the rows of
:func:`export_range`, and :func:`has_new_rows` asks the database whether there is at least one
of them. The second is what ``mlops retrain`` asks before it imports Prefect, so this module
imports neither Prefect nor anything that does (no tasks, no flows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.snapshots import current_watermark
from adapters.source import export_query, has_rows
from adapters.store import Store
from core.config import DatasetConfig


@dataclass(frozen=True)
class ExportRange:
    """The rows an export of one dataset takes now.

    Attributes:
        watermark: the largest watermark of an accepted snapshot (exclusive lower bound);
            ``None`` when no snapshot was accepted yet, and every row is new.
        sql: the export's query (``dataset.query``, the watermark predicate, the order).
        params: the query's bound parameters.
    """

    watermark: int | None
    sql: str
    params: dict[str, Any]


def export_range(store: Store, dataset: DatasetConfig, *, ordered: bool = True) -> ExportRange:
    """The query for ``dataset``'s rows past the watermark of its last accepted snapshot.

    Rows of a rejected or not yet validated snapshot are past that watermark, so they are
    exported again (see :mod:`adapters.snapshots`).

    Args:
        store: the store holding the dataset's snapshots.
        dataset: the model's dataset.
        ordered: order by the watermark (the export); without, for an existence check.
    """
    watermark = current_watermark(store, dataset.name)
    sql = export_query(dataset, incremental=watermark is not None, ordered=ordered)
    return ExportRange(watermark, sql, {"wm": watermark} if watermark is not None else {})


def has_new_rows(url: str, store: Store, dataset: DatasetConfig) -> bool:
    """Whether an export of ``dataset`` now would write a snapshot (the export's own rule).

    Args:
        url: SQLAlchemy URL of the source database.
        store: the store holding the dataset's snapshots.
        dataset: the model's dataset.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the source cannot answer (unreachable, a missing table
            or column): never read as "no new rows".
    """
    pending = export_range(store, dataset, ordered=False)
    return has_rows(url, pending.sql, pending.params)

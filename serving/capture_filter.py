"""What capture keeps of a request: the model's declared input columns, nothing else.

A caller may add any key to a record (an API key, an e-mail address); the model reads only its
input columns, and so does the analysis. The capture record's input is rebuilt from those
columns alone, as ``{"instances": [...]}`` for JSON (whatever shape the caller sent:
``instances``, ``dataframe_records``, ``dataframe_split`` or a bare list) and as CSV with a header
row for CSV, so :mod:`adapters.capture` reads it as it reads a request. Runs in capture's writer
thread, never on the event loop.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

EMPTY_JSON = b'{"instances":[]}'


def _json_records(payload: Any) -> list[Any]:
    if isinstance(payload, list):
        return payload
    if not isinstance(payload, dict):
        return []
    for key in ("instances", "dataframe_records"):
        if isinstance(payload.get(key), list):
            return list(payload[key])
    split = payload.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("columns"), list):
        columns = split["columns"]
        data = split.get("data")
        rows: list[Any] = data if isinstance(data, list) else []
        return [dict(zip(columns, row, strict=False)) for row in rows if isinstance(row, list)]
    return []


def keep_columns(body: bytes, content_type: str, columns: Sequence[str] | None) -> bytes:
    """``body`` with only ``columns`` in each record (None or empty: no column is kept).

    Args:
        body: the request as the caller sent it.
        content_type: its ``Content-Type`` (``text/csv``: CSV with a header row; else JSON).
        columns: the model's declared input columns.

    Returns:
        The kept records: JSON ``{"instances": [...]}`` or CSV; a body that does not parse
        keeps no record (the answer's status says what the model made of it).
    """
    wanted = list(columns or ())
    if content_type.split(";")[0].strip().lower() == "text/csv":
        return _keep_csv(body, wanted)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return EMPTY_JSON
    kept = [
        {c: r[c] for c in wanted if c in r} if isinstance(r, dict) else {}
        for r in _json_records(payload)
    ]
    return json.dumps({"instances": kept}, separators=(",", ":")).encode()


def _keep_csv(body: bytes, wanted: list[str]) -> bytes:
    try:
        rows = csv.reader(io.StringIO(body.decode("utf-8-sig")))
        header = [h.strip() for h in next(rows, [])]
        keep = [i for i, name in enumerate(header) if name in set(wanted)]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([header[i] for i in keep])
        for row in rows:
            writer.writerow([row[i] if i < len(row) else "" for i in keep])
    except (UnicodeDecodeError, csv.Error):
        return b""
    return out.getvalue().encode()

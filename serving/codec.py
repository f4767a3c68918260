"""Request and response formats of the serving app: JSON and CSV in, JSON and CSV out.

Every way a request can be wrong becomes a :class:`BadRequest` with the status and a reason the
caller reads; nothing here knows about models beyond the columns they require.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

JSON = "application/json"
CSV = "text/csv"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


class BadRequest(Exception):
    """Input the app refuses: an HTTP status and a reason for the caller."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_body(request: Any, limit: int) -> bytes:
    """The body of a Starlette ``request``, streamed, refused with a 413 past ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a chunked
    body as soon as it passes the limit, so a 300 MB body never sits in memory.

    Raises:
        BadRequest: (413) the body is larger than ``limit``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {declared} bytes exceeds the maximum of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body exceeds the maximum of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def request_format(content_type: str | None) -> str:
    """``json`` or ``csv`` for a ``Content-Type`` header.

    Raises:
        BadRequest: (415) anything else, a missing header included.
    """
    media = _media_type(content_type)
    if media == JSON or (media.startswith("application/") and media.endswith("+json")):
        return "json"
    if media == CSV:
        return "csv"
    shown = media or "none"
    raise BadRequest(415, f"unsupported Content-Type {shown}: send {JSON} or {CSV} (header row)")


def response_format(accept: str | None) -> str:
    """``json`` or ``csv`` for an ``Accept`` header (JSON when absent or ``*/*``).

    The first acceptable type in the header wins; quality values are not weighed.

    Raises:
        BadRequest: (406) nothing in the header is JSON or CSV.
    """
    if not accept or not accept.strip():
        return "json"
    for part in accept.split(","):
        media = _media_type(part)
        if media in (JSON, "application/*", "*/*") or media.endswith("+json"):
            return "json"
        if media in (CSV, "text/*"):
            return "csv"
    raise BadRequest(406, f"cannot answer Accept: {accept}; ask for {JSON} or {CSV}")


def _load_json(body: bytes) -> Any:
    """The JSON value of ``body``: orjson, and the standard library for what orjson refuses.

    orjson refuses ``NaN``, ``Infinity`` and numbers past the double range (``1e309``); the
    standard library reads them as floats, so that the column check can name the column that
    holds one (a 400 either way). Only bodies orjson refused take the slow parser.
    """
    import orjson

    # orjson also reads an integer past 64 bits as a float, silently; a run of 19 digits
    # (anywhere, strings included) sends the body to the exact parser, which keeps it an int
    # for the int64 range check.
    if not _LONG_DIGITS.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(400, f"body is not valid JSON: {exc}") from exc


def _records(payload: Any) -> tuple[list[Any], str]:
    """The list of records in a parsed body, and the name to use for it in errors."""
    if isinstance(payload, list):
        return payload, "body"
    if isinstance(payload, dict):
        for key in ("instances", "dataframe_records"):
            if key in payload:
                return payload[key], key
        if "dataframe_split" in payload:
            split = payload["dataframe_split"]
            columns = split.get("columns") if isinstance(split, dict) else None
            data = split.get("data") if isinstance(split, dict) else None
            if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
                raise BadRequest(400, "dataframe_split.columns must be a list of column names")
            if not isinstance(data, list) or not all(
                isinstance(row, list) and len(row) == len(columns) for row in data
            ):
                raise BadRequest(
                    400, f"dataframe_split.data must be rows of {len(columns)} values each"
                )
            return [dict(zip(columns, row, strict=True)) for row in data], "dataframe_split.data"
    raise BadRequest(
        400,
        'expected {"instances": [{column: value, ...}, ...]} or a list of such records',
    )


_PLAIN = frozenset((str, int, float, bool, type(None)))


def _check_records(records: Any, where: str, required: tuple[str, ...]) -> None:
    """Refuse what is not a list of flat records holding every ``required`` column (400)."""
    if not isinstance(records, list):
        raise BadRequest(400, f"{where} must be a list of records, got {type(records).__name__}")
    wanted = set(required)
    for i, record in enumerate(records):
        if type(record) is not dict:
            raise BadRequest(
                400, f"{where}[{i}] must be an object of column: value, got {type(record).__name__}"
            )
        # Checked a record at a time (a set of types, the ints' extremes), value by value only
        # to name the one at fault.
        values = record.values()
        kinds = set(map(type, values))
        if not kinds <= _PLAIN:
            for key, value in record.items():
                if type(value) not in _PLAIN:
                    raise BadRequest(
                        400, f"{where}[{i}].{key}: a value must be a string, number, bool or null"
                    )
        if int in kinds:
            ints = [v for v in values if type(v) is int]
            if min(ints) < _INT64_MIN or max(ints) > _INT64_MAX:
                for key, value in record.items():
                    if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
                        raise BadRequest(
                            400, f"{where}[{i}].{key}: {value} is out of the int64 range"
                        )
        if not wanted <= record.keys():
            lacking = [c for c in required if c not in record]
            raise BadRequest(400, f"{where}[{i}] lacks column(s): {', '.join(lacking)}")


def parse_json_columns(
    body: bytes, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> tuple[int, dict[str, list[Any]]]:
    """Records from a JSON body as columns of plain values, for a family's fast path.

    Accepted shapes: ``{"instances": [record, ...]}``, ``[record, ...]``,
    ``{"dataframe_records": [...]}`` and ``{"dataframe_split": {"columns": [...], "data":
    [[...], ...]}}``. No DataFrame is built: ``required``
    columns, and those of ``optional`` that any record has (None where a record lacks one);
    other keys are checked and dropped.

    Returns:
        The number of records, and column -> one value per record.

    Raises:
        BadRequest: (400) not JSON, another shape, a nested value, a missing column.
    """
    records, where = _records(_load_json(body))
    _check_records(records, where, required)
    columns = {c: [r[c] for r in records] for c in required}
    for c in optional:
        if any(c in r for r in records):
            columns[c] = [r.get(c) for r in records]
    return len(records), columns


def csv_header(body: bytes, most: int) -> list[str]:
    """The column names in the first line of a CSV body, read without parsing the rest.

    Raises:
        BadRequest: (400) not UTF-8; (413) more than ``most`` columns, which no model here
            reads and which would cost the parser seconds.
    """
    import csv

    first = body[: body.find(b"\n")] if b"\n" in body else body
    try:
        line = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"CSV body is not UTF-8: {exc}") from exc
    if line.count(",") >= most:
        raise BadRequest(
            413, f"CSV header has {line.count(',') + 1} columns; this model reads at most {most}"
        )
    return next(csv.reader([line]), [])


def parse_csv(body: bytes, usecols: tuple[str, ...] | None = None) -> Any:
    """Records from a CSV body whose first row names the columns.

    Every cell is read as text and coerced by the family's column types, so ``007`` stays a
    string where a string is wanted and fails clearly where a number is.

    Args:
        body: the request body.
        usecols: read only these columns (when present); others are skipped while parsing.

    Raises:
        BadRequest: (400) not UTF-8, or not parseable as CSV.
    """
    import pandas as pd

    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"CSV body is not UTF-8: {exc}") from exc
    if not text.strip():
        return pd.DataFrame()
    try:
        wanted = None if usecols is None else set(usecols)
        return pd.read_csv(
            io.StringIO(text),
            dtype=str,
            skipinitialspace=True,
            usecols=None if wanted is None else (lambda c: str(c).strip() in wanted),
        )
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BadRequest(400, f"body is not valid CSV with a header row: {exc}") from exc


def _plain(value: Any) -> Any:
    """A JSON-ready Python value: numpy scalars unboxed, NaN and infinities as null."""
    import math

    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def json_answer(columns: dict[str, Any], meta: dict[str, Any]) -> bytes:
    """``{"predictions": [...], **meta}`` from prediction columns (numpy arrays), with orjson.

    Floats keep full precision (shortest round-trip form, as :func:`json_predictions`), and a
    NaN or infinity becomes null.
    """
    import orjson

    names = list(columns)
    lists = [columns[c].tolist() for c in names]
    records = [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]
    return orjson.dumps({"predictions": records, **meta})


def json_predictions(frame: Any) -> str:
    """Predictions as a JSON array of objects, floats at full precision."""
    records = [
        {str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")
    ]
    return json.dumps(records, allow_nan=False, separators=(",", ":"))


def csv_predictions(frame: Any) -> str:
    """Predictions as CSV with a header row, timestamps in ISO 8601."""
    return str(frame.to_csv(index=False, lineterminator="\n", date_format="%Y-%m-%dT%H:%M:%S"))

"""Captured answers: SageMaker Data Capture's layout, read the same way for both targets.

``{capture_prefix}/{endpoint}/{variant}/{yyyy}/{mm}/{dd}/{hh}/{anything}.jsonl``, one JSON object
per line (``captureData.endpointInput/endpointOutput`` and ``eventMetadata`` with the inference
id and ``customAttributes`` ``experiment_id=...;variant=...;version=vN;arm=...``). The local
router writes it under the store (``capture/{model}``); SageMaker writes it to its endpoint
config's ``DataCaptureConfig`` destination, which must lie under the store too.

Nothing a caller sends or a crash leaves can fail the reading: a line that is not a capture
record (a half-written file from a crash loses its last line, not the day), and a request
record that is not a flat object of plain values or that names a column the analysis owns
(``arm``, ``error``, ``inference_id``, ``__label``, ...), is skipped and counted by reason
(:attr:`CaptureRead.reasons`). JSON and CSV bodies are both read, with the serving app's own
codec (:mod:`serving.codec`), so CSV traffic counts like JSON traffic. An answer that is not
``{"predictions": [...]}`` (or a CSV table) with one prediction per request record, or whose
status is 4xx/5xx, counts as an error of its arm (the ``error`` guardrail).
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from adapters.store import Store
from serving.codec import JSON, BadRequest, parse_csv, request_format

_HOUR_PATH = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+\.jsonl$")


NOT_A_RECORD = "not a capture record"
BAD_RECORD = "request record not a flat object of plain values"
HOSTILE_RECORD = "request record names a column the analysis owns"
OWN_COLUMNS = frozenset(
    ("inference_id", "arm", "variant", "version", "latency_ms", "row", "error", "chosen")
)
"""The reader's columns; a request key among them (or starting ``__``, the analysis' private
names) would overwrite or collide with them downstream, so its record is skipped."""
_PLAIN = (str, int, float, bool, type(None))
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)


@dataclass(frozen=True)
class CaptureRead:
    """What :func:`read_captures` found.

    Attributes:
        frame: one row per request record: ``inference_id``, ``arm``, ``variant``, ``version``,
            ``row`` (the record's place in its request), ``error`` (0/1), ``latency_ms`` (NaN
            when not captured), ``chosen`` (the caller named the variant: ``chosen=1`` in the
            record's attributes), the request's columns and the answer's columns.
        skipped: lines and request records left out (the sum of ``reasons``).
        reasons: why, with how many of each.
    """

    frame: pd.DataFrame
    skipped: int
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LineRead:
    """One capture line's request rows of the experiment, and what of it was skipped."""

    rows: list[dict[str, Any]]
    skipped: dict[str, int]


def store_key(store: Store, url: str) -> str:
    """The store key of a capture prefix given as a URL (a path or ``s3://``) under the store.

    Raises:
        ValueError: the prefix is outside the store.
    """
    root = store.url("x")[: -len("/x")]  # the store's own URL (an empty key is refused)
    if url.rstrip("/") == root:
        return ""
    if not url.startswith(root + "/"):
        raise ValueError(f"capture prefix {url} is not under the store {root}")
    return url[len(root) + 1 :].rstrip("/")


def _attributes(text: Any) -> dict[str, str]:
    if text is None:
        return {}
    pairs = (part.split("=", 1) for part in str(text).split(";") if "=" in part)
    return {k.strip(): v.strip() for k, v in pairs}


def _format(part: dict[str, Any]) -> str:
    """``json`` or ``csv``: the captured body's content type, as the serving app reads it."""
    try:
        return request_format(part.get("observedContentType") or JSON)
    except BadRequest as exc:
        raise ValueError(exc.reason) from exc


def _data(part: dict[str, Any], numbers: bool = False) -> Any:
    """A captured body, read as the serving app reads it: JSON, or CSV with a header row.

    CSV goes through the app's own parser (:func:`serving.codec.parse_csv`, every cell as
    text, so a key such as ``007`` stays itself) and comes back as a list of records; with
    ``numbers`` (an answer), a column whose every cell is a number becomes numbers.

    Raises:
        ValueError: not a body the app reads (an unknown content type, bad JSON or CSV).
    """
    raw = part.get("data", "")
    if part.get("encoding") == "BASE64":
        raw = base64.b64decode(raw).decode()
    if _format(part) == "json":
        return json.loads(raw)
    try:
        frame = parse_csv(str(raw).encode())
    except BadRequest as exc:
        raise ValueError(exc.reason) from exc
    for column in frame.columns if numbers else ():
        parsed = pd.to_numeric(frame[column], errors="coerce")
        if parsed.notna().sum() == frame[column].notna().sum():
            frame[column] = parsed
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def _request_records(payload: Any) -> list[Any]:
    if isinstance(payload, list):
        return payload
    for key in ("instances", "dataframe_records"):
        if isinstance(payload, dict) and key in payload:
            return list(payload[key])
    split = payload.get("dataframe_split") if isinstance(payload, dict) else None
    if isinstance(split, dict):
        return [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]
    raise ValueError("not a request body")


def record_problem(record: Any) -> str | None:
    """Why a request record is left out of the analysis, or None when it is kept."""
    if type(record) is not dict or not all(isinstance(v, _PLAIN) for v in record.values()):
        return BAD_RECORD
    if any(not isinstance(k, str) or k in OWN_COLUMNS or k.startswith("__") for k in record):
        return HOSTILE_RECORD
    return None


def read_line(line: str, experiment_id: str | None) -> LineRead:
    """The request rows of one capture line of ``experiment_id`` (None: of any experiment).

    Never raises: a line that is not a capture record is one skipped ``NOT_A_RECORD``, a
    request record that :func:`record_problem` refuses is one skipped of its reason.
    """
    try:
        return _read_line(line, experiment_id)
    except _UNREADABLE:
        return LineRead([], {NOT_A_RECORD: 1})


def _read_line(line: str, experiment_id: str | None) -> LineRead:
    doc = json.loads(line)
    meta = doc["eventMetadata"]
    attrs = _attributes(meta.get("customAttributes"))
    if experiment_id is not None and attrs.get("experiment_id") != experiment_id:
        return LineRead([], {})
    records = _request_records(_data(doc["captureData"]["endpointInput"]))
    base = {
        "inference_id": str(meta.get("inferenceId") or meta.get("eventId") or ""),
        "arm": attrs.get("arm", ""),
        "variant": attrs.get("variant", ""),
        "version": attrs.get("version", ""),
        "latency_ms": float(attrs["latency_ms"]) if "latency_ms" in attrs else float("nan"),
        "chosen": attrs.get("chosen") == "1",
    }
    status = int(attrs.get("status", "200"))
    try:
        output = doc["captureData"]["endpointOutput"]
        answer = _data(output, numbers=True)  # a CSV answer is the predictions' table
        predictions = answer if _format(output) == "csv" else answer["predictions"]
        ok = isinstance(predictions, list) and len(predictions) == len(records)
    except _UNREADABLE:
        ok, predictions = False, []
    ok = ok and status < 400
    rows: list[dict[str, Any]] = []
    skipped = Counter[str]()
    for i, record in enumerate(records):
        problem = record_problem(record)
        if problem is not None:
            skipped[problem] += 1
            continue
        answer_row = predictions[i] if ok and isinstance(predictions[i], dict) else {}
        rows.append({**record, **answer_row, **base, "row": i, "error": 0 if ok else 1})
    return LineRead(rows, dict(skipped))


def parse_line(line: str, experiment_id: str) -> list[dict[str, Any]] | None:
    """The request rows of one capture line of ``experiment_id``; [] for another experiment.

    None when the line is not a capture record (it is counted as skipped).
    """
    read = read_line(line, experiment_id)
    return None if NOT_A_RECORD in read.skipped else read.rows


def read_captures(
    store: Store, prefix_url: str, experiment_id: str | None, since: datetime | None = None
) -> CaptureRead:
    """Every captured request row of ``experiment_id`` under ``prefix_url``.

    Args:
        store: the store the capture lives in.
        prefix_url: the target's ``capture_prefix(model)``.
        experiment_id: rows of other experiments (or none) are left out; None keeps every
            row (the monitor's live error from reported outcomes).
        since: skip hour folders before this hour (the experiment's start).
    """
    prefix = store_key(store, prefix_url)
    floor = since.strftime("%Y%m%d%H") if since else ""
    rows: list[dict[str, Any]] = []
    skipped = Counter[str]()
    for key in sorted(store.list(prefix)):
        hour = _HOUR_PATH.search(key)
        if hour is None or "".join(hour.groups()) < floor:
            continue
        for line in store.get_bytes(key).decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            read = read_line(line, experiment_id)
            rows.extend(read.rows)
            skipped.update(read.skipped)
    return CaptureRead(pd.DataFrame(rows), sum(skipped.values()), dict(skipped))

"""Captured answers: SageMaker Data Capture's layout, read the same way for both targets.

``{capture_prefix}/{endpoint}/{variant}/{yyyy}/{mm}/{dd}/{hh}/{anything}.jsonl``, one JSON object
per line (``captureData.endpointInput/endpointOutput`` and ``eventMetadata`` with the inference
id and ``customAttributes`` ``experiment_id=...;variant=...;version=vN;arm=...``). The local
router writes it under the store (``capture/{model}``); SageMaker writes it to its endpoint
config's ``DataCaptureConfig`` destination, which must lie under the store too.

A line that is not a capture record is counted and skipped (a half-written file from a crash
loses its last line, not the day). An answer that is not ``{"predictions": [...]}`` with one
prediction per request record counts as an error of its arm (the ``error`` guardrail).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from adapters.store import Store

_HOUR_PATH = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]+\.jsonl$")


@dataclass(frozen=True)
class CaptureRead:
    """What :func:`read_captures` found.

    Attributes:
        frame: one row per request record: ``inference_id``, ``arm``, ``variant``, ``version``,
            ``error`` (0/1), ``latency_ms`` (NaN when not captured), the request's columns and
            the answer's columns.
        skipped: lines that were not capture records of this experiment's format.
    """

    frame: pd.DataFrame
    skipped: int


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


def _attributes(text: str | None) -> dict[str, str]:
    pairs = (part.split("=", 1) for part in (text or "").split(";") if "=" in part)
    return {k.strip(): v.strip() for k, v in pairs}


def _data(part: dict[str, Any]) -> Any:
    raw = part.get("data", "")
    if part.get("encoding") == "BASE64":
        raw = base64.b64decode(raw).decode()
    return json.loads(raw)


def _request_records(payload: Any) -> list[dict[str, Any]]:
    if isinstance(payload, list):
        return payload
    for key in ("instances", "dataframe_records"):
        if isinstance(payload, dict) and key in payload:
            return list(payload[key])
    split = payload.get("dataframe_split") if isinstance(payload, dict) else None
    if isinstance(split, dict):
        return [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]
    raise ValueError("not a request body")


def parse_line(line: str, experiment_id: str) -> list[dict[str, Any]] | None:
    """The request rows of one capture line of ``experiment_id``; [] for another experiment.

    None when the line is not a capture record (it is counted as skipped).
    """
    try:
        doc = json.loads(line)
        meta = doc["eventMetadata"]
        attrs = _attributes(meta.get("customAttributes"))
        if attrs.get("experiment_id") != experiment_id:
            return []
        records = _request_records(_data(doc["captureData"]["endpointInput"]))
    except (ValueError, KeyError, TypeError):
        return None
    base = {
        "inference_id": meta.get("inferenceId") or meta.get("eventId"),
        "arm": attrs.get("arm", ""),
        "variant": attrs.get("variant", ""),
        "version": attrs.get("version", ""),
        "latency_ms": float(attrs["latency_ms"]) if "latency_ms" in attrs else float("nan"),
    }
    try:
        answer = _data(doc["captureData"]["endpointOutput"])
        predictions = answer["predictions"]
        ok = isinstance(predictions, list) and len(predictions) == len(records)
    except (ValueError, KeyError, TypeError):
        ok, predictions = False, []
    ok = ok and int(attrs.get("status", "200")) < 400
    rows = []
    for i, record in enumerate(records):
        answer_row = predictions[i] if ok and isinstance(predictions[i], dict) else {}
        rows.append({**record, **answer_row, **base, "row": i, "error": 0 if ok else 1})
    return rows


def read_captures(
    store: Store, prefix_url: str, experiment_id: str, since: datetime | None = None
) -> CaptureRead:
    """Every captured request row of ``experiment_id`` under ``prefix_url``.

    Args:
        store: the store the capture lives in.
        prefix_url: the target's ``capture_prefix(model)``.
        experiment_id: rows of other experiments (or none) are left out.
        since: skip hour folders before this hour (the experiment's start).
    """
    prefix = store_key(store, prefix_url)
    floor = since.strftime("%Y%m%d%H") if since else ""
    rows: list[dict[str, Any]] = []
    skipped = 0
    for key in sorted(store.list(prefix)):
        hour = _HOUR_PATH.search(key)
        if hour is None or "".join(hour.groups()) < floor:
            continue
        for line in store.get_bytes(key).decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            parsed = parse_line(line, experiment_id)
            if parsed is None:
                skipped += 1
            else:
                rows.extend(parsed)
    return CaptureRead(pd.DataFrame(rows), skipped)

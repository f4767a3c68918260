"""Outcomes reported after a decision: their shape, the reasons one is refused, and the join.

Pure (no I/O). The rate limiter reports what happened after an answer, by the answer's
inference id: the observed value of the family's label column (``best_limit``, ``is_abuse``,
``requests``; :attr:`core.families.Family.label_column`). One outcome per inference id: the
first report is recorded, a second is refused as a duplicate (whatever its value), so a
retried report can never count twice. The router's ``POST /feedback/{model}``
(:mod:`serving.feedback`) and ``mlops feedback import`` parse with the same functions, and
:func:`apply_feedback` lays the outcomes beside the source table's labels.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, ValidationError

from core.strict import Strict

MAX_ID_CHARS = 256
"""Longest inference id accepted (the router's own are UUIDs; a caller may choose one)."""

Refusal = Literal["unauthenticated", "malformed", "unknown", "duplicate", "unavailable"]
"""Why an outcome was refused: the ``result`` label of the router's feedback counter."""
REFUSALS: tuple[Refusal, ...] = (
    "unauthenticated",
    "malformed",
    "unknown",
    "duplicate",
    "unavailable",
)

DUPLICATE = "duplicate: an outcome for this inference id was already recorded"
UNKNOWN = "unknown inference id: no answer of this model has it"


class FeedbackRefused(ValueError):
    """An outcome that is not recorded: ``kind`` (a :data:`Refusal`) and a reason for humans."""

    def __init__(self, kind: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.kind: Refusal = kind
        self.reason = reason


class Outcome(Strict):
    """One reported outcome: the answer it is about and what was observed."""

    inference_id: str = Field(
        min_length=1,
        max_length=MAX_ID_CHARS,
        pattern=r"^[\x21-\x7e]+$",
        description="The answer's X-Inference-Id (printable ASCII, no spaces).",
    )
    outcome: float = Field(
        allow_inf_nan=False,
        ge=-1e15,
        le=1e15,
        description="The observed value of the family's label column (a flag as 0 or 1).",
    )


def parse_outcome(payload: Any) -> Outcome:
    """An :class:`Outcome` from a decoded JSON object (or a CSV row).

    ``true``/``false`` count as 1/0 (the abuse detector's label is a flag).

    Raises:
        FeedbackRefused: (``malformed``) not an object with exactly ``inference_id`` and a
            finite ``outcome``; the reason names the field.
    """
    if not isinstance(payload, dict):
        raise FeedbackRefused("malformed", "malformed: expected an object")
    value = payload.get("outcome")
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in _FLAGS):
        payload = {**payload, "outcome": _FLAGS[str(value).lower()]}
    try:
        return Outcome.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise FeedbackRefused("malformed", f"malformed: {where}: {first['msg']}") from None


_FLAGS = {"true": 1.0, "false": 0.0}


def parse_body(body: bytes) -> Outcome:
    """An :class:`Outcome` from a request body (JSON).

    Raises:
        FeedbackRefused: (``malformed``) not JSON, or not an outcome.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise FeedbackRefused("malformed", "malformed: the body is not JSON") from None
    return parse_outcome(payload)


@dataclass(frozen=True)
class ImportRead:
    """What a bulk file held: the outcomes, and each line that was not one (line, reason)."""

    outcomes: list[Outcome]
    problems: list[tuple[int, str]] = field(default_factory=list)


def file_format(name: str) -> Literal["csv", "jsonl"]:
    """``csv`` for ``*.csv``; ``jsonl`` for ``*.jsonl``, ``*.ndjson`` and ``*.json``.

    Raises:
        ValueError: any other suffix.
    """
    lower = name.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise ValueError(f"{name}: a CSV (.csv) or JSON lines (.jsonl) file is expected")


def parse_import(text: str, fmt: Literal["csv", "jsonl"]) -> ImportRead:
    """Every outcome of a bulk file; a line that is not one is listed, never fatal.

    CSV has a header row with ``inference_id`` and ``outcome``; JSON lines hold one object a
    line. An id twice in the file keeps its first line (the second is a duplicate).
    """
    outcomes: list[Outcome] = []
    problems: list[tuple[int, str]] = []
    seen: set[str] = set()
    for number, row in _rows(text, fmt):
        if isinstance(row, str):  # the reason the line holds no row
            problems.append((number, row))
            continue
        try:
            outcome = parse_outcome(row)
        except FeedbackRefused as exc:
            problems.append((number, exc.reason))
            continue
        if outcome.inference_id in seen:
            problems.append((number, DUPLICATE))
            continue
        seen.add(outcome.inference_id)
        outcomes.append(outcome)
    return ImportRead(outcomes, problems)


def _rows(text: str, fmt: str) -> list[tuple[int, Any]]:
    """(line number, row or the reason it is none) for each data line."""
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        header = set(reader.fieldnames or [])
        if not {"inference_id", "outcome"} <= header:
            return [(1, "malformed: the CSV header needs inference_id and outcome")]
        rows: list[tuple[int, Any]] = []
        for row in reader:
            extra = row.pop(None, None)
            rows.append((reader.line_num, "malformed: more cells than headers" if extra else row))
        return rows
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except (ValueError, RecursionError):
            out.append((number, "malformed: the line is not JSON"))
    return out


def outcome_document(model: str, outcome: Outcome, source: str, at: str) -> dict[str, Any]:
    """The stored record of one outcome (``feedback/{model}/...json``)."""
    return {
        "model": model,
        "inference_id": outcome.inference_id,
        "outcome": outcome.outcome,
        "source": source,
        "reported_at": at,
    }


def apply_feedback(frame: Any, feedback: Any, label: str) -> Any:
    """Label captured requests from reported outcomes, beside the source table's labels.

    An outcome is about one decision: it labels record 0 of the request with its inference
    id (the rate limiter asks about one client per call). Where the source table labelled the
    same record too, the reported outcome wins: it is about this very answer, the table's
    row only about the same key.

    Args:
        frame: the captured rows (``inference_id``, ``row``) with the ``label`` column.
        feedback: rows of ``inference_id`` and ``outcome`` (what the store holds).
        label: the frame's label column.

    Returns:
        The frame, its ``label`` filled from the outcomes.
    """
    if feedback is None or len(feedback) == 0 or "inference_id" not in frame.columns:
        return frame
    by_id = feedback.drop_duplicates("inference_id").set_index("inference_id")["outcome"]
    reported = frame["inference_id"].astype(str).map(by_id).astype(float)
    if "row" in frame.columns:
        reported = reported.where(frame["row"] == 0)
    return frame.assign(**{label: reported.combine_first(frame[label].astype(float))})


def feedback_metrics(captured: Any, feedback: Any, family: Any, version: str) -> dict[str, float]:
    """The live error of ``version`` on the answers whose outcome was reported.

    Args:
        captured: the capture reader's frame (any experiment).
        feedback: reported outcomes (``inference_id``, ``outcome``).
        family: the model's :class:`core.families.Family` (its :meth:`request_losses`).
        version: the version whose answers count (the champion).

    Returns:
        ``feedback_<metric>`` (the mean of each :attr:`experiment_metrics`) and
        ``feedback_labelled`` (how many answers it is over); empty when none is labelled.
    """
    if captured is None or len(captured) == 0 or feedback is None or len(feedback) == 0:
        return {}
    if not {"version", "error", "inference_id"} <= set(captured.columns):
        return {}
    mine = captured[(captured["version"] == version) & (captured["error"] == 0)]
    label = "__feedback_label"
    while label in mine.columns:
        label = "_" + label
    mine = apply_feedback(mine.assign(**{label: float("nan")}), feedback, label)
    done = mine[mine[label].notna()]
    if not len(done):
        return {}
    losses = family.request_losses(done, done[label])
    out = {f"feedback_{m}": float(losses[m].mean()) for m in family.experiment_metrics}
    return {**out, "feedback_labelled": float(len(done))}

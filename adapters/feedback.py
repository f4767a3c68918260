"""Reported outcomes in the store: written once per inference id, read back for the joins.

``feedback/{model}/{sha256(inference id)}.json`` (:func:`adapters.layout.feedback_key`), each
written with the store's conditional create (:func:`adapters.store.create_once`): the first
report of an id wins, on every router and across restarts, and a second one is a duplicate.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from adapters.capture import store_key
from adapters.layout import document_bytes, feedback_key, feedback_prefix
from adapters.store import Store, create_once
from core.feedback import DUPLICATE, UNKNOWN, Outcome, outcome_document

UNREADABLE = "outcome record unreadable"


def record_outcome(store: Store, model: str, outcome: Outcome, source: str, at: str) -> bool:
    """Create the outcome's record; False when one exists for its inference id (a duplicate).

    The record holds a fresh report id, so a second report is never mistaken for the first
    one's retried write (:func:`adapters.store.create_once` accepts an equal body).
    """
    doc = {**outcome_document(model, outcome, source, at), "report_id": uuid.uuid4().hex}
    return create_once(store, feedback_key(model, outcome.inference_id), document_bytes(doc))


def has_outcome(store: Store, model: str, inference_id: str) -> bool:
    """Whether an outcome of ``inference_id`` is recorded."""
    return store.exists(feedback_key(model, inference_id))


@dataclass(frozen=True)
class OutcomesRead:
    """The model's recorded outcomes (``inference_id``, ``outcome``) and what was skipped."""

    frame: pd.DataFrame
    skipped: dict[str, int] = field(default_factory=dict)


def read_outcomes(store: Store, model: str) -> OutcomesRead:
    """Every recorded outcome of ``model``; a record that does not read is skipped, counted."""
    rows: list[dict[str, Any]] = []
    skipped = Counter[str]()
    for key in store.list(feedback_prefix(model)):
        if not key.endswith(".json"):
            continue
        try:
            doc = json.loads(store.get_bytes(key))
            rows.append(
                {"inference_id": str(doc["inference_id"]), "outcome": float(doc["outcome"])}
            )
        except (ValueError, KeyError, TypeError):
            skipped[UNREADABLE] += 1
    frame = pd.DataFrame(rows, columns=["inference_id", "outcome"])
    return OutcomesRead(frame, dict(skipped))


def captured_ids(store: Store, prefix_url: str) -> set[str]:
    """Every inference id captured under ``prefix_url`` (a target's ``capture_prefix``)."""
    ids: set[str] = set()
    for key in store.list(store_key(store, prefix_url)):
        if not key.endswith(".jsonl"):
            continue
        for line in store.get_bytes(key).decode("utf-8", "replace").splitlines():
            try:
                meta = json.loads(line)["eventMetadata"]
                ids.add(str(meta["inferenceId"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line: the reader skips it too
    return ids


@dataclass(frozen=True)
class ImportResult:
    """What a bulk import recorded, and each refused id with its reason."""

    recorded: int
    refused: list[tuple[str, str]]

    def counts(self) -> dict[str, int]:
        """Refusals by reason."""
        return dict(Counter(reason for _, reason in self.refused))


def import_outcomes(
    store: Store, model: str, outcomes: list[Outcome], known: set[str], at: str
) -> ImportResult:
    """Record each outcome whose inference id was captured and has none yet.

    Args:
        store: the model store.
        model: model name.
        outcomes: parsed from the file (:func:`core.feedback.parse_import`).
        known: the captured inference ids (:func:`captured_ids`).
        at: the import's time, in each record.
    """
    recorded = 0
    refused: list[tuple[str, str]] = []
    for outcome in outcomes:
        if outcome.inference_id not in known:
            refused.append((outcome.inference_id, UNKNOWN))
        elif record_outcome(store, model, outcome, "import", at):
            recorded += 1
        else:
            refused.append((outcome.inference_id, DUPLICATE))
    return ImportResult(recorded, refused)

"""The observations of one look: captured answers joined to their late labels, per arm.

Pure (no I/O): :func:`observe` takes the capture reader's frame and the source's label rows
and returns the :class:`core.experiment.Observations` that :func:`core.experiment.decide`
judges.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from core.experiment import PLATFORM_METRICS, Experiment, Observations
from core.feedback import apply_feedback

UNREADABLE_KEY = "request key unreadable: left unlabelled"
REPEATED_ID = "inference id repeated within an arm: left unpaired"
CHOSEN_ARM = "arm chosen by the caller, not drawn: left out"
PAIR_ON = ("inference_id", "row")
"""A shadow pair: the two arms' answers to one record of one request (its inference id)."""


def _normalise_keys(frame: Any, key_types: Mapping[str, str]) -> tuple[Any, int]:
    """Key columns in one comparable form: timestamps as naive UTC, everything else as text.

    Returns:
        The frame, and how many of its rows held a key value that is not one (a timestamp
        that does not parse): null there, so that the row joins no label.
    """
    import pandas as pd

    out = frame.copy()
    unreadable = pd.Series(False, index=out.index)
    for col, kind in key_types.items():
        if kind == "timestamp":
            parsed = pd.to_datetime(out[col], utc=True, format="mixed", errors="coerce")
            unreadable |= parsed.isna() & out[col].notna()
            out[col] = parsed.dt.tz_localize(None)
        else:
            out[col] = out[col].astype(str)
    return out, int(unreadable.sum())


def _private(name: str, taken: Any) -> str:
    """``name``, prefixed until no column of ``taken`` has it (a request's key never collides)."""
    while name in taken:
        name = "_" + name
    return name


def observe(
    exp: Experiment,
    captured: Any,
    labels: Any,
    family: Any,
    key_types: Mapping[str, str],
    skipped: Mapping[str, int] | None = None,
    feedback: Any = None,
) -> Observations:
    """Join captured answers to their late labels and compute each arm's per-request values.

    Args:
        exp: the experiment (its mode decides whether values are paired).
        captured: :func:`adapters.capture.read_captures`' frame (one row per request record);
            rows whose arm the caller ``chosen`` are left out of every count and value, and
            counted under :data:`CHOSEN_ARM`.
        labels: the source rows: the key columns and the family's label column.
        family: the model's :class:`core.families.Family`.
        key_types: the dataset's key columns and their types (the join key).
        skipped: what the reader skipped, by reason; carried into the observations.
        feedback: reported outcomes (``inference_id``, ``outcome``), beside the source rows:
            :func:`core.feedback.apply_feedback`.

    Returns:
        Requests and labelled answers per arm; for every family metric, ``latency_ms`` and
        ``error``, the champion's and the challenger's values (in shadow mode, pairs of the two
        arms' answers to the same request: same inference id and record); what was skipped.
    """
    empty = (np.empty(0), np.empty(0))
    counts: dict[str, int] = dict(skipped or {})
    if captured is None or len(captured) == 0:
        zero = {"champion": 0, "challenger": 0}
        nothing = {m: empty for m in family.experiment_metrics}
        return Observations(zero, dict(zero), nothing, counts)
    keys = list(key_types)
    missing = [k for k in keys if k not in captured.columns]
    frame = captured.assign(arm=captured["arm"].replace({"shadow": "challenger"}))
    frame = frame[frame["arm"].isin(["champion", "challenger"])]
    if "chosen" in frame.columns:  # a caller who picks its arm is no randomised unit
        chosen = frame["chosen"].fillna(False).astype(bool)
        if chosen.any():
            counts[CHOSEN_ARM] = counts.get(CHOSEN_ARM, 0) + int(chosen.sum())
        frame = frame[~chosen]
    requests = {arm: int((frame["arm"] == arm).sum()) for arm in ("champion", "challenger")}
    label = _private("__label", frame.columns)
    if missing:  # requests without their key columns can never be labelled
        frame = frame.assign(**{label: np.nan})
    else:
        frame, unreadable = _normalise_keys(frame, key_types)
        if unreadable:
            counts[UNREADABLE_KEY] = counts.get(UNREADABLE_KEY, 0) + unreadable
        lab, _ = _normalise_keys(labels, key_types)
        lab = lab.rename(columns={family.label_column: label}).dropna(subset=keys)
        frame = frame.merge(lab[[*keys, label]].drop_duplicates(keys), on=keys, how="left")
    frame = apply_feedback(frame, feedback, label)
    done = frame[(frame["error"] == 0) & frame[label].notna()]
    losses = family.request_losses(done, done[label]) if len(done) else None
    pair_on = [c for c in PAIR_ON if c in frame.columns]
    per_row = frame[["arm", "error", "latency_ms", *pair_on]].copy()
    for metric in family.experiment_metrics:
        per_row[metric] = np.nan if losses is None else losses[metric].reindex(per_row.index)
    labelled = {arm: int((done["arm"] == arm).sum()) for arm in ("champion", "challenger")}
    values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    metrics = [*family.experiment_metrics, *PLATFORM_METRICS]
    if exp.paired:
        pairs, repeated = _pairs(per_row, pair_on)
        if repeated:
            counts[REPEATED_ID] = counts.get(REPEATED_ID, 0) + repeated
        for metric in metrics:
            both = pairs[[f"{metric}_a", f"{metric}_b"]].dropna()
            values[metric] = (both.iloc[:, 0].to_numpy(float), both.iloc[:, 1].to_numpy(float))
    else:
        for metric in metrics:
            col = per_row[["arm", metric]].dropna()
            values[metric] = (
                col.loc[col["arm"] == "champion", metric].to_numpy(float),
                col.loc[col["arm"] == "challenger", metric].to_numpy(float),
            )
    return Observations(requests, labelled, values, counts)


def _pairs(per_row: Any, pair_on: list[str]) -> tuple[Any, int]:
    """The champion's and the challenger's answers to the same request, side by side.

    Joined on the request's inference id (and the record's place in it), never on the key
    columns: two requests about the same client and day are two pairs, not a cross of them.
    An id that is not unique within an arm (a caller may send its own) pairs nothing.

    Returns:
        One row per pair (columns suffixed ``_a`` for the champion, ``_b`` for the
        challenger), and how many rows were left unpaired for a repeated id.
    """
    import pandas as pd

    if "inference_id" not in pair_on:
        return pd.DataFrame(columns=[f"{c}_{s}" for c in per_row.columns for s in "ab"]), 0
    known = per_row[per_row["inference_id"].notna() & (per_row["inference_id"] != "")]
    repeated = known.duplicated([*pair_on, "arm"], keep=False)
    unique = known[~repeated]
    pairs = pd.merge(
        unique[unique["arm"] == "champion"],
        unique[unique["arm"] == "challenger"],
        on=pair_on,
        suffixes=("_a", "_b"),
    )
    return pairs, int(repeated.sum())

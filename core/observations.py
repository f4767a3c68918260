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


def _normalise_keys(frame: Any, key_types: Mapping[str, str]) -> Any:
    """Key columns in one comparable form: timestamps as naive UTC, everything else as text."""
    import pandas as pd

    out = frame.copy()
    for col, kind in key_types.items():
        if kind == "timestamp":
            out[col] = pd.to_datetime(out[col], utc=True, format="mixed").dt.tz_localize(None)
        else:
            out[col] = out[col].astype(str)
    return out


def observe(
    exp: Experiment,
    captured: Any,
    labels: Any,
    family: Any,
    key_types: Mapping[str, str],
) -> Observations:
    """Join captured answers to their late labels and compute each arm's per-request values.

    Args:
        exp: the experiment (its mode decides whether values are paired).
        captured: :func:`adapters.capture.read_captures`' frame (one row per request record).
        labels: the source rows: the key columns and the family's label column.
        family: the model's :class:`core.families.Family`.
        key_types: the dataset's key columns and their types (the join key).

    Returns:
        Requests and labelled answers per arm; for every family metric, ``latency_ms`` and
        ``error``, the champion's and the challenger's values (pairs on the request key in
        shadow mode, where both arms answered the same request).
    """
    import pandas as pd

    empty = (np.empty(0), np.empty(0))
    if captured is None or len(captured) == 0:
        zero = {"champion": 0, "challenger": 0}
        return Observations(zero, dict(zero), {m: empty for m in family.experiment_metrics})
    keys = list(key_types)
    missing = [k for k in keys if k not in captured.columns]
    frame = captured.assign(arm=captured["arm"].replace({"shadow": "challenger"}))
    frame = frame[frame["arm"].isin(["champion", "challenger"])]
    requests = {arm: int((frame["arm"] == arm).sum()) for arm in ("champion", "challenger")}
    if missing:  # requests without their key columns can never be labelled
        frame = frame.assign(__label=np.nan)
    else:
        frame = _normalise_keys(frame, key_types)
        lab = _normalise_keys(labels, key_types).rename(columns={family.label_column: "__label"})
        frame = frame.merge(lab.drop_duplicates(keys), on=keys, how="left")
    done = frame[(frame["error"] == 0) & frame["__label"].notna()]
    losses = family.request_losses(done, done["__label"]) if len(done) else None
    per_row = frame[["arm", "error", "latency_ms", *(k for k in keys if not missing)]].copy()
    for metric in family.experiment_metrics:
        per_row[metric] = np.nan if losses is None else losses[metric].reindex(per_row.index)
    labelled = {arm: int((done["arm"] == arm).sum()) for arm in ("champion", "challenger")}
    values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    metrics = [*family.experiment_metrics, *PLATFORM_METRICS]
    if exp.paired and not missing:
        first = per_row.drop_duplicates([*keys, "arm"])
        pairs = pd.merge(
            first[first["arm"] == "champion"],
            first[first["arm"] == "challenger"],
            on=keys,
            suffixes=("_a", "_b"),
        )
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
    return Observations(requests, labelled, values)

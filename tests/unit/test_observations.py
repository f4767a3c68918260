"""The join of one look (:func:`core.observations.observe`): hostile columns, unreadable keys,
shadow pairs on the inference id, and what was skipped carried to the look and its artifact.

The frames are shaped as :func:`adapters.capture.read_captures` returns them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd

from core.experiment import decide
from core.observations import REPEATED_ID, UNREADABLE_KEY, observe
from tasks.experiment import look_markdown
from tests.fixtures.experiments import CFG, FAMILY, record
from tests.unit.test_experiment import START

KEYS = {k: CFG.dataset.columns[k] for k in CFG.dataset.key_columns}
DAY = "2026-12-01"


def row(
    arm: str, client: str, answer: float, latency: float, inference_id: str, **extra: Any
) -> dict[str, Any]:
    """One captured request record with its answer, as the reader returns it."""
    return {
        "client_id": client,
        "day": DAY,
        "tier": "pro",
        "recommended_limit": answer,
        "inference_id": inference_id,
        "arm": arm,
        "variant": arm,
        "version": "v1",
        "latency_ms": latency,
        "row": 0,
        "error": 0,
        **extra,
    }


def labels(**limits: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "client_id": list(limits),
            "day": [f"{DAY} 00:00:00"] * len(limits),
            "best_limit": list(limits.values()),
        }
    )


def test_a_request_column_named_like_the_label_joins_nothing_and_breaks_nothing() -> None:
    """``__label`` in a request made the join raise KeyError for every model's look."""
    captured = pd.DataFrame(
        [
            row("champion", "c1", 100.0, 5, "i1", __label=1e9),
            row("challenger", "c2", 200.0, 5, "i2"),
        ]
    )
    obs = observe(record(mode="ab"), captured, labels(c1=110.0, c2=190.0), FAMILY, KEYS)
    assert obs.labelled == {"champion": 1, "challenger": 1}
    champion, challenger = obs.values["abs_error"]
    assert list(champion) == [10.0] and list(challenger) == [10.0]


def test_an_unreadable_key_leaves_its_request_unlabelled_and_counted() -> None:
    captured = pd.DataFrame(
        [
            row("champion", "c1", 100.0, 5, "i1"),
            {**row("challenger", "c1", 90.0, 5, "i2"), "day": "the day after never"},
        ]
    )
    obs = observe(record(mode="ab"), captured, labels(c1=110.0), FAMILY, KEYS)
    assert obs.requests == {"champion": 1, "challenger": 1}
    assert obs.labelled == {"champion": 1, "challenger": 0}
    assert obs.skipped == {UNREADABLE_KEY: 1}


def test_shadow_pairs_join_on_the_inference_id_not_on_the_key_columns() -> None:
    """Two requests about the same client and day: each arm's answer to the first request is
    paired with the other arm's answer to the first, whatever order the capture holds them in
    (the shadow's copies are answered later, from a queue)."""
    captured = pd.DataFrame(
        [
            row("champion", "c1", 100.0, 1.0, "first"),
            row("champion", "c1", 100.0, 50.0, "second"),
            row("shadow", "c1", 100.0, 51.0, "second"),
            row("shadow", "c1", 100.0, 2.0, "first"),
        ]
    )
    obs = observe(record(mode="shadow"), captured, labels(c1=110.0), FAMILY, KEYS)
    champion, challenger = obs.values["latency_ms"]
    assert sorted(zip(champion, challenger, strict=True)) == [(1.0, 2.0), (50.0, 51.0)]
    assert len(obs.values["abs_error"][0]) == 2


def test_an_inference_id_repeated_within_an_arm_pairs_nothing() -> None:
    """A caller may send its own id: an id seen twice in one arm cannot say which is which."""
    captured = pd.DataFrame(
        [
            row("champion", "c1", 100.0, 1.0, "same"),
            row("champion", "c2", 100.0, 50.0, "same"),
            row("shadow", "c2", 100.0, 51.0, "same"),
            row("champion", "c3", 100.0, 3.0, "own"),
            row("shadow", "c3", 100.0, 4.0, "own"),
        ]
    )
    obs = observe(record(mode="shadow"), captured, labels(c1=1.0, c2=2.0, c3=3.0), FAMILY, KEYS)
    assert list(zip(*obs.values["latency_ms"], strict=True)) == [(3.0, 4.0)]
    assert obs.skipped == {REPEATED_ID: 2}


def test_what_was_skipped_reaches_the_look_and_its_artifact() -> None:
    reasons = {"not a capture record": 2, "request record names a column the analysis owns": 1}
    captured = pd.DataFrame([row("champion", "c1", 100.0, 5, "i1")])
    exp = record(mode="ab")
    obs = observe(exp, captured, labels(c1=110.0), FAMILY, KEYS, skipped=reasons)
    assert obs.skipped == reasons
    _, look = decide(exp, obs, START + timedelta(days=1))
    assert look["skipped"] == reasons
    assert (
        "3 captured record(s) skipped: not a capture record (2); request record names a column "
        "the analysis owns (1)" in look_markdown(exp, look)
    )

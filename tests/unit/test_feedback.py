"""Reported outcomes: parsing (the API body and the bulk file), the store record written once,
the bulk import's refusals, and the join beside the source table's labels.

The frames are shaped as :func:`adapters.capture.read_captures` returns them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from adapters import layout
from adapters.feedback import import_outcomes, read_outcomes, record_outcome
from adapters.store import LocalStore
from core.feedback import (
    DUPLICATE,
    UNKNOWN,
    FeedbackRefused,
    Outcome,
    apply_feedback,
    feedback_metrics,
    file_format,
    parse_body,
    parse_import,
)
from core.observations import observe
from tests.fixtures.experiments import FAMILY, record
from tests.unit.test_observations import KEYS, labels, row

AT = "2026-12-08T02:00:00.000Z"


# --- the API body -------------------------------------------------------------------------------


def test_a_body_with_an_id_and_a_number_is_an_outcome() -> None:
    assert parse_body(b'{"inference_id": "abc-1", "outcome": 250}') == Outcome(
        inference_id="abc-1", outcome=250.0
    )


def test_a_flag_counts_as_one_or_zero() -> None:
    # The abuse detector's label is a flag: the rate limiter reports true or false.
    assert parse_body(b'{"inference_id": "a", "outcome": true}').outcome == 1.0
    assert parse_body(b'{"inference_id": "a", "outcome": false}').outcome == 0.0


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"outcome": 1}', "inference_id"),
        (b'{"inference_id": "a"}', "outcome"),
        (b'{"inference_id": "", "outcome": 1}', "inference_id"),
        (b'{"inference_id": "a b", "outcome": 1}', "inference_id"),
        (b'{"inference_id": "a", "outcome": "many"}', "outcome"),
        (b'{"inference_id": "a", "outcome": 1e400}', "outcome"),
        (b'{"inference_id": "a", "outcome": NaN}', "outcome"),
        (b'{"inference_id": "a", "outcome": 1, "email": "x@y"}', "email"),
    ],
)
def test_a_malformed_body_is_refused_naming_what_is_wrong(body: bytes, named: str) -> None:
    with pytest.raises(FeedbackRefused) as caught:
        parse_body(body)
    assert caught.value.kind == "malformed"
    assert named in caught.value.reason


# --- the bulk file ------------------------------------------------------------------------------


def test_a_csv_file_gives_its_outcomes_and_each_bad_line_with_its_reason() -> None:
    text = "inference_id,outcome\na,1.5\nb,lots\na,2\nc,3,4\nd,true\n"
    read = parse_import(text, "csv")
    assert [(o.inference_id, o.outcome) for o in read.outcomes] == [("a", 1.5), ("d", 1.0)]
    assert [n for n, _ in read.problems] == [3, 4, 5]
    assert "outcome" in read.problems[0][1]
    assert read.problems[1][1] == DUPLICATE
    assert "more cells" in read.problems[2][1]


def test_a_csv_file_without_the_columns_is_one_problem() -> None:
    read = parse_import("id,label\na,1\n", "csv")
    assert read.outcomes == [] and "inference_id and outcome" in read.problems[0][1]


def test_a_json_lines_file_skips_blank_lines_and_lists_bad_ones() -> None:
    text = '{"inference_id": "a", "outcome": 1}\n\nnope\n{"inference_id": "b", "outcome": "2"}\n'
    read = parse_import(text, "jsonl")
    assert [o.inference_id for o in read.outcomes] == ["a", "b"]
    assert read.problems == [(3, "malformed: the line is not JSON")]


@pytest.mark.parametrize(
    ("name", "fmt"), [("x.csv", "csv"), ("X.JSONL", "jsonl"), ("y.ndjson", "jsonl")]
)
def test_the_format_follows_the_suffix(name: str, fmt: str) -> None:
    assert file_format(name) == fmt


def test_another_suffix_is_refused() -> None:
    with pytest.raises(ValueError, match="CSV"):
        file_format("outcomes.xlsx")


# --- the store ----------------------------------------------------------------------------------


def test_the_key_is_spelled_under_feedback_and_hashes_the_id() -> None:
    key = layout.feedback_key("limit_optimiser", "../../models/x")
    assert key.startswith("feedback/limit_optimiser/") and key.endswith(".json")
    assert key.count("/") == 2  # a caller's id never makes a path of its own
    assert layout.feedback_key("m", "a") == layout.feedback_key("m", "a")
    assert layout.feedback_key("m", "a") != layout.feedback_key("m", "b")


def test_an_outcome_is_recorded_once_and_a_second_report_is_a_duplicate(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = Outcome(inference_id="i1", outcome=100.0)
    assert record_outcome(store, "limit_optimiser", first, "router", AT)
    # The same id again, even from a new process (a restarted router) and another value.
    again = LocalStore(tmp_path)
    assert not record_outcome(again, "limit_optimiser", first.model_copy(), "router", AT + "x")
    assert not record_outcome(
        again, "limit_optimiser", Outcome(inference_id="i1", outcome=5.0), "router", AT
    )
    read = read_outcomes(again, "limit_optimiser")
    assert read.frame.to_dict("records") == [{"inference_id": "i1", "outcome": 100.0}]


def test_an_unreadable_record_is_skipped_and_counted(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    record_outcome(store, "m", Outcome(inference_id="i1", outcome=1.0), "router", AT)
    store.put_bytes(layout.feedback_key("m", "torn"), b'{"inference_id": ')
    read = read_outcomes(store, "m")
    assert list(read.frame["inference_id"]) == ["i1"]
    assert read.skipped == {"outcome record unreadable": 1}


def test_the_import_refuses_unknown_and_duplicate_ids_with_their_reason(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    record_outcome(store, "m", Outcome(inference_id="old", outcome=1.0), "router", AT)
    outcomes = [Outcome(inference_id=i, outcome=2.0) for i in ("old", "new", "stranger")]
    result = import_outcomes(store, "m", outcomes, {"old", "new"}, AT)
    assert result.recorded == 1
    assert result.refused == [("old", DUPLICATE), ("stranger", UNKNOWN)]
    stored = json.loads(store.get_bytes(layout.feedback_key("m", "new")))
    assert stored["source"] == "import" and stored["outcome"] == 2.0


# --- the join -----------------------------------------------------------------------------------


def test_a_reported_outcome_labels_the_answer_the_source_table_does_not() -> None:
    """No source row about c2: only its reported outcome labels the challenger's answer."""
    captured = pd.DataFrame(
        [row("champion", "c1", 100.0, 5, "i1"), row("challenger", "c2", 200.0, 5, "i2")]
    )
    feedback = pd.DataFrame({"inference_id": ["i2"], "outcome": [230.0]})
    without = observe(record(mode="ab"), captured, labels(c1=110.0), FAMILY, KEYS)
    assert without.labelled == {"champion": 1, "challenger": 0}
    obs = observe(record(mode="ab"), captured, labels(c1=110.0), FAMILY, KEYS, None, feedback)
    assert obs.labelled == {"champion": 1, "challenger": 1}
    assert list(obs.values["abs_error"][1]) == [30.0]


def test_a_reported_outcome_wins_over_the_table_for_its_own_answer() -> None:
    frame = pd.DataFrame(
        {"inference_id": ["i1", "i1", "i2"], "row": [0, 1, 0], "__label": [10.0, 10.0, 20.0]}
    )
    feedback = pd.DataFrame({"inference_id": ["i1"], "outcome": [99.0]})
    out = apply_feedback(frame, feedback, "__label")
    # Record 0 of i1 takes the outcome; its record 1 (another client) keeps the table's label.
    assert list(out["__label"]) == [99.0, 10.0, 20.0]


def test_outcomes_label_requests_that_carry_no_key_columns() -> None:
    captured = pd.DataFrame([row("champion", "c1", 100.0, 5, "i1")]).drop(columns=["day"])
    feedback = pd.DataFrame({"inference_id": ["i1"], "outcome": [150.0]})
    obs = observe(record(mode="ab"), captured, labels(c1=110.0), FAMILY, KEYS, None, feedback)
    assert obs.labelled["champion"] == 1
    assert list(obs.values["abs_error"][0]) == [50.0]


# --- the monitor's live error -------------------------------------------------------------------


def test_the_live_error_counts_the_champions_reported_answers_only() -> None:
    captured = pd.DataFrame(
        [
            {**row("champion", "c1", 100.0, 5, "i1"), "version": "v1"},
            {**row("champion", "c2", 100.0, 5, "i2"), "version": "v1"},
            {**row("champion", "c3", 100.0, 5, "i3"), "version": "v1", "error": 1},
            {**row("challenger", "c4", 500.0, 5, "i4"), "version": "v2"},
            {**row("champion", "c5", 100.0, 5, "i5"), "version": "v1"},  # not reported
        ]
    )
    outcomes = {"i1": 110.0, "i2": 80.0, "i3": 1.0, "i4": 1.0}
    feedback = pd.DataFrame({"inference_id": list(outcomes), "outcome": list(outcomes.values())})
    metrics = feedback_metrics(captured, feedback, FAMILY, "v1")
    # i3 failed (no answer to judge), i4 is another version's, i5 has no outcome.
    assert metrics["feedback_labelled"] == 2.0
    assert metrics["feedback_abs_error"] == pytest.approx(15.0)


def test_no_reported_answer_adds_no_live_metric() -> None:
    captured = pd.DataFrame([{**row("champion", "c1", 100.0, 5, "i1"), "version": "v1"}])
    feedback = pd.DataFrame({"inference_id": ["other"], "outcome": [1.0]})
    assert feedback_metrics(captured, feedback, FAMILY, "v1") == {}
    assert feedback_metrics(pd.DataFrame(), feedback, FAMILY, "v1") == {}


def test_the_monitor_adds_the_reported_live_error_beside_the_source_metrics(tmp_path: Path) -> None:
    """What ``flows.monitor`` does per model: the store's capture joined to the store's outcomes."""
    import time

    from core.drift import Champion
    from serving.capture import Captured, capture_key, capture_line
    from serving.experiment_routing import CaptureRoute
    from tasks.monitor import score_feedback
    from tests.fixtures.experiments import CFG

    store = LocalStore(tmp_path)
    route = CaptureRoute(uri=store.url("capture/limit_optimiser"), endpoint="limit_optimiser")
    now = time.time()

    def line(inference_id: str, limit: float) -> str:
        item = Captured(
            route=route, variant="a", version="v1", arm="champion", experiment_id="",
            inference_id=inference_id, content_type="application/json",
            request=json.dumps({"instances": [{"client_id": "c1", "day": "2026-12-01"}]}).encode(),
            response=json.dumps({"predictions": [{"recommended_limit": limit}]}).encode(),
            response_type="application/json", at=now,
        )  # fmt: skip
        return json.dumps(capture_line(item))

    key = "capture/limit_optimiser/" + capture_key("limit_optimiser", "a", now, "part")
    store.put_bytes(key, (line("i1", 100.0) + "\n" + line("i2", 200.0) + "\n").encode())
    reported = Outcome(inference_id="i1", outcome=104.0)
    record_outcome(store, "limit_optimiser", reported, "router", AT)
    champion = Champion("limit_optimiser", "v1", None, [], None)
    metrics, note = score_feedback.fn(store, CFG, champion, ({"mae": 3.0}, None), 7)
    assert note is None
    assert metrics == {
        "mae": 3.0,
        "feedback_abs_error": 4.0,
        "feedback_abs_pct_error": pytest.approx(4.0 / 104.0),
        "feedback_labelled": 1.0,
    }

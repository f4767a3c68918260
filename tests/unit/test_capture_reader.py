"""Reading captured answers: whatever a caller sends or a crash leaves is skipped and counted.

The lines are written by the router's own encoder (:func:`serving.capture.capture_line`), so
what is read here is what the router writes; the hostile and broken ones are edited from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapters.capture import (
    BAD_RECORD,
    HOSTILE_RECORD,
    NOT_A_RECORD,
    read_captures,
)
from adapters.store import LocalStore
from serving.capture import Captured, capture_line
from serving.experiment_routing import CaptureRoute

EXP = "exp-1"
KEY = "capture/m/ep/champ/2026/12/02/04/part.jsonl"


def line(
    request: bytes,
    response: bytes = b'{"predictions": [{"y": 1.0}]}',
    *,
    content_type: str = "application/json",
    response_type: str = "application/json",
    status: int = 200,
    arm: str = "champion",
    inference_id: str = "id-1",
) -> dict[str, Any]:
    """One capture record as the router writes it."""
    item = Captured(
        CaptureRoute("unused", "ep"), "champ", "v1", arm, EXP, inference_id, content_type,
        request, response, response_type, 0.0, latency_ms=5.0, status=status,
    )  # fmt: skip
    return capture_line(item)


def read(tmp_path: Path, lines: list[str]) -> Any:
    store = LocalStore(tmp_path / "store")
    store.put_bytes(KEY, ("\n".join(lines) + "\n").encode())
    return read_captures(store, store.url("capture/m"), EXP)


def test_broken_lines_are_skipped_and_counted_and_never_fail_the_reading(tmp_path: Path) -> None:
    good = line(b'{"instances": [{"x": 1}]}')

    def edited(path: tuple[str, ...], value: Any) -> str:
        doc = json.loads(json.dumps(good))
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return json.dumps(doc)

    attrs = good["eventMetadata"]["customAttributes"]
    where = ("eventMetadata", "customAttributes")
    broken = [
        edited(("eventMetadata",), []),  # metadata not an object
        edited(where, attrs.replace("status=200", "status=ok")),
        edited(where, attrs.replace("latency_ms=5", "latency_ms=x")),
        edited(("captureData", "endpointInput"), "not an object"),
        edited(("captureData", "endpointInput", "data"), '{"instances": 5}'),
        "[" * 100_000,  # nested past the parser's recursion limit
        '{"eventMetadata": {"customAttributes": "experiment_id=exp-1"}}',  # half a record
        "not json",
    ]
    captured = read(tmp_path, [json.dumps(good), *broken, json.dumps(good)])
    assert captured.skipped == len(broken)
    assert captured.reasons == {NOT_A_RECORD: len(broken)}
    assert list(captured.frame["x"]) == [1, 1]
    assert list(captured.frame["error"]) == [0, 0]


def test_hostile_request_records_are_skipped_and_counted_the_rest_of_the_request_kept(
    tmp_path: Path,
) -> None:
    """A key the analysis owns (``__label`` broke every decision) or a nested value drops
    that record only; the others of the same request keep their answers."""
    records = [
        {"x": 1},
        {"x": 2, "__label": 1e6},
        {"x": 3, "arm": "challenger"},
        {"x": 4, "error": 0},
        {"x": 5, "nested": {"a": 1}},
        7,
        {"x": 8},
    ]
    answers = {"predictions": [{"y": float(i)} for i in range(len(records))]}
    request = json.dumps({"instances": records}).encode()
    captured = read(tmp_path, [json.dumps(line(request, json.dumps(answers).encode()))])
    assert captured.reasons == {HOSTILE_RECORD: 3, BAD_RECORD: 2}
    assert captured.skipped == 5
    frame = captured.frame
    assert list(frame["x"]) == [1, 8] and list(frame["y"]) == [0.0, 6.0]
    assert list(frame["row"]) == [0, 6] and set(frame["arm"]) == {"champion"}
    assert "__label" not in frame.columns


def test_csv_requests_and_their_server_errors_count_like_json_ones(tmp_path: Path) -> None:
    """CSV bodies are read with the serving app's codec; a 5xx to a CSV request is an error of
    its arm (the ``error`` guardrail) exactly as one to a JSON request."""
    csv_in = b"client_id,day,x\nc1,2026-12-01,1\n007,2026-12-01,2\n"
    lines = [
        line(csv_in, b"y\n1.5\n2.5\n", content_type="text/csv", response_type="text/csv"),
        line(b"client_id,x\nc3,3\n", b'{"error": "down"}', content_type="text/csv", status=503),
        line(b'{"instances": [{"client_id": "c4", "x": 4}]}', b'{"error": "down"}', status=500),
    ]
    captured = read(tmp_path, [json.dumps(x) for x in lines])
    assert captured.skipped == 0, captured.reasons
    frame = captured.frame.set_index("client_id")
    assert list(frame.index) == ["c1", "007", "c3", "c4"]  # request cells as the app reads them
    assert list(frame["x"]) == ["1", "2", "3", 4]
    assert list(frame["y"].iloc[:2]) == [1.5, 2.5]
    assert list(frame["error"]) == [0, 0, 1, 1]
    assert list(frame["day"].iloc[:2]) == ["2026-12-01", "2026-12-01"]

"""Capture keeps only what it must: the declared input columns, the configured share of answers.

A caller may add any key to a record (an API key, an e-mail address): the model ignores it,
and so must the capture. These tests write capture records as the router does and read the
files; ``tests/integration/test_local_experiment.py`` does the same through a real router.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.capture import parse_line
from serving.capture import Captured, CaptureWriter
from serving.capture_filter import keep_columns
from serving.experiment_routing import CaptureRoute
from serving.routes import parse_state

COLUMNS = ("client_id", "rps")
SECRETS = {"api_key": "sk-live-123", "email": "someone@example.com"}
RECORDS = [{"client_id": "c1", "rps": 3.5, **SECRETS}, {"client_id": "c2", "rps": 1.0, **SECRETS}]
VARIANT = {"name": "a", "version": "v1", "port": 1}
KEPT = [{"client_id": "c1", "rps": 3.5}, {"client_id": "c2", "rps": 1.0}]


@pytest.mark.parametrize(
    "payload",
    [
        {"instances": RECORDS},
        {"dataframe_records": RECORDS},
        RECORDS,
        {
            "dataframe_split": {
                "columns": ["client_id", "rps", "api_key", "email"],
                "data": [[r["client_id"], r["rps"], r["api_key"], r["email"]] for r in RECORDS],
            }
        },
    ],
    ids=["instances", "dataframe_records", "list", "dataframe_split"],
)
def test_a_json_request_keeps_only_the_declared_columns(payload: Any) -> None:
    kept = keep_columns(json.dumps(payload).encode(), "application/json", COLUMNS)
    assert json.loads(kept) == {"instances": KEPT}


def test_a_csv_request_keeps_only_the_declared_columns() -> None:
    body = b"client_id,api_key,rps,email\nc1,sk-live-123,3.5,someone@example.com\n"
    assert keep_columns(body, "text/csv; charset=utf-8", COLUMNS) == b"client_id,rps\nc1,3.5\n"


def test_a_body_that_does_not_parse_keeps_nothing() -> None:
    assert keep_columns(b'{"api_key": "sk-live-123"', "application/json", COLUMNS) == (
        b'{"instances":[]}'
    )


def captured(route: CaptureRoute, body: bytes, content_type: str = "application/json") -> Captured:
    return Captured(
        route, "champ", "v1", "champion", "exp-1", "id-1", content_type, body,
        b'{"predictions": [10.0, 20.0]}', "application/json", 1_796_180_645.0,
    )  # fmt: skip


def test_a_captured_record_holds_no_key_the_model_does_not_declare(tmp_path: Path) -> None:
    route = CaptureRoute(str(tmp_path / "capture" / "m"), "m", columns=COLUMNS)
    writer = CaptureWriter()
    writer.record(captured(route, json.dumps({"instances": RECORDS}).encode()))
    assert asyncio.run(writer.flush()) == 1
    (path,) = Path(route.uri).rglob("*.jsonl")
    text = path.read_text()
    for secret in (*SECRETS, *SECRETS.values()):
        assert secret not in text
    line = json.loads(text)
    assert json.loads(line["captureData"]["endpointInput"]["data"]) == {"instances": KEPT}
    # The analysis reads it as it reads any request.
    rows = parse_line(text.strip(), "exp-1")
    assert rows is not None and [(r["client_id"], r["rps"]) for r in rows] == [
        ("c1", 3.5),
        ("c2", 1.0),
    ]


@pytest.mark.parametrize(("percent", "kept"), [(0.0, 0), (100.0, 50)])
def test_capture_keeps_its_routes_share_of_the_answers(percent: float, kept: int) -> None:
    route = CaptureRoute("/nowhere", "m", columns=COLUMNS, percent=percent)
    writer = CaptureWriter()
    for _ in range(50):
        writer.record(captured(route, b"{}"))
    assert writer.stats["captured"] == kept


def test_the_route_table_carries_the_captures_columns_and_share() -> None:
    capture = {"uri": "/s/capture/m", "endpoint": "m", "columns": list(COLUMNS), "percent": 10}
    table = parse_state(
        {
            "generation": 1,
            "models": {"m": {"variants": [VARIANT], "capture": capture}},
        }
    )
    route = table.experiments["m"].capture
    assert route is not None and route.columns == COLUMNS and route.percent == 10.0
    for bad, message in (({"percent": 101}, "percent"), ({"columns": "rps"}, "columns")):
        raw = {"generation": 1, "models": {"m": {"variants": [], "capture": capture | bad}}}
        raw["models"]["m"]["variants"] = [VARIANT]
        with pytest.raises(ValueError, match=message):
            parse_state(raw)


def test_a_deploy_captures_what_the_models_config_says(tmp_path: Path) -> None:
    import dataclasses

    from adapters.endpoints.local.capture_route import deployed_capture
    from core.endpoint import VersionToServe
    from core.endpoint_config import EndpointConfig
    from core.families import get_family

    target = VersionToServe(
        "limit_optimiser", "v1", "limit_optimiser", "u", "u", "a" * 64, "b" * 64, [],
        EndpointConfig(),
    )  # fmt: skip
    assert deployed_capture("/s/capture/limit_optimiser", target) is None  # the default: 0 %
    on = dataclasses.replace(target, endpoint=EndpointConfig(data_capture_percent=10))
    entry = deployed_capture("/s/capture/limit_optimiser", on)
    assert entry is not None and entry["percent"] == 10.0
    assert entry["columns"] == list(get_family("limit_optimiser").input_columns())

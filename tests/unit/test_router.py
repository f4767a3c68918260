"""The local router's own checks, before anything is forwarded: body limits and paths.

Forwarding, failover and swaps under load run against real processes in
``tests/integration/test_local_endpoint.py``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.router import MAX_BODY_BYTES, _invocation_model, create_router
from serving.routes import empty_state, write_state

MB = 1024 * 1024


@pytest.fixture
def router(tmp_path: Path) -> Any:
    state = tmp_path / "routes.json"
    write_state(state, empty_state())
    return create_router(state)


def test_the_limit_matches_the_variants_6_mb() -> None:
    # Security review finding 4: the router took 64 MB while every variant refuses past 6 MB.
    assert MAX_BODY_BYTES == 6 * MB


def test_a_declared_length_over_the_limit_is_413_without_reading(router: Any) -> None:
    with TestClient(router) as client:
        response = client.post(
            "/endpoints/m/invocations",
            content=b"x" * (MAX_BODY_BYTES + 1),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413
    assert "router: body of 6291457 bytes exceeds the maximum of 6291456" in response.text


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(router: Any) -> None:
    # 100 chunks of 1 MB without a Content-Length: the router must stop reading after about
    # six of them, not hold 100 MB (it read the whole body before, then compared).
    delivered = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        delivered += 1
        return {"type": "http.request", "body": b"x" * MB, "more_body": delivered < 100}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/endpoints/m/invocations",
        "raw_path": b"/endpoints/m/invocations",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8080),
    }
    asyncio.run(router(scope, receive, send))
    assert sent[0]["status"] == 413
    assert "exceeds the maximum of 6291456 bytes" in json.loads(sent[1]["body"])["error"]
    assert delivered <= MAX_BODY_BYTES // MB + 1


def test_an_unknown_model_is_404_and_other_routes_still_answer(router: Any) -> None:
    with TestClient(router) as client:
        missing = client.post(
            "/endpoints/nothing/invocations",
            json=[{}],
            headers={"content-type": "application/json"},
        )
        ping = client.get("/ping")
    assert missing.status_code == 404 and "endpoint nothing not found" in missing.text
    assert ping.status_code == 200 and ping.json()["router"] is True


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/endpoints/limit_optimiser/invocations", "limit_optimiser"),
        ("/endpoints//invocations", None),
        ("/endpoints/a/b/invocations", None),
        ("/endpoints/limit_optimiser", None),
        ("/invocations", None),
    ],
)
def test_only_the_invocation_path_takes_the_fast_route(path: str, model: str | None) -> None:
    assert _invocation_model(path) == model


def test_unknown_models_never_become_series_and_variants_are_listed_for_discovery(
    tmp_path: Path,
) -> None:
    state = tmp_path / "routes.json"
    routes = empty_state()
    routes["models"]["limit_optimiser"] = {
        "variants": [{"name": "limit_optimiser-v2-abc", "version": "v2", "port": 41001}]
    }
    write_state(state, routes)
    with TestClient(create_router(state)) as client:
        # A caller inventing model names cannot grow the label set (bounded cardinality).
        for i in range(5):
            client.post(f"/endpoints/made-up-{i}/invocations", json=[{}])
        metrics = client.get("/metrics").text
        unknown = client.get("/endpoints/made-up-0/health")
        quiet = client.get("/endpoints/limit_optimiser/health").json()
        targets = client.get("/prometheus/targets").json()
    assert "made-up" not in metrics and "mlops_router_requests_total" in metrics
    assert unknown.status_code == 404
    # Routed but not called yet: no rate, and neither an error share nor a p99 to report.
    assert quiet["requests_per_second"] == 0 and quiet["p99_ms"] is None
    assert quiet["error_rate"] is None
    assert targets == [
        {
            "targets": ["127.0.0.1:41001"],
            "labels": {
                "model": "limit_optimiser",
                "variant": "limit_optimiser-v2-abc",
                "version": "v2",
            },
        }
    ]

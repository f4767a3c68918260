"""Capture and the shadow queue are bounded in bytes, and encoding never holds the event loop.

A caller sets the size of every body (up to the router's 6 MB), so a cap in records bounds
nothing: these tests fill each buffer with large records and read what was kept, dropped and
counted. ``tests/integration/test_capture_load.py`` sends the issue's filling load through a
real router.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.capture import Captured, CaptureWriter
from serving.capture_limits import CaptureLimits, MiB
from serving.experiment_routing import CaptureRoute, ExperimentRoute, ShadowRoute
from serving.shadow import ShadowMirror

MB_BODY = b'{"instances": [' + b'{"x": 1},' * (MiB // 9) + b'{"x": 1}]}'


def item(route: CaptureRoute, body: bytes = MB_BODY, at: float | None = None) -> Captured:
    """One captured answer with ``body`` as its request."""
    return Captured(
        route, "champ", "v1", "champion", "e", "id", "application/json", body,
        b'{"predictions": [1.0]}', "application/json", time.time() if at is None else at,
    )  # fmt: skip


def test_the_capture_buffer_holds_at_most_its_bytes_and_counts_what_it_drops() -> None:
    writer = CaptureWriter(limits=CaptureLimits(buffer_bytes=3 * MiB))
    for _ in range(10):  # ten 1 MB records: a count cap of 100,000 would keep them all
        writer.record(item(CaptureRoute("/nowhere", "m")))
    assert writer.buffered_bytes <= 3 * MiB
    assert writer.stats["captured"] == 2 and writer.stats["dropped"] == 8
    assert writer.dropped["buffer_full"][0] == 8
    assert writer.dropped["buffer_full"][1] == 8 * (len(MB_BODY) + 22)


def test_a_record_over_the_record_cap_is_dropped_and_counted() -> None:
    writer = CaptureWriter(limits=CaptureLimits(record_bytes=512 * 1024))
    writer.record(item(CaptureRoute("/nowhere", "m")))
    assert writer.stats["captured"] == 0
    assert writer.dropped == {"record_too_large": [1, len(MB_BODY) + 22]}


def test_capture_written_per_endpoint_and_hour_stays_within_the_hourly_cap(
    tmp_path: Path,
) -> None:
    route = CaptureRoute(str(tmp_path / "capture" / "m"), "m", columns=("x",))
    cap = 4 * MiB
    writer = CaptureWriter(limits=CaptureLimits(hourly_bytes=cap))
    at = time.time()
    for _ in range(3):  # three flushes of three 1 MB records within one hour
        for _ in range(3):
            writer.record(item(route, at=at))
        asyncio.run(writer.flush())
    on_disk = sum(p.stat().st_size for p in Path(route.uri).rglob("*.jsonl"))
    assert 0 < on_disk <= cap
    assert on_disk == writer.written_bytes
    assert writer.stats["written"] + writer.dropped["hourly_cap"][0] == 9
    assert writer.dropped["hourly_cap"][0] >= 5


def test_the_shadow_queue_holds_at_most_its_bytes() -> None:
    mirror = ShadowMirror(CaptureWriter(), queue_bytes=3 * MiB)
    mirror._running = True  # accepting copies; no worker drains the queue in this test
    shadow = ShadowRoute("s", "v2", 1, 100.0)
    offered = [
        mirror.offer("m", shadow, ExperimentRoute("e"), MB_BODY, {}, "id") for _ in range(10)
    ]
    assert offered.count(True) == 2
    assert mirror.stats["dropped"] == 8 and mirror.dropped_bytes == 8 * len(MB_BODY)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"MLOPS_CAPTURE_BUFFER_BYTES": "10"}, "buffer_bytes"),
        ({"MLOPS_CAPTURE_HOURLY_BYTES": "lots"}, "hourly_bytes"),
        ({"MLOPS_SHADOW_QUEUE_BYTES": str(10**13)}, "shadow_queue_bytes"),
    ],
)
def test_a_cap_out_of_its_bounds_is_refused_naming_it(env: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        CaptureLimits.from_env(env)
    assert CaptureLimits.from_env({"MLOPS_CAPTURE_HOURLY_BYTES": str(MiB)}).hourly_bytes == MiB


def test_the_router_answers_ping_while_the_capture_encoder_is_held(tmp_path: Path) -> None:
    """Encoding runs off the event loop: an encoder held for seconds never holds ``/ping``."""
    from fastapi.testclient import TestClient

    from serving.capture import encode_line
    from serving.router import create_router
    from serving.routes import write_state

    entered, release, done = threading.Event(), threading.Event(), threading.Event()

    def held(captured: Captured) -> bytes:
        entered.set()
        release.wait(20.0)  # on the event loop this holds /ping for the whole 20 s
        done.set()
        return encode_line(captured)

    state = tmp_path / "routes.json"
    write_state(state, {"generation": 1, "models": {}})
    app = create_router(state)
    writer = app.state.forwarder.capture
    writer._encode = held  # the writer's one call per record, wherever it encodes
    with TestClient(app) as client:
        client.portal.call(  # record on the router's own loop, as the forwarder does
            writer.record, item(CaptureRoute(str(tmp_path / "c"), "m", columns=("x",)))
        )
        assert entered.wait(30.0), "the flusher never started encoding"
        answer = client.get("/ping")
        answered_while_held = not done.is_set()
        release.set()
        assert answer.status_code == 200
        assert answered_while_held, "/ping waited for the capture encoder"
    assert writer.stats["written"] == 1


def test_an_encoder_process_writes_the_same_records_as_the_thread(tmp_path: Path) -> None:
    route = CaptureRoute(str(tmp_path / "capture" / "m"), "m", columns=("x",))

    async def write(writer: CaptureWriter) -> None:
        async with writer.running():
            writer.record(item(route, body=b'{"instances": [{"x": 1, "api_key": "k"}]}', at=0.0))

    asyncio.run(write(CaptureWriter(encoder_processes=1)))
    asyncio.run(write(CaptureWriter()))
    lines = [
        json.loads(line)
        for path in sorted(Path(route.uri).rglob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert len(lines) == 2
    for line in lines:
        del line["eventMetadata"]["eventId"]
    assert lines[0] == lines[1]
    assert lines[0]["captureData"]["endpointInput"]["data"] == '{"instances":[{"x":1}]}'


def test_dropped_capture_and_shadow_copies_are_counted_in_metrics(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from serving.router import create_router
    from serving.routes import write_state

    state = tmp_path / "routes.json"
    write_state(state, {"generation": 1, "models": {}})
    app = create_router(state, limits=CaptureLimits(record_bytes=512 * 1024))
    with TestClient(app) as client:
        forwarder = app.state.forwarder
        client.portal.call(forwarder.capture.record, item(CaptureRoute("/nowhere", "m")))
        text = client.get("/metrics").text
    samples = {
        (s.name, s.labels.get("reason")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("mlops_router_capture_dropped_records_total", "record_too_large")] == 1
    assert samples[("mlops_router_capture_dropped_bytes_total", "record_too_large")] == (
        len(MB_BODY) + 22
    )
    assert samples[("mlops_router_capture_dropped_records_total", "buffer_full")] == 0
    assert samples[("mlops_router_shadow_dropped_total", None)] == 0


def test_the_deployers_capture_caps_reach_the_router_and_nothing_secret_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from adapters.endpoints.local.processes import _serving_env

    monkeypatch.setenv("MLOPS_CAPTURE_HOURLY_BYTES", str(16 * MiB))
    monkeypatch.setenv("MLOPS_SHADOW_QUEUE_BYTES", str(8 * MiB))
    monkeypatch.setenv("MLOPS_DATABASE_URL", "postgresql://u:secret@db/x")
    env = _serving_env({})
    limits = CaptureLimits.from_env(env)
    assert (limits.hourly_bytes, limits.shadow_queue_bytes) == (16 * MiB, 8 * MiB)
    assert "MLOPS_DATABASE_URL" not in env

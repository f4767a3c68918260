"""The router's experiment traffic in process: the split, sticky callers, the shadow share,
the route-table keys and the capture record.

The same functions run in the router; ``tests/integration/test_local_experiment.py`` sends a
few hundred requests through a real router to prove the wiring.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binom

from serving.capture import Captured, CaptureWriter
from serving.experiment_routing import (
    CaptureRoute,
    ShadowRoute,
    mirrored,
    split,
)
from serving.routes import Upstream, parse_state

N = 20_000
CHAMPION = Upstream("champ", "m", "v1", 1001, weight=90.0)
CHALLENGER = Upstream("chall", "m", "v2", 1002, weight=10.0)


def interval_99(n: int, share: float) -> tuple[float, float]:
    """The central 99 % binomial interval of the count of ``n`` draws landing with ``share``."""
    low, high = binom.interval(0.99, n, share)
    return float(low), float(high)


def test_20000_random_requests_at_90_10_land_inside_the_99_percent_interval() -> None:
    rng = random.Random(20261202)  # seeded: the test cannot flake
    picks = Counter(split([CHAMPION, CHALLENGER], rng=rng).name for _ in range(N))  # type: ignore[union-attr]
    low, high = interval_99(N, 0.10)
    assert low <= picks["chall"] <= high, picks
    assert picks["champ"] + picks["chall"] == N


def test_20000_distinct_callers_at_90_10_land_inside_the_99_percent_interval() -> None:
    # Sticky keys must still split by weight: the hash spreads callers uniformly.
    picks = Counter(
        split([CHAMPION, CHALLENGER], caller_key=f"client-{i}", secret="secret-of-exp-1").name  # type: ignore[union-attr]
        for i in range(N)
    )
    low, high = interval_99(N, 0.10)
    assert low <= picks["chall"] <= high, picks


def test_weight_over_the_sum_not_over_100() -> None:
    # SageMaker's rule: 3 and 1 is 75/25, whatever the units.
    a, b = Upstream("a", "m", "v1", 1, weight=3.0), Upstream("b", "m", "v2", 2, weight=1.0)
    rng = random.Random(1)
    picks = Counter(split([a, b], rng=rng).name for _ in range(N))  # type: ignore[union-attr]
    low, high = interval_99(N, 0.25)
    assert low <= picks["b"] <= high


def test_a_caller_key_always_lands_on_the_same_arm_and_a_new_experiment_reshuffles() -> None:
    keys = [f"client-{i}" for i in range(500)]
    first = {k: split([CHAMPION, CHALLENGER], caller_key=k, secret="secret-of-exp-1") for k in keys}
    for _ in range(5):
        again = {
            k: split([CHAMPION, CHALLENGER], caller_key=k, secret="secret-of-exp-1") for k in keys
        }
        assert again == first
    other = {k: split([CHAMPION, CHALLENGER], caller_key=k, secret="secret-of-exp-2") for k in keys}
    # Independent assignment: about 2 * 0.9 * 0.1 = 18 % of callers change arm.
    moved = sum(other[k] != first[k] for k in keys)
    assert 40 <= moved <= 140


def test_a_zero_weight_variant_never_answers_and_none_when_nothing_may() -> None:
    zero = Upstream("z", "m", "v3", 3, weight=0.0)
    rng = random.Random(2)
    assert {split([CHAMPION, zero], rng=rng) for _ in range(200)} == {CHAMPION}
    assert split([zero]) is None


def test_the_shadow_gets_its_share_of_copies() -> None:
    shadow = ShadowRoute("s", "v2", 1003, percent=10.0)
    rng = random.Random(3)
    copies = sum(mirrored(shadow, rng) for _ in range(N))
    low, high = interval_99(N, 0.10)
    assert low <= copies <= high
    assert not mirrored(None)


def routes_with(**route: Any) -> dict[str, Any]:
    variants = [{"name": "champ", "version": "v1", "port": 1001, "weight": 90}]
    return {"generation": 1, "models": {"m": {"variants": variants, **route}}}


def test_the_route_table_carries_experiment_shadow_and_capture() -> None:
    table = parse_state(
        routes_with(
            experiment={"id": "exp-1", "arms": {"champ": "champion"}},
            shadow={"name": "s", "version": "v2", "port": 1003, "percent": 5},
            capture={"uri": "/store/capture/m", "endpoint": "m"},
        )
    )
    exp = table.experiments["m"]
    assert exp.experiment_id == "exp-1" and exp.arm("champ") == "champion"
    assert exp.shadow == ShadowRoute("s", "v2", 1003, 5.0)
    assert exp.capture == CaptureRoute("/store/capture/m", "m")
    assert parse_state(routes_with()).experiments == {}


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"experiment": {"arms": {}}}, "experiment must be an object with an 'id'"),
        ({"experiment": {"id": "e", "arms": {"other": "champion"}}}, "arms must map routed"),
        ({"experiment": {"id": "e", "arms": {"champ": "judge"}}}, "arms must map routed"),
        ({"shadow": {"name": "s", "version": "v2", "port": 1, "percent": 0}}, "percent"),
        ({"shadow": {"name": "s", "version": "v2", "port": 0, "percent": 5}}, "port"),
        ({"capture": {"uri": ""}}, "capture needs 'uri' and 'endpoint'"),
    ],
)
def test_a_bad_experiment_route_is_refused_saying_where(
    route: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_state(routes_with(**route))


def test_capture_writes_sagemaker_data_capture_records_per_variant_and_hour(
    tmp_path: Path,
) -> None:
    route = CaptureRoute(str(tmp_path / "capture" / "m"), "m")
    writer = CaptureWriter()
    at = 1_796_180_645.0  # 2026-12-02T03:04:05Z
    for variant, arm in (("champ", "champion"), ("chall", "challenger"), ("champ", "champion")):
        writer.record(
            Captured(
                route, variant, "v1", arm, "exp-1", f"id-{variant}", "application/json",
                b'{"instances": [{"x": 1}]}', b'{"predictions": [2.0]}', "application/json", at,
            )
        )  # fmt: skip
    assert asyncio.run(writer.flush()) == 3
    files = sorted(p.relative_to(route.uri).as_posix() for p in Path(route.uri).rglob("*.jsonl"))
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "m/chall/2026/12/02/03",
        "m/champ/2026/12/02/03",
    ]
    lines = [json.loads(x) for x in (Path(route.uri) / files[1]).read_text().splitlines()]
    assert len(lines) == 2
    record = lines[0]
    assert record["captureData"]["endpointInput"] == {
        "observedContentType": "application/json",
        "mode": "INPUT",
        "data": '{"instances": [{"x": 1}]}',
        "encoding": "JSON",
    }
    assert record["captureData"]["endpointOutput"]["data"] == '{"predictions": [2.0]}'
    assert record["captureData"]["endpointOutput"]["mode"] == "OUTPUT"
    meta = record["eventMetadata"]
    assert meta["inferenceId"] == "id-champ" and meta["inferenceTime"] == "2026-12-02T03:04:05Z"
    assert meta["customAttributes"] == (
        "experiment_id=exp-1;variant=champ;version=v1;arm=champion;status=200"
    )
    assert record["eventVersion"] == "0" and meta["eventId"] != lines[1]["eventMetadata"]["eventId"]


def test_a_capture_write_that_fails_is_counted_and_never_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    writer = CaptureWriter()
    writer.record(
        Captured(
            CaptureRoute(str(blocker / "capture"), "m"), "champ", "v1", "champion", "e", "i",
            "application/json", b"{}", b"{}", "application/json", 0.0,
        )
    )  # fmt: skip
    assert asyncio.run(writer.flush()) == 0
    assert writer.stats["failed_writes"] == 1


def test_a_full_capture_buffer_drops_new_records_and_counts_them() -> None:
    writer = CaptureWriter(max_buffered=2)
    item = Captured(
        CaptureRoute("/nowhere", "m"), "c", "v1", "champion", "e", "i", "application/json",
        b"{}", b"{}", "application/json", 0.0,
    )  # fmt: skip
    for _ in range(5):
        writer.record(item)
    assert writer.stats == {"captured": 2, "written": 0, "dropped": 3, "failed_writes": 0}


def test_the_router_names_the_variants_for_an_unknown_target_variant(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from serving.router import create_router
    from serving.routes import write_state

    state = tmp_path / "routes.json"
    variants = [
        {"name": "champ", "version": "v1", "port": 1, "weight": 0},
        {"name": "chall", "version": "v2", "port": 2, "weight": 0},
    ]
    write_state(state, {"generation": 1, "models": {"m": {"variants": variants}}})
    with TestClient(create_router(state)) as client:
        unknown = client.post(
            "/endpoints/m/invocations",
            json={"instances": []},
            headers={"X-Amzn-SageMaker-Target-Variant": "nope"},
        )
        nothing = client.post("/endpoints/m/invocations", json={"instances": []})
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "endpoint m has no variant 'nope'; its variants: champ, chall"
    assert nothing.status_code == 503 and "no variant with a weight above 0" in nothing.text


def test_a_captured_latency_and_server_error_reach_the_experiments_reader(tmp_path: Path) -> None:
    """The guardrails read latency and errors from the capture: the router must write both."""
    from adapters.capture import parse_line
    from serving.capture import capture_line

    route = CaptureRoute(str(tmp_path), "m")

    def line(status: int, response: bytes, latency_ms: float) -> str:
        item = Captured(
            route, "chall", "v2", "challenger", "exp-1", "id-1", "application/json",
            b'{"instances": [{"x": 1}]}', response, "application/json", 0.0,
            latency_ms=latency_ms, status=status,
        )  # fmt: skip
        return json.dumps(capture_line(item))

    (ok,) = parse_line(line(200, b'{"predictions": [2.0]}', 12.5), "exp-1") or []
    (failed,) = parse_line(line(503, b'{"error": "down"}', 3.0), "exp-1") or []
    assert (ok["latency_ms"], ok["error"]) == (12.5, 0)
    assert (failed["latency_ms"], failed["error"]) == (3.0, 1)


def test_both_arms_capture_the_models_own_latency_not_the_routers_wait(tmp_path: Path) -> None:
    """A shadow copy waits in the mirror's queue and the caller's answer does not: timed by the
    router, the latency guardrail would compare the two paths, not the two models. Each arm's
    capture records the time the serving app reports for itself (``X-Model-Latency-Ms``)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from fastapi.testclient import TestClient

    from adapters.capture import parse_line
    from serving.router import create_router
    from serving.routes import write_state

    class Variant(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            time.sleep(0.05)  # the trip around the model: 50 ms the model did not spend
            body = b'{"predictions": [{"y": 1.0}]}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("x-model-latency-ms", "7.500")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Variant)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.server_address[1]
    state, capture = tmp_path / "routes.json", tmp_path / "capture"
    route = {
        "variants": [{"name": "champ", "version": "v1", "port": port, "weight": 1}],
        "experiment": {"id": "exp-1", "arms": {"champ": "champion"}},
        "shadow": {"name": "shade", "version": "v2", "port": port, "percent": 100},
        "capture": {"uri": str(capture), "endpoint": "m"},
    }
    write_state(state, {"generation": 1, "models": {"m": route}})
    try:
        with TestClient(create_router(state)) as client:
            answer = client.post("/endpoints/m/invocations", json={"instances": [{"x": 1}]})
            deadline = time.monotonic() + 5
            while client.get("/endpoints/m").json()["mirror_stats"]["answered"] < 1:
                assert time.monotonic() < deadline, "the shadow copy was never answered"
                time.sleep(0.05)
    finally:  # leaving the client flushed the capture
        upstream.shutdown()
    assert answer.status_code == 200
    rows = [
        row
        for path in capture.rglob("*.jsonl")
        for line in path.read_text().splitlines()
        for row in parse_line(line, "exp-1") or []
    ]
    assert sorted((r["arm"], r["latency_ms"]) for r in rows) == [
        ("champion", 7.5),
        ("shadow", 7.5),
    ]

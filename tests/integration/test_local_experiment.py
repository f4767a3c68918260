"""Experiments on the local endpoint with real processes: the router, champion and challenger.

One endpoint is shared by the tests of this module, which run in file order: v1 serves; an A/B
test of v2 at 10 % (split, stickiness, a named variant drawn, capture of both arms); stop; a start
that fails halfway; a shadow test of v2 whose shadow then fails and then sleeps 5 s. Each test
says what state it leaves; every process started here is stopped at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from scipy.stats import binom

from adapters.endpoints.local import LocalTarget
from adapters.endpoints.local.processes import free_port, is_alive
from adapters.endpoints.local.router_control import extras
from adapters.store import LocalStore
from core.endpoint import RolloutFailed, TrafficPlan, VersionToServe
from tests.fixtures.serving import build_model_dir, kill_leftovers, our_processes, publish_tiny

pytestmark = pytest.mark.integration

MODEL = "limit_optimiser"
VARIANT = "X-Amzn-Invoked-Production-Variant"


@dataclass
class Endpoint:
    """The shared endpoint and the versions published for it."""

    target: LocalTarget
    home: Path
    v1: VersionToServe
    v2: VersionToServe
    records: list[dict[str, Any]]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    base = tmp_path_factory.mktemp("local-experiment")
    home = base / "home"
    store = LocalStore(base / "store")
    v1 = publish_tiny(store, build_model_dir(MODEL, base / "m1", seed=1), base / "s1")
    tiny2 = build_model_dir(MODEL, base / "m2", seed=2)
    v2 = publish_tiny(store, tiny2, base / "s2")
    target = LocalTarget(home=home, store_uri=str(store.root), port=free_port(), stop_seconds=5)
    try:
        target.deploy(v1, lambda _m: None)
        yield Endpoint(target, home, v1, v2, tiny2.example_request[:2])
    finally:
        target.stop()
        kill_leftovers(home)


def plan(
    endpoint: Endpoint, mode: str, share: float, experiment_id: str, **change: Any
) -> TrafficPlan:
    challenger = dataclasses.replace(endpoint.v2, **change)
    return TrafficPlan(MODEL, mode, endpoint.v1, challenger, share, experiment_id)


def send(client: httpx.Client, endpoint: Endpoint, n: int, **headers: str) -> list[httpx.Response]:
    url = endpoint.target.address(MODEL)
    return [
        client.post(url, json={"instances": endpoint.records}, headers=headers) for _ in range(n)
    ]


def captured(prefix: str, expected: int) -> list[dict[str, Any]]:
    """Every capture record under ``prefix`` once ``expected`` are there (the flush is 1 s)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [
            json.loads(line)
            for path in sorted(Path(prefix).rglob("*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        if len(lines) >= expected or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def plausible(n: int, share: float) -> tuple[float, float]:
    """The counts ``n`` random draws at ``share`` land in, but once in a million runs.

    The router draws unseeded, as in production, so a 99 % interval here would fail one CI run
    in a hundred; this one still fails on any wrong weight (50/50 gives 150 of 300, 0/100
    none). The seeded 20,000-draw test of the 99 % interval is in
    ``tests/unit/test_experiment_routing.py``.
    """
    low, high = binom.interval(1 - 1e-6, n, share)
    return float(low), float(high)


def attributes(record: dict[str, Any]) -> dict[str, str]:
    raw = record["eventMetadata"]["customAttributes"]
    return dict(pair.split("=", 1) for pair in raw.split(";"))


def test_ab_splits_sticks_targets_and_captures_both_arms(endpoint: Endpoint) -> None:
    target = endpoint.target
    target.start_experiment(plan(endpoint, "ab", 10, "exp-ab"), lambda _m: None)
    traffic = target.traffic(MODEL)
    assert traffic is not None and traffic["mode"] == "ab"
    assert traffic["experiment_id"] == "exp-ab" and traffic["shadow"] is None
    weights = {v["arm"]: (v["version"], v["weight"]) for v in traffic["variants"]}
    assert weights == {"champion": ("v1", 90.0), "challenger": ("v2", 10.0)}
    names = {v["arm"]: v["name"] for v in traffic["variants"]}

    with httpx.Client(trust_env=False, timeout=30) as client:
        answers = send(client, endpoint, 300)
        sticky = {
            k: {r.headers[VARIANT] for r in send(client, endpoint, 3, **{"X-Caller-Key": k})}
            for k in map(str, range(20))
        }
        named = send(
            client, endpoint, 10, **{"X-Amzn-SageMaker-Target-Variant": names["challenger"]}
        )
        unknown = send(client, endpoint, 1, **{"X-Amzn-SageMaker-Target-Variant": "nope"})[0]

    assert {r.status_code for r in answers} == {200}
    # The split: 300 requests at 90/10 land where a 10 % share can put them.
    counts = Counter(r.headers[VARIANT] for r in answers)
    low, high = plausible(300, 0.10)
    assert low <= counts[names["challenger"]] <= high, counts
    # Each answer comes from the variant the header names.
    version_of = {names["champion"]: "v1", names["challenger"]: "v2"}
    assert all(r.json()["version"] == version_of[r.headers[VARIANT]] for r in answers)
    # Sticky: every caller key saw one variant in its three requests.
    assert all(len(seen) == 1 for seen in sticky.values())
    # A named variant is drawn like any request during an experiment (the model's
    # experiment.allow_target_variant is off): an unknown name too.
    low, high = plausible(len(named), 0.10)
    assert low <= sum(r.headers[VARIANT] == names["challenger"] for r in named) <= high
    assert unknown.status_code == 200

    # Capture: one record per answer (sticky and named ones too), in SageMaker's layout.
    ok = [*answers, *named]
    total = len(answers) + 20 * 3 + len(named) + 1  # the unknown name was drawn and answered
    prefix = target.capture_prefix(MODEL)
    assert prefix == str(Path(target.store_uri) / "capture" / MODEL)
    records = captured(prefix, total)
    assert len(records) == total
    by_id = {r["eventMetadata"]["inferenceId"]: r for r in records}
    for response in ok:
        record = by_id[response.headers["X-Inference-Id"]]
        attrs = attributes(record)
        variant = response.headers[VARIANT]
        assert attrs["experiment_id"] == "exp-ab" and attrs["variant"] == variant
        assert attrs["version"] == version_of[variant]
        assert attrs["arm"] == ("champion" if variant == names["champion"] else "challenger")
        assert json.loads(record["captureData"]["endpointOutput"]["data"]) == response.json()
    folders = {p.parent.relative_to(prefix).parts[:2] for p in Path(prefix).rglob("*.jsonl")}
    assert folders == {(MODEL, names["champion"]), (MODEL, names["challenger"])}


def test_stop_returns_the_champion_to_100_percent_and_is_idempotent(endpoint: Endpoint) -> None:
    target = endpoint.target
    traffic = target.traffic(MODEL)
    assert traffic is not None
    challenger = next(v for v in traffic["variants"] if v["arm"] == "challenger")
    record = next(v for v in target.router.variants(MODEL) if v["name"] == challenger["name"])

    target.stop_experiment(MODEL, lambda _m: None)
    target.stop_experiment(MODEL, lambda _m: None)  # a no-op the second time

    after = target.traffic(MODEL)
    assert after is not None and after["mode"] is None and after["experiment_id"] is None
    assert [(v["version"], v["weight"]) for v in after["variants"]] == [("v1", 1.0)]
    assert after["capture_prefix"] == target.capture_prefix(MODEL)  # capture stays on
    assert not is_alive(record["pid"], record["token"])
    assert not Path(record["dir"]).exists()
    assert target.invoke(MODEL, endpoint.records)["version"] == "v1"


def test_a_start_that_fails_halfway_leaves_the_champion_at_100_percent(
    endpoint: Endpoint,
) -> None:
    target = endpoint.target
    before = target.router.route(MODEL)
    dirs = {p.name for p in target.variants_dir.iterdir()}
    processes = set(our_processes(endpoint.home))
    # The challenger is downloaded and started, then fails its smoke test.
    bad = plan(endpoint, "ab", 50, "exp-bad", example_request=[{"no_such_column": 1}])
    with pytest.raises(RolloutFailed) as failed:
        target.start_experiment(bad, lambda _m: None)
    assert failed.value.step == "smoke-test"
    assert "serves v1 at 100 %" in str(failed.value)
    after = target.router.route(MODEL)
    assert after is not None and before is not None
    assert after["variants"] == before["variants"] and "experiment" not in after
    assert {p.name for p in target.variants_dir.iterdir()} == dirs
    assert set(our_processes(endpoint.home)) == processes
    # A bad plan is refused before anything starts.
    with pytest.raises(RolloutFailed, match="share must be in"):
        target.start_experiment(plan(endpoint, "ab", 100, "exp-x"), lambda _m: None)


class _Slow(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        time.sleep(5)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _Answer(BaseHTTPRequestHandler):
    """A variant that answers one prediction per request."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"predictions": [{"recommended_limit": 1.0}]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_the_router_captures_to_an_s3_store_with_the_deployers_aws_settings(
    s3_store_uri: str, tmp_path: Path
) -> None:
    # The store on S3 (moto server over HTTP): the router process writes the capture there
    # itself, so it needs the AWS credentials, endpoint and region the deploying command has.
    # The serving processes still get none (tests/unit/test_local_processes.py).
    from adapters.store import store_from_uri

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    target = LocalTarget(
        home=tmp_path / "home", store_uri=s3_store_uri, port=free_port(), stop_seconds=5,
        aws_endpoint_url=os.environ["AWS_ENDPOINT_URL"],
    )  # fmt: skip
    variant = {"name": "champ", "version": "v1", "port": upstream.server_address[1], "weight": 1}
    route = {
        "experiment": {"id": "exp-s3", "arms": {"champ": "champion"}},
        "capture": {"uri": target.capture_prefix("m"), "endpoint": "m"},
    }
    store = store_from_uri(s3_store_uri)
    try:
        target.router.ensure(lambda _m: None)
        target.router.write("m", [variant], route)
        with httpx.Client(trust_env=False, timeout=10) as client:
            answer = client.post(f"{target.url}/endpoints/m/invocations", json={"instances": [{}]})
        assert answer.status_code == 200
        deadline = time.monotonic() + 10  # the capture flushes every second
        while not (keys := store.list("capture/m/")) and time.monotonic() < deadline:
            time.sleep(0.2)
        stats = httpx.get(f"{target.url}/endpoints/m", trust_env=False).json()["capture_stats"]
    finally:
        target.router.stop()
        upstream.shutdown()
    assert stats["failed_writes"] == 0 and len(keys) == 1, (stats, keys)
    (line,) = store.get_bytes(keys[0]).decode().splitlines()
    record = json.loads(line)
    assert record["eventMetadata"]["inferenceId"] == answer.headers["X-Inference-Id"]
    assert attributes(record)["experiment_id"] == "exp-s3"


def test_a_failing_or_slow_shadow_costs_the_caller_nothing(endpoint: Endpoint) -> None:
    target = endpoint.target
    target.start_experiment(plan(endpoint, "shadow", 50, "exp-shadow"), lambda _m: None)
    route = target.router.route(MODEL)
    assert route is not None
    real = route["shadow"]
    stats_url = f"{target.url}/endpoints/{MODEL}"
    slow = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    closed = free_port()
    phases: dict[str, list[httpx.Response]] = {}
    try:
        # A 1 s client timeout: a caller that waited for the 5 s shadow would fail here.
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            phases["real"] = send(client, endpoint, 40)
            for name, port in (("failing", closed), ("slow", slow.server_address[1])):
                broken = {**extras(route), "shadow": {**real, "port": port}}
                target.router.write(MODEL, route["variants"], broken)
                time.sleep(0.1)  # the router reloads routes on its next request
                phases[name] = send(client, endpoint, 40)
            stats = client.get(stats_url).json()["mirror_stats"]
    finally:
        target.router.write(MODEL, route["variants"], extras(route))
        slow.shutdown()

    expected = phases["real"][0].json()
    for name, answers in phases.items():
        assert [r.status_code for r in answers] == [200] * 40, name
        assert all(r.json() == expected for r in answers), name
        assert {r.headers[VARIANT] for r in answers} == {route["variants"][0]["name"]}
    # The shadow was really tried: refused copies failed, slow ones are still out or dropped.
    floor = plausible(40, 0.5)[0]
    assert stats["failed"] >= floor, stats
    assert stats["sent"] - stats["answered"] - stats["failed"] >= floor, stats

    # The real shadow's answers were captured beside the champion's, joined by inference id.
    time.sleep(1.5)  # the capture flushes every second
    records = [
        r
        for r in captured(target.capture_prefix(MODEL), 0)
        if attributes(r)["experiment_id"] == "exp-shadow"
    ]
    arms = Counter(attributes(r)["arm"] for r in records)
    # Every caller's answer; the real shadow's share of the first 40 (50 %).
    low, high = plausible(40, 0.5)
    assert arms["champion"] == 120 and low <= arms["shadow"] <= high, arms
    champion_ids = {
        r["eventMetadata"]["inferenceId"] for r in records if attributes(r)["arm"] == "champion"
    }
    shadow = [r for r in records if attributes(r)["arm"] == "shadow"]
    assert all(r["eventMetadata"]["inferenceId"] in champion_ids for r in shadow)
    assert {attributes(r)["version"] for r in shadow} == {"v2"}

    target.stop_experiment(MODEL, lambda _m: None)
    assert not is_alive(real["pid"], real["token"])
    after = target.traffic(MODEL)
    assert after is not None and after["shadow"] is None


def test_csv_requests_reach_the_analysis_and_shadow_pairs_join_on_the_inference_id(
    endpoint: Endpoint,
) -> None:
    """Through the real router: CSV requests (CSV answers too) are read like JSON ones, and
    every shadow answer pairs with the champion's answer to the same request."""
    import pandas as pd

    from adapters.capture import read_captures
    from core.observations import observe
    from tests.fixtures.experiments import FAMILY, record

    target = endpoint.target
    target.start_experiment(plan(endpoint, "shadow", 99, "exp-csv"), lambda _m: None)
    columns = list(endpoint.records[0])
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in endpoint.records]
    body = ("\n".join(lines) + "\n").encode()
    csv_headers = {"Content-Type": "text/csv", "Accept": "text/csv"}
    with httpx.Client(trust_env=False, timeout=30) as client:
        answers = send(client, endpoint, 10) + [
            client.post(target.address(MODEL), content=body, headers=csv_headers) for _ in range(10)
        ]
    assert [r.status_code for r in answers] == [200] * 20
    assert answers[-1].headers["content-type"].startswith("text/csv")
    store = LocalStore(Path(target.store_uri))
    per_request = len(endpoint.records)
    deadline = time.monotonic() + 15
    while True:  # the champion's answers, then the shadow's (answered from a queue)
        read = read_captures(store, target.capture_prefix(MODEL), "exp-csv")
        arms = Counter(read.frame["arm"]) if len(read.frame) else Counter()
        if arms["champion"] == 20 * per_request and arms["shadow"] >= 10 * per_request:
            break
        assert time.monotonic() < deadline, arms
        time.sleep(0.3)
    target.stop_experiment(MODEL, lambda _m: None)
    assert read.skipped == 0, read.reasons
    assert (read.frame["error"] == 0).all()
    kinds = {
        r["captureData"]["endpointInput"]["observedContentType"]
        for r in captured(target.capture_prefix(MODEL), 0)
        if attributes(r)["experiment_id"] == "exp-csv"
    }
    assert kinds == {"application/json", "text/csv"}
    no_labels = pd.DataFrame({"client_id": [], "best_limit": []})
    obs = observe(record(mode="shadow"), read.frame, no_labels, FAMILY, {"client_id": "string"})
    champion, shadow = obs.values["latency_ms"]
    assert len(champion) == len(shadow) == arms["shadow"], arms

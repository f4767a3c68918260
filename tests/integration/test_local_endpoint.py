"""The local endpoint with real processes: router, serving app variants, swaps under load.

One endpoint (a router on a free port, ``MLOPS_HOME`` in a temporary directory) is shared by
the tests of this module, which run in file order like a day of operations: deploy v1, swap to
v2 while requests flow, fail two deploys, then stop. Each test says what state it leaves. Every
process started here is stopped at the end, even when a test fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from adapters.endpoints.local import LocalTarget
from adapters.endpoints.local.processes import free_port, is_alive
from adapters.store import LocalStore
from core.endpoint import RolloutFailed, VersionToServe
from tests.fixtures.serving import (
    TinyModel,
    build_model_dir,
    kill_leftovers,
    our_processes,
    post_until,
    publish_tiny,
)

pytestmark = pytest.mark.integration

MODEL = "limit_optimiser"


@dataclass
class Endpoint:
    """The shared endpoint and the versions published for it."""

    target: LocalTarget
    home: Path
    store: LocalStore
    tiny: TinyModel
    v1: VersionToServe
    v2: VersionToServe
    v3: VersionToServe
    port: int


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    base = tmp_path_factory.mktemp("local-endpoint")
    home = base / "home"
    store = LocalStore(base / "store")
    tiny = build_model_dir(MODEL, base / "m1", seed=1)
    other = build_model_dir(MODEL, base / "m2", seed=2)
    v1 = publish_tiny(store, tiny, base / "s1")
    v2 = publish_tiny(store, other, base / "s2")
    # v3 is published fine, but the deploy carries a contents hash that is not the manifest's.
    v3 = dataclasses.replace(publish_tiny(store, tiny, base / "s3"), contents_sha256="0" * 64)
    port = free_port()
    target = LocalTarget(home=home, store_uri=str(store.root), port=port, stop_seconds=5)
    try:
        yield Endpoint(target, home, store, tiny, v1, v2, v3, port)
    finally:
        target.stop()
        kill_leftovers(home)


def post(url: str, records: list[dict[str, Any]]) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30) as client:
        return client.post(url, json={"instances": records})


def test_first_deploy_starts_the_router_and_serves_v1(endpoint: Endpoint) -> None:
    target = endpoint.target
    messages: list[str] = []
    assert target.describe(MODEL) is None

    serving = target.deploy(endpoint.v1, messages.append)

    assert (serving.status, serving.version) == ("running", "v1")
    assert serving.address == f"http://127.0.0.1:{endpoint.port}/endpoints/{MODEL}/invocations"
    assert any("router started" in m for m in messages)
    answer = target.invoke(MODEL, endpoint.tiny.example_request)
    assert answer["version"] == "v1"
    assert len(answer["predictions"]) == len(endpoint.tiny.example_request)
    # Detached: each process leads its own session, so it outlives the deploying command.
    for pid in our_processes(endpoint.home):
        assert os.getsid(pid) == pid
    # The SageMaker runtime's view of the endpoint.
    with httpx.Client(trust_env=False) as client:
        described = client.get(f"http://127.0.0.1:{endpoint.port}/endpoints/{MODEL}").json()
    assert [v["version"] for v in described["variants"]] == ["v1"]


def test_a_retried_deploy_of_the_serving_version_is_a_no_op(endpoint: Endpoint) -> None:
    before = endpoint.target.describe(MODEL)
    messages: list[str] = []
    start = time.monotonic()
    after = endpoint.target.deploy(endpoint.v1, messages.append)
    assert time.monotonic() - start < 5
    assert after == before
    assert messages == [f"{MODEL} already serves v1 on {endpoint.target.url}"]


def test_swap_to_v2_under_load_fails_no_request(endpoint: Endpoint) -> None:
    target = endpoint.target
    old = target.describe(MODEL)
    assert old is not None
    url = target.address(MODEL)
    records = endpoint.tiny.example_request
    stop = threading.Event()
    # Eight clients, each sending its next request as soon as the last is answered: the
    # router and the variants run at several hundred requests/s through the switch.
    seen: list[list[tuple[str | None, float]]] = [[] for _ in range(8)]
    failures: list[str] = []

    threads = [
        threading.Thread(target=post_until, args=(url, records, stop, log, failures))
        for log in seen
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        serving = target.deploy(endpoint.v2, lambda _m: None)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    assert failures == []
    assert serving.version == "v2"
    for log in seen:
        versions = [v for v, _ in log]
        assert versions[0] == "v1" and versions[-1] == "v2"
        # Once a client got v2 it never gets v1 again: the switch is one atomic step.
        first_v2 = versions.index("v2")
        assert set(versions[first_v2:]) == {"v2"}
    # The old variant was drained, stopped and deleted.
    (old_name,) = old.variants
    assert not is_alive(old.variants[old_name]["pid"], None)
    assert not Path(old.variants[old_name]["dir"]).exists()
    timings = target.last_timings
    latency = max(seconds for log in seen for _, seconds in log)
    print(
        f"\nswap v1 -> v2: {sum(len(s) for s in seen)} requests from {len(seen)} clients, 0 "
        f"failed, slowest "
        f"{latency * 1000:.0f} ms; deploy {timings['total']:.1f}s = fetch {timings['fetch']:.2f}s"
        f" + start {timings['start']:.1f}s + switch {timings['switch'] * 1000:.0f} ms + drain "
        f"{timings['drain'] * 1000:.0f} ms"
    )


def test_a_deploy_the_app_refuses_leaves_v2_serving_and_no_orphan(endpoint: Endpoint) -> None:
    target = endpoint.target
    before = target.describe(MODEL)
    processes = our_processes(endpoint.home)

    with pytest.raises(RolloutFailed) as failed:
        target.deploy(endpoint.v3, lambda _m: None)

    assert failed.value.step == "start"
    assert "contents.json" in failed.value.reason and "still serves v2" in failed.value.reason
    assert target.describe(MODEL) == before
    assert our_processes(endpoint.home) == processes
    assert [r.name for r in target.resources() if r.kind == "model"] == list(before.variants)
    response = post(target.address(MODEL), endpoint.tiny.example_request)
    assert response.status_code == 200 and response.json()["version"] == "v2"


def test_a_corrupted_store_file_fails_at_download(endpoint: Endpoint, tmp_path: Path) -> None:
    target = endpoint.target
    before = target.describe(MODEL)
    v4 = publish_tiny(endpoint.store, endpoint.tiny, tmp_path / "s4")
    tarball = Path(endpoint.store.url(f"models/{MODEL}/{v4.version}/model.tar.gz"))
    tarball.write_bytes(tarball.read_bytes() + b"\0")

    with pytest.raises(RolloutFailed) as failed:
        target.deploy(v4, lambda _m: None)

    assert failed.value.step == "download"
    assert "model.tar.gz does not match the manifest" in failed.value.reason
    assert target.describe(MODEL) == before
    assert [r.name for r in target.resources() if r.kind == "model"] == list(before.variants)


def test_resources_list_the_route_and_refuse_deleting_what_serves(endpoint: Endpoint) -> None:
    target = endpoint.target
    stray = target.variants_dir / f"{MODEL}-v0-00000000-abcdef"
    stray.mkdir()
    (stray / "variant.json").write_text(json.dumps({"model": MODEL, "version": "v0"}))
    found = {(r.kind, r.name): r for r in target.resources()}
    (route,) = [r for r in found.values() if r.kind == "endpoint"]
    assert (route.name, route.version, route.in_use) == (MODEL, "v2", True)
    assert route.details["monthly_cost_usd"] == 0.0
    in_use = [r for r in found.values() if r.kind == "model" and r.in_use]
    assert [r.version for r in in_use] == ["v2"]
    with pytest.raises(ValueError, match="in use"):
        target.delete(in_use[0])
    target.delete(found[("model", stray.name)])
    assert not stray.exists()


PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deployments" / "prometheus"


@contextmanager
def prometheus_server(router_port: int, base: Path) -> Iterator[str]:
    """A real Prometheus on loopback with the shipped scrape config, aimed at ``router_port``.

    Scrapes and service discovery every second instead of 15 s; everything else is
    ``deployments/prometheus/prometheus.yml`` as committed, rules included.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus; .ci/run installs it)")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules.yml")]
    text = yaml.safe_dump(config).replace("15s", "1s")
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{router_port}")
    (base / "prometheus.yml").write_text(text)
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(base / "prometheus.log").open("wb"),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 30, f"prometheus did not start: {base / 'prometheus.log'}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", trust_env=False, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Any, seconds: float, message: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """``/api/v1/query``'s result vector; a query Prometheus refuses fails the test."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, trust_env=False).json()
    assert answer["status"] == "success", (promql, answer)
    return list(answer["data"]["result"])


def scalar(url: str, promql: str) -> float | None:
    result = query(url, promql)
    return float(result[0]["value"][1]) if result else None


def test_a_real_prometheus_scrapes_the_endpoint_and_counts_every_request(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    # The tests above leave v2 serving; run alone, this test starts the router and v2 itself.
    serving = endpoint.target.describe(MODEL)
    if serving is None or serving.version != "v2":
        endpoint.target.deploy(endpoint.v2, lambda _m: None)
    with prometheus_server(endpoint.port, tmp_path) as prom:
        # The router's static target and the serving variant found through the router's
        # service discovery are both up.
        jobs = {"mlops-router", "mlops-serving"}
        wait_for(
            lambda: {r["metric"]["job"] for r in query(prom, "up == 1")} >= jobs,
            30,
            "targets never came up",
        )
        served = f'model="{MODEL}"'
        totals = (
            f"sum(mlops_router_requests_total{{{served}}})",
            f"sum(mlops_requests_total{{{served}}})",
            # Every answered request is one latency observation too.
            f"sum(mlops_request_duration_seconds_count{{{served}}})",
        )

        def settled() -> tuple[float, ...] | None:
            # Earlier tests sent requests too: read the totals twice, a scrape apart, equal.
            first = tuple(scalar(prom, q) or 0.0 for q in totals)
            time.sleep(2.5)
            again = tuple(scalar(prom, q) or 0.0 for q in totals)
            return first if first == again else None

        before = wait_for(settled, 30, "totals never settled")
        n = 40
        with httpx.Client(trust_env=False, timeout=30) as client:
            for _ in range(n):
                answer = client.post(
                    endpoint.target.address(MODEL),
                    json={"instances": endpoint.tiny.example_request},
                )
                assert answer.status_code == 200, answer.text
        expected = tuple(total + n for total in before)
        wait_for(lambda: settled() == expected, 30, f"Prometheus never counted {n} more")
        # Latency as Prometheus computes it from the histogram buckets.
        p99 = scalar(
            prom,
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(mlops_request_duration_seconds_bucket{{{served}}}[1m])))",
        )
        assert p99 is not None and 0 < p99 < 5
        # The variant's own labels survive the scrape (honor_labels), and what it answered.
        (info,) = query(prom, f"mlops_model_info{{{served}}}")
        assert info["metric"]["version"] == "v2" and info["metric"]["family"] == MODEL
        assert scalar(prom, f'sum(mlops_output_value_count{{{served},column="recommended_limit"}})')
        # The shipped rules load and evaluate; every dashboard query is valid PromQL.
        groups = httpx.get(f"{prom}/api/v1/rules", trust_env=False).json()["data"]["groups"]
        shipped = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"][0]
        assert len(groups[0]["rules"]) == len(shipped["rules"])
        dashboard = json.loads((PROMETHEUS_DIR / "grafana-dashboard.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
                query(prom, expr)
    # The same minute as mlops status shows it, from the router's own window.
    health = endpoint.target.health(MODEL)
    assert health is not None and health.source == "local /metrics"
    assert health.requests_per_second > 0 and health.error_rate == 0.0
    assert health.p99_ms is not None and health.p99_ms > 0
    assert endpoint.target.health("no_such_model") is None


def cli_environment(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the CLI at the shared endpoint; set what it would fill in, so nothing leaks."""
    monkeypatch.setenv("MLOPS_HOME", str(endpoint.home))
    monkeypatch.setenv("MLOPS_ENDPOINT_PORT", str(endpoint.port))
    # prepare_environment() fills these when unset, for the rest of the process: set them here
    # so that monkeypatch takes them away again after the test.
    monkeypatch.setenv("PREFECT_HOME", str(endpoint.home / "prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{endpoint.home / 'mlflow.db'}")
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def test_cli_status_shows_what_serves(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch, mlops_home: Path
) -> None:
    from cli.endpoint import app

    cli_environment(endpoint, monkeypatch)
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["router"]["running"]
    assert report["models"][MODEL]["version"] == "v2"
    assert report["stray_variants"] == []
    table = CliRunner().invoke(app, ["status"])
    assert table.exit_code == 0, table.output
    assert "running" in table.output and "v2" in table.output


def test_stop_ends_every_process(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch, mlops_home: Path
) -> None:
    from cli.endpoint import app

    assert our_processes(endpoint.home)
    cli_environment(endpoint, monkeypatch)
    result = CliRunner().invoke(app, ["stop"])
    assert result.exit_code == 0, result.output
    assert "router" in result.output
    assert our_processes(endpoint.home) == {}
    assert endpoint.target.describe(MODEL) is None
    with pytest.raises(httpx.ConnectError):
        post(endpoint.target.address(MODEL), endpoint.tiny.example_request)


def _image_copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """The project files a Dockerfile copies: ``COPY src... dest`` lines without ``--from``."""
    lines = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or any(w.startswith("--") for w in words):
            continue
        *sources, dest = words[1:]
        if any(s.endswith((".toml", ".lock", ".md")) for s in sources):
            continue  # the lock and metadata of the dependency layer, not code
        lines.append((sources, dest.removeprefix("./")))
    return lines


def test_the_image_entry_point_serves_with_only_the_files_the_image_holds(
    tmp_path: Path,
) -> None:
    # docker/serving.Dockerfile copies a subset of the project and runs `python -m serving serve`
    # with the model in MLOPS_MODEL_DIR. Same here, as a plain process, from exactly the files
    # the Dockerfile's project COPY lines name.
    root = Path(__file__).resolve().parents[2]
    app = tmp_path / "app"
    copied = _image_copies(root / "docker" / "serving.Dockerfile")
    assert copied, "no project COPY lines found in docker/serving.Dockerfile"
    for sources, dest in copied:  # Docker's semantics: a directory's contents go into dest
        for source in sources:
            if (root / source).is_dir():
                shutil.copytree(root / source, app / dest)
                continue
            target = app / dest / Path(source).name if dest.endswith("/") else app / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / source, target)
    tiny = build_model_dir("traffic_forecaster", tmp_path / "opt-ml-model")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "SAGEMAKER_"))},
        "PYTHONPATH": str(app),
        "MPLBACKEND": "Agg",
        "MLOPS_MODEL_DIR": str(tiny.model_dir),
        "MLOPS_MODEL_VERSION": "v9",
        "MLOPS_MODEL_CONTENTS_SHA256": tiny.contents_sha256,
        "SAGEMAKER_BIND_TO_PORT": str(port),
    }
    check = subprocess.run(
        [sys.executable, "-m", "serving", "check"], cwd=app, env=env, capture_output=True
    )
    assert check.returncode == 0, check.stderr.decode()[-2000:]
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "serve"],
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        ping = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ping = httpx.get(f"http://127.0.0.1:{port}/ping", trust_env=False, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert ping is not None and ping.status_code == 200, proc.poll()
        assert ping.json()["version"] == "v9"
        answer = post(f"http://127.0.0.1:{port}/invocations", tiny.example_request)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3
        # SageMaker stops a container with SIGTERM: a graceful, prompt exit (uvicorn re-raises
        # the signal once shut down, so the status says "terminated by SIGTERM").
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert "Finished server process" in output
    assert "prefect" not in output.lower() and "mlflow" not in output.lower()

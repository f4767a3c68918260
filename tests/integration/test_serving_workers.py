"""The serving process with several uvicorn workers: no latency trap on keep-alive requests.

With ``--workers N`` uvicorn passes a pre-bound socket to its workers, and accepted connections
lost ``TCP_NODELAY`` (uvicorn#3149): every keep-alive request after the first then waited about
40 ms on the client's delayed ACK. ``python -m serving serve`` must answer sequential keep-alive
requests in a few milliseconds with two workers, as it does with one.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from adapters.endpoints.local.processes import free_port
from tests.fixtures.serving import build_model_dir

pytestmark = pytest.mark.integration


def _requests_counted(port: int) -> float:
    """``mlops_requests_total{code="200"}`` as ``/metrics`` answers on a new connection."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "mlops_requests_total" and s.labels["code"] == "200"
    )


def _metrics_count_every_worker(
    port: int, shared: Path, body: bytes, headers: dict[str, str], done: int
) -> None:
    """Totals on ``/metrics`` are the server's, whichever worker answers the scrape.

    Requests on new connections reach both workers (the kernel spreads accepted connections),
    so each worker counted only part of them; every scrape must still report all of them.
    """
    for _ in range(40):
        with httpx.Client(trust_env=False, timeout=10) as client:  # a new connection each
            assert client.post(f"http://127.0.0.1:{port}/invocations", content=body,
                               headers=headers).status_code == 200  # fmt: skip
    # Each worker flushes what it recorded every second (and the one answering, at once):
    # within a few seconds every scrape, whichever worker answers it, reports every request.
    deadline = time.monotonic() + 10
    while (scrapes := {_requests_counted(port) for _ in range(8)}) != {done + 40}:
        assert time.monotonic() < deadline, f"scrapes reported {sorted(scrapes)}, not {done + 40}"
        time.sleep(0.5)
    counted_by = {p.name.split("_")[-1] for p in shared.glob("counter_*.db")}
    assert len(counted_by) == 2, f"requests reached one worker only: {sorted(counted_by)}"
    # The rest is summed (or, for the info and load gauges, one value kept) across workers too:
    # one row per request in the output summary, the model served once, its load time.
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=5).text
    values = {
        (s.name, s.labels.get("column", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("mlops_output_value_count", "recommended_limit")] == done + 40
    assert values[("mlops_model_info", "")] == 1
    assert values[("mlops_model_load_seconds", "")] > 0


def test_two_workers_answer_sequential_keep_alive_requests_in_a_few_ms(tmp_path: Path) -> None:
    tiny = build_model_dir("limit_optimiser", tmp_path / "model")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "SAGEMAKER_"))},
        "MLOPS_MODEL_DIR": str(tiny.model_dir),
        "MLOPS_MODEL_CONTENTS_SHA256": tiny.contents_sha256,
        "MLOPS_MODEL_VERSION": "v1",
        "MLOPS_SERVING_HOST": "127.0.0.1",
        "MLOPS_SERVING_PORT": str(port),
        "MLOPS_SERVING_WORKERS": "2",
        "MLOPS_SERVING_LOG_LEVEL": "warning",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # two workers import everything: slow on a busy machine
        while True:
            try:
                if httpx.get(f"{url}/ping", trust_env=False, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        body = json.dumps({"instances": tiny.example_request[:1]}).encode()
        headers = {"Content-Type": "application/json"}
        seconds = []
        # One client, one connection, requests one after another: what a rate limiter's
        # sidecar does. The standard library's client adds least of its own time; the first
        # requests warm up the connection and the model.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for i in range(120):
                start = time.perf_counter()
                connection.request("POST", "/invocations", body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
                if i >= 20:
                    seconds.append(time.perf_counter() - start)
                assert answer.status == 200, payload
        finally:
            connection.close()
        p50 = statistics.median(seconds) * 1000
        print(f"\n2 workers, sequential keep-alive: p50 {p50:.2f} ms over {len(seconds)} requests")
        # 40 ms is the trap; a few ms leaves room for a busy shared machine.
        assert p50 < 5.0
        _metrics_count_every_worker(port, tmp_path / "metrics", body, headers, 120)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

"""The monitor's results pushed to a real Pushgateway (Debian's prometheus-pushgateway)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from adapters.endpoints.local.processes import free_port
from core.config import MonitorPolicy
from tasks.monitor import publish_monitor_metrics
from tests.unit.test_monitor_metrics import findings, samples

pytestmark = pytest.mark.integration


def test_the_push_replaces_the_monitor_group_on_a_real_pushgateway(tmp_path: Path) -> None:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.skip("no Pushgateway binary (Debian package prometheus-pushgateway; .ci/run)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "pushgateway did not start"
            time.sleep(0.1)
        policy = MonitorPolicy(pushgateway_url=url)
        assert publish_monitor_metrics.fn(findings(), policy) == [
            f"{url}/metrics/job/mlops-monitor"
        ]
        first = samples(httpx.get(f"{url}/metrics", trust_env=False).text)
        age = ("mlops_monitor_champion_age_days", frozenset({("model", "limit_optimiser")}))
        assert first[age] == 1.0
        # The next run no longer has limit_optimiser: its series leave the gateway with it.
        publish_monitor_metrics.fn(findings()[:1], policy)
        second = samples(httpx.get(f"{url}/metrics", trust_env=False).text)
        assert age not in second
        assert (
            second[("mlops_monitor_drifted_features", frozenset({("model", "abuse_detector")}))]
            == 1
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)

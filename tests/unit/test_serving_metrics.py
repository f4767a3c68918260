"""The serving metrics' own arithmetic: batched histogram observations and the minute window.

What ``/metrics`` reports for real requests is tested with the app in
``tests/unit/test_serving_app.py``; totals across workers and a real Prometheus server in
``tests/integration``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from serving.metrics import MinuteWindow, observe_many


def _buckets(registry: CollectorRegistry) -> dict[str, float]:
    return {
        s.labels.get("le", s.name): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_fills_the_same_buckets_as_observing_each_value() -> None:
    values = np.array([-3.0, 0.0, 0.5, 0.5, 1.0, 1.0001, 7.0, 1e9, np.nan, np.inf])
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    bounds = (-1.0, 0.0, 0.5, 1.0, 5.0)
    a = Histogram("h", "h", buckets=bounds, registry=one_by_one)
    b = Histogram("h", "h", buckets=bounds, registry=batched)
    for v in values[~np.isnan(values)]:
        a.observe(float(v))
    observe_many(b, values)
    # Bounds are inclusive (le), NaN is dropped, infinity lands in +Inf. (A negative bound
    # makes the library leave _sum out, so the sum is compared below with positive bounds.)
    assert _buckets(batched) == _buckets(one_by_one)
    assert _buckets(batched)["+Inf"] == 9
    finite = CollectorRegistry()
    c = Histogram("h", "h", buckets=(1.0, 5.0), registry=finite)
    observe_many(c, np.array([0.25, 0.75, 2.0]))
    assert _buckets(finite)["h_sum"] == pytest.approx(3.0)
    assert _buckets(finite)["h_count"] == 3


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_minute_window_reports_rate_errors_and_p99_of_the_last_minute_only() -> None:
    clock = _Clock()
    window = MinuteWindow(60, clock=clock)
    assert window.summary()["p99_ms"] is None and window.summary()["error_rate"] is None
    # An old burst of slow errors, then 60 s of ordinary traffic: 10/s at 2 ms, one 5xx in
    # a hundred taking 200 ms. The old burst must have left the window.
    for _ in range(500):
        window.record(5.0, error=True)
    clock.now += 61
    for second in range(60):
        for i in range(10):
            slow = (second * 10 + i) % 100 == 0
            window.record(0.2 if slow else 0.002, error=slow)
        clock.now += 1
    clock.now -= 0.5  # still inside the last second recorded
    summary = window.summary()
    assert summary["window_seconds"] == 60
    assert summary["requests_per_second"] == pytest.approx(10.0)
    assert summary["error_rate"] == pytest.approx(0.01)
    # 1 % of requests at 200 ms: the 99th percentile is at the edge between 2 ms and 200 ms;
    # bucketed to within 25 %, and nowhere near the 5 s burst that left the window.
    assert 1.6 <= summary["p99_ms"] <= 250
    slower = MinuteWindow(60, clock=clock)
    for i in range(1000):
        slower.record(0.2 if i % 50 == 0 else 0.002, error=False)
    assert 160 <= slower.summary()["p99_ms"] <= 250


def test_status_prints_rate_errors_and_p99_or_a_dash() -> None:
    from cli.status import health_line

    assert health_line(None) == "-"
    line = health_line(
        {
            "source": "local /metrics",
            "window_seconds": 60.0,
            "requests_per_second": 12.34,
            "error_rate": 0.015,
            "p99_ms": 4.26,
        }
    )
    assert line == "12.3 req/s, 5xx 1.5%, p99 4.3 ms (last 60 s, local /metrics)"
    idle = {"source": "cloudwatch", "window_seconds": 60.0, "requests_per_second": 0.0}
    assert health_line({**idle, "error_rate": None, "p99_ms": None}) == (
        "0.0 req/s, 5xx -, p99 - (last 60 s, cloudwatch)"
    )


def test_a_worker_that_died_without_shutdown_is_marked_dead_at_the_next_start(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from serving.metrics import mark_dead_workers, prepare_multiprocess_dir

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid, live_pid = int(gone.stdout), os.getpid()
    for pid in (dead_pid, live_pid):
        (tmp_path / f"gauge_livemax_{pid}.db").write_bytes(b"\0" * 8)
        (tmp_path / f"counter_{pid}.db").write_bytes(b"\0" * 8)
    assert mark_dead_workers(str(tmp_path)) == [dead_pid]
    # Its live gauges (model info, load time) leave; its counters stay in the totals.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead_pid}.db", f"counter_{live_pid}.db", f"gauge_livemax_{live_pid}.db"]
    )
    # A new serving process starts from nothing: an earlier run's totals are not carried over.
    prepare_multiprocess_dir(str(tmp_path))
    assert list(tmp_path.iterdir()) == []

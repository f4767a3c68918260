"""Prometheus metrics of the serving app and the router, with the official client library.

What a serving process records, once per request (never once per row)::

    mlops_requests_total{model,version,variant,code}            counter
    mlops_request_duration_seconds{model,version,variant}       histogram
    mlops_request_rows{model,version,variant}                   histogram (rows per request)
    mlops_model_info{model,version,variant,family}              1 while the model serves
    mlops_model_load_seconds{model,version,variant}             seconds the load took
    mlops_output_flagged_rows_total{model,version,column}       boolean output columns: rows true
    mlops_output_value{model,version,column}                    numeric output columns: histogram

The output summary comes from the answer's columns, whatever the family: a boolean column
(the abuse detector's ``is_abuse``) counts its true rows, so ``flagged / rows`` is the share
flagged; a numeric column (``anomaly_score``, ``recommended_limit``, ``forecast``) fills a
histogram whose buckets the family may name (:attr:`core.families.Family.output_buckets`).
A shift in what the model answers is visible before any label arrives.

Labels are bounded: model, version and variant name what serves, code is an HTTP status, column
is an output column. Nothing about the caller becomes a label.

Several uvicorn workers: with ``PROMETHEUS_MULTIPROC_DIR`` set (``python -m serving serve``
sets it when it runs more than one worker, see :mod:`serving.__main__`), every worker writes its
values to files there and ``/metrics``, answered by any worker, sums them with the library's
``MultiProcessCollector``: totals are the process's, not one worker's. The info and load gauges
are ``livemax``: a worker that exits is marked dead and leaves them.

The router records its own (:class:`RouterMetrics`): requests forwarded by model, variant and
status, latency as the caller sees it, upstream failures; and a one-minute window per model
(:class:`MinuteWindow`) that ``GET /endpoints/{model}/health`` answers for ``mlops status``.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The client library's variable: where worker processes write their values."""
VARIANT_ENV = "MLOPS_VARIANT_NAME"
"""The variant a serving process is (set by the local endpoint; SageMaker's is ``AllTraffic``)."""
CONTENT_TYPE = CONTENT_TYPE_LATEST
FLUSH_AT = 4096
"""Requests recorded before a flush happens inline, whatever the timer: bounded memory."""
FLUSH_SECONDS = 1.0
"""How often the app flushes on its own, so a scrape answered by another worker is current."""

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
"""Seconds: sub-millisecond answers of the fast path up to SageMaker's 60 s limit."""
ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000)
DEFAULT_OUTPUT_BUCKETS = (
    0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0,
    1000.0, 2000.0, 5000.0, 10000.0, 100000.0,
)  # fmt: skip
"""Buckets of a numeric output column whose family names none. Non-negative on purpose: the
client library leaves ``_sum`` out of a histogram with a negative bucket (OpenMetrics)."""


def multiprocess_dir() -> str | None:
    """The directory worker processes share their values in; None in single-process mode.

    The client library chose how to store values when it was first imported; the variable
    counts only if it was set then (a process that set it later, to pass it on to workers it
    starts, still counts in memory itself).
    """
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(path: str) -> None:
    """Create ``path`` and delete values left by an earlier run (stale totals otherwise).

    Called by the process that starts the workers, before any of them runs.
    """
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)


def mark_dead_workers(path: str) -> list[int]:
    """Mark the workers whose files are in ``path`` but whose process is gone; return them.

    A worker killed without running its shutdown (OOM, SIGKILL) leaves its live gauges
    behind; the library forgets them once told the pid is dead.
    """
    from prometheus_client import multiprocess

    dead = []
    for name in os.listdir(path):
        found = re.fullmatch(r"gauge_live\w+_(\d+)\.db", name)
        if found and not _alive(int(found.group(1))):
            dead.append(int(found.group(1)))
    for pid in sorted(set(dead)):
        multiprocess.mark_process_dead(pid, path)
    return sorted(set(dead))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def observe_many(child: Any, values: np.ndarray) -> None:
    """Add every finite value of ``values`` to one histogram child in a few calls.

    The library has only ``observe(one_value)``; a request of 1,000 rows would take 1,000 calls
    (and 1,000 file writes per worker in multiprocess mode). This counts the values per bucket
    with numpy and adds each bucket's count once: the same buckets and sum as observing each.
    """
    values = values[~np.isnan(values)]
    if not len(values):
        return
    if len(values) == 1:
        child.observe(float(values[0]))
        return
    bounds = np.asarray(child._upper_bounds, dtype="float64")
    # observe() puts a value in the first bucket whose bound is >= it: searchsorted's "left".
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    child._sum.inc(float(values.sum()))
    for i in np.flatnonzero(counts):
        child._buckets[i].inc(int(counts[i]))


class ServingMetrics:
    """The instruments of one serving process (see the module docstring for the names).

    Args:
        model: the served model's name.
        version: its version (``""`` when unknown).
        variant: the variant this process is (``""`` when unknown).
        registry: where the instruments register in single-process mode (default: a new one);
            ignored in multiprocess mode, where values go to files.
    """

    def __init__(
        self, model: str, version: str, variant: str, registry: CollectorRegistry | None = None
    ) -> None:
        self.multiprocess = multiprocess_dir()
        self.registry = None if self.multiprocess else (registry or CollectorRegistry())
        reg = self.registry
        self.labels = {"model": model, "version": version, "variant": variant}
        names = ("model", "version", "variant")
        self._requests = Counter(
            "mlops_requests",
            "Invocations answered, by HTTP status.",
            (*names, "code"),
            registry=reg,
        )
        self._latency = Histogram(
            "mlops_request_duration_seconds",
            "Seconds from receiving an invocation to its answer.",
            names,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ).labels(**self.labels)
        self._rows = Histogram(
            "mlops_request_rows",
            "Records per invocation.",
            names,
            buckets=ROW_BUCKETS,
            registry=reg,
        ).labels(**self.labels)
        self._info = Gauge(
            "mlops_model_info",
            "1 while the model serves; the labels say what serves.",
            (*names, "family"),
            multiprocess_mode="livemax",
            registry=reg,
        )
        self._load = Gauge(
            "mlops_model_load_seconds",
            "Seconds the model took to verify and load.",
            names,
            multiprocess_mode="livemax",
            registry=reg,
        ).labels(**self.labels)
        out = ("model", "version", "column")
        self._flagged = Counter(
            "mlops_output_flagged_rows",
            "Rows answered true in a boolean output column (abuse flagged, for example).",
            out,
            registry=reg,
        )
        self._pending: list[tuple[int, float, int]] = []
        self._pending_outputs: list[Mapping[str, Any]] = []
        self._outputs: dict[tuple[float, ...], Histogram] = {}
        if reg is not None:
            reg.register(_Merged(self._outputs))
        self._by_code: dict[int, Any] = {}
        self._by_column: dict[str, Any] = {}
        self._output_buckets: Mapping[str, tuple[float, ...]] = {}

    def loaded(self, family: str, seconds: float, output_buckets: Mapping[str, Any]) -> None:
        """Record the loaded model: the info gauge, its load time, its output buckets."""
        self._info.labels(**self.labels, family=family).set(1)
        self._load.set(seconds)
        self._output_buckets = {k: tuple(float(b) for b in v) for k, v in output_buckets.items()}

    # The hot path only appends to a list; :meth:`flush` moves what was appended into the
    # library's instruments in a few batched calls. Each instrument update costs a lock and (in
    # multiprocess mode) a file write: done per request, the seven of them took a third of a
    # one-row request's CPU (BENCHMARKS.md). Flushed at every scrape of this process, every
    # second by the app (so other workers' scrapes see it), and when the backlog grows.

    def request(self, code: int, seconds: float, rows: int = 0) -> None:
        """Record one invocation: its status, its latency and (when answered) its rows."""
        self._pending.append((code, seconds, rows))
        if len(self._pending) >= FLUSH_AT:
            self.flush()

    def outputs(self, predictions: Mapping[str, Any]) -> None:
        """Record what the model answered (its columns, kept until the next flush)."""
        self._pending_outputs.append(predictions)

    def flush(self) -> None:
        """Move the recorded requests and answers into the instruments (a few calls in all)."""
        pending, self._pending = self._pending, []
        outputs, self._pending_outputs = self._pending_outputs, []
        if pending:
            codes: dict[int, int] = {}
            for code, _seconds, _rows in pending:
                codes[code] = codes.get(code, 0) + 1
            for code, n in codes.items():
                child = self._by_code.get(code)
                if child is None:
                    child = self._requests.labels(**self.labels, code=str(code))
                    self._by_code[code] = child
                child.inc(n)
            observe_many(self._latency, np.fromiter((p[1] for p in pending), "float64"))
            rows = np.fromiter((p[2] for p in pending if p[2]), "float64")
            observe_many(self._rows, rows)
        columns: dict[str, list[Any]] = {}
        for answer in outputs:
            for column, values in answer.items():
                columns.setdefault(column, []).append(np.asarray(values))
        for column, parts in columns.items():
            array = np.concatenate(parts)
            if array.dtype == np.bool_:
                flagged = int(np.count_nonzero(array))
                child = self._column(column, bool)  # the series exists from the first answer
                if flagged:
                    child.inc(flagged)
            elif array.dtype.kind in "iuf":
                observe_many(self._column(column, float), array.astype("float64", copy=False))

    def _column(self, column: str, kind: type) -> Any:
        key = f"{kind.__name__}:{column}"
        child = self._by_column.get(key)
        if child is not None:
            return child
        labels = {"model": self.labels["model"], "version": self.labels["version"]}
        if kind is bool:
            child = self._flagged.labels(**labels, column=column)
        else:
            buckets = self._output_buckets.get(column, DEFAULT_OUTPUT_BUCKETS)
            histogram = self._outputs.get(buckets)
            if histogram is None:
                # One metric name for every column; the client library wants one bucket layout
                # per metric object, so a family's own buckets get their own object (the series
                # differ by label, so the exposition stays valid).
                histogram = Histogram(
                    "mlops_output_value",
                    "Values of a numeric output column (score, recommended limit, forecast).",
                    ("model", "version", "column"),
                    buckets=buckets,
                    registry=None,
                )
                self._outputs[buckets] = histogram
            child = histogram.labels(**labels, column=column)
        self._by_column[key] = child
        return child

    def exposition(self) -> bytes:
        """The Prometheus text format of every worker's values (or this process's)."""
        self.flush()
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess)
            return generate_latest(registry)
        assert self.registry is not None
        return generate_latest(self.registry)

    def worker_exit(self) -> None:
        """Flush what is pending, then mark this worker dead (its live gauges leave)."""
        self.flush()
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess)


class _Merged:
    """The output histograms (one object per bucket layout) as one metric family.

    Prometheus refuses a second ``# TYPE`` line for a name, so their samples go out together.
    (In multiprocess mode the library's collector merges them by name from the files.)
    """

    def __init__(self, histograms: dict[tuple[float, ...], Histogram]) -> None:
        self.histograms = histograms

    def collect(self) -> Iterable[Metric]:
        """One ``mlops_output_value`` family with every column's samples."""
        merged: Metric | None = None
        for histogram in self.histograms.values():
            for family in histogram.collect():
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type)
                merged.samples.extend(family.samples)
        if merged is not None:
            yield merged


class MinuteWindow:
    """Requests, 5xx answers and latencies of the last minute, in one-second slots.

    Each slot counts requests, errors and latencies in fixed buckets, so memory stays bounded
    whatever the rate and the p99 is read by interpolation inside its bucket (to about a tenth
    of the value, as Prometheus's ``histogram_quantile`` does with the same buckets).
    """

    BOUNDS = tuple(0.0001 * 1.25**i for i in range(60))
    """Latency bucket bounds in seconds: 0.1 ms to about 60 s, each 25 % above the last."""

    def __init__(self, seconds: int = 60, clock: Any = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.started = clock()
        self._slots: deque[list[Any]] = deque()

    def record(self, seconds: float, error: bool) -> None:
        """Count one request that took ``seconds``; ``error``: answered 5xx."""
        now = int(self.clock())
        slots = self._slots
        if not slots or slots[-1][0] != now:
            slots.append([now, 0, 0, {}])
            while slots[0][0] <= now - self.seconds:
                slots.popleft()
        slot = slots[-1]
        slot[1] += 1
        slot[2] += error
        index = bisect.bisect_left(self.BOUNDS, seconds)
        slot[3][index] = slot[3].get(index, 0) + 1

    def summary(self) -> dict[str, Any]:
        """``window_seconds``, ``requests_per_second``, ``error_rate`` and ``p99_ms`` now."""
        now = self.clock()
        horizon = int(now) - self.seconds
        live = [s for s in self._slots if s[0] > horizon]
        span = float(min(self.seconds, max(now - self.started, 1.0)))
        requests = sum(s[1] for s in live)
        errors = sum(s[2] for s in live)
        counts: dict[int, int] = {}
        for slot in live:
            for index, n in slot[3].items():
                counts[index] = counts.get(index, 0) + n
        return {
            "window_seconds": span,
            "requests_per_second": requests / span,
            "error_rate": errors / requests if requests else None,
            "p99_ms": _quantile(counts, requests, 0.99, self.BOUNDS) * 1000 if requests else None,
        }


def _quantile(counts: dict[int, int], total: int, q: float, bounds: tuple[float, ...]) -> float:
    """The ``q`` quantile of bucketed counts, linear inside the bucket it falls in."""
    rank = q * total
    seen = 0
    for index in sorted(counts):
        n = counts[index]
        if seen + n >= rank:
            low = bounds[index - 1] if index > 0 else 0.0
            high = bounds[index] if index < len(bounds) else bounds[-1]
            return low + (high - low) * (rank - seen) / n
        seen += n
    return bounds[-1]


class RouterMetrics:
    """The router's instruments and its per-model minute windows.

    Args:
        registry: where they register (default: a new registry; the router is one process).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("model", "variant")
        self._requests = Counter(
            "mlops_router_requests",
            "Invocations the router answered, by model, variant and HTTP status.",
            (*labels, "code"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "mlops_router_request_duration_seconds",
            "Seconds from the router receiving an invocation to its answer (retries included).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._upstream_errors = Counter(
            "mlops_router_upstream_errors",
            "Attempts that could not reach a variant (refused, reset, timed out).",
            labels,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._pending: list[tuple[str, str, int, float]] = []
        self.windows: dict[str, MinuteWindow] = {}

    def flush(self) -> None:
        """Move the recorded invocations into the instruments, batched per series."""
        pending, self._pending = self._pending, []
        by_series: dict[tuple[str, str, int], list[float]] = {}
        for model, variant, code, seconds in pending:
            by_series.setdefault((model, variant, code), []).append(seconds)
        for key, latencies in by_series.items():
            pair = self._children.get(key)
            if pair is None:
                model, variant, code = key
                pair = (
                    self._requests.labels(model=model, variant=variant, code=str(code)),
                    self._latency.labels(model=model, variant=variant),
                )
                self._children[key] = pair
            pair[0].inc(len(latencies))
            observe_many(pair[1], np.asarray(latencies, dtype="float64"))

    def request(self, model: str, variant: str, code: int, seconds: float) -> None:
        """Record one answered invocation (appended; the instruments get it at :meth:`flush`)."""
        self._pending.append((model, variant, code, seconds))
        if len(self._pending) >= FLUSH_AT:
            self.flush()
        window = self.windows.get(model)
        if window is None:
            window = self.windows[model] = MinuteWindow()
        window.record(seconds, code >= 500)

    def upstream_error(self, model: str, variant: str) -> None:
        """Count one attempt that did not reach ``variant``."""
        self._upstream_errors.labels(model=model, variant=variant).inc()

    def exposition(self) -> bytes:
        """The router's metrics in the Prometheus text format."""
        self.flush()
        return generate_latest(self.registry)


def feedback_counter(registry: CollectorRegistry, results: tuple[str, ...]) -> Counter:
    """``mlops_router_feedback_total{result}``: outcome reports, accepted or refused by reason.

    Every ``results`` series starts at 0, so a rate is defined before the first report.
    """
    counter = Counter(
        "mlops_router_feedback",
        "Outcome reports (POST /feedback/{model}) by result: accepted, or why refused.",
        ("result",),
        registry=registry,
    )
    for result in results:
        counter.labels(result=result)
    return counter

"""Prediction capture in the router: every answer of an experiment's arms, off the request path.

A record keeps the model's declared input columns of the request (:mod:`serving.capture_filter`),
the answer, the inference id, the arm and the time; nothing else the caller sent.

Records are written in SageMaker Data Capture's layout, so one reader serves both targets::

    {capture uri}/{endpoint}/{variant}/{yyyy}/{mm}/{dd}/{hh}/{time}-{uuid}.jsonl

one JSON object per line (``captureData.endpointInput`` / ``endpointOutput``, ``eventMetadata``
with ``eventId``, ``inferenceId``, ``inferenceTime`` and ``customAttributes``
``experiment_id=...;variant=...;version=vN;arm=champion|challenger|shadow``).

The request path only appends a record to a buffer capped in bytes (:meth:`CaptureWriter.record`,
no I/O, no encoding); a background task groups, encodes and writes the buffer every second, or
sooner once ``flush_records`` or a quarter of the byte cap wait, all in a worker thread so the
event loop never blocks on the JSON encoder, a disk or S3. A write that fails is logged and
counted, never raised: capture loses records rather than requests. A record over the record
cap, a full buffer (the store slower than the traffic) and records past an endpoint's hourly
byte budget are dropped and counted (:mod:`serving.capture_limits`); once a record does not
fit an endpoint's hour, the rest of that hour is dropped before it is buffered or encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serving.capture_filter import keep_columns

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from adapters.store import Store
    from serving.capture_limits import CaptureLimits
    from serving.experiment_routing import CaptureRoute

log = logging.getLogger("serving.capture")


@dataclass(frozen=True)
class Captured:
    """One answer to write: what came in, what went out, and who answered."""

    route: CaptureRoute
    variant: str
    version: str
    arm: str
    experiment_id: str
    inference_id: str
    content_type: str
    request: bytes
    response: bytes
    response_type: str
    at: float
    latency_ms: float | None = None  # the caller's wait (the shadow's for a shadow copy)
    status: int = 200  # a 5xx is captured too, so the error guardrail sees it
    chosen: bool = False  # the caller named the variant: not a drawn arm


def capture_key(endpoint: str, variant: str, at: float, suffix: str) -> str:
    """The key of one capture file under the capture prefix (SageMaker's hourly folders)."""
    hour = time.strftime("%Y/%m/%d/%H", time.gmtime(at))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at))
    return f"{endpoint}/{variant}/{hour}/{stamp}-{suffix}.jsonl"


def capture_line(item: Captured) -> dict[str, Any]:
    """The Data Capture record of one answer."""

    def side(mode: str, content_type: str, body: bytes) -> dict[str, str]:
        json_body = content_type.split(";")[0].strip().lower() == "application/json"
        return {
            "observedContentType": content_type,
            "mode": mode,
            "data": body.decode("utf-8", "replace"),
            "encoding": "JSON" if json_body else "CSV",
        }

    attributes = (
        f"experiment_id={item.experiment_id};variant={item.variant};"
        f"version={item.version};arm={item.arm};status={item.status}"
    )
    if item.latency_ms is not None:
        attributes += f";latency_ms={item.latency_ms:.3f}"
    if item.chosen:
        attributes += ";chosen=1"
    # Only the model's declared input columns: nothing else a caller adds is kept.
    request = keep_columns(item.request, item.content_type, item.route.columns)
    return {
        "captureData": {
            "endpointInput": side("INPUT", item.content_type, request),
            "endpointOutput": side("OUTPUT", item.response_type, item.response),
        },
        "eventMetadata": {
            "eventId": str(uuid.uuid4()),
            "inferenceId": item.inference_id,
            "inferenceTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(item.at)),
            "customAttributes": attributes,
        },
        "eventVersion": "0",
    }


def encode_line(item: Captured) -> bytes:
    """One record's JSON line (what :class:`CaptureWriter` writes; picklable for a process)."""
    return (json.dumps(capture_line(item), separators=(",", ":")) + "\n").encode()


class CaptureWriter:
    """Buffers captured answers and writes them in the background (see the module docstring).

    Args:
        flush_seconds: longest a record waits in the buffer.
        flush_records: a buffer this long is written at once.
        max_buffered: records held at most; more are dropped (and counted).
        limits: the byte caps (buffer, record, bytes written per endpoint and hour).
        encoder_processes: processes that parse and encode records (0: the writer thread does).
            A C parser or encoder holds the GIL for the whole of a 6 MB body (tens of ms), which
            the event loop would wait for even from a thread; in a process of its own it waits
            for nothing. The router uses one.
    """

    def __init__(
        self,
        flush_seconds: float = 1.0,
        flush_records: int = 1000,
        max_buffered: int = 100_000,
        limits: CaptureLimits | None = None,
        encoder_processes: int = 0,
    ) -> None:
        from serving.capture_limits import CaptureLimits

        self.encoder_processes = encoder_processes
        self._pool: ProcessPoolExecutor | None = None

        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self.max_buffered = max_buffered
        self.limits = limits or CaptureLimits()
        self._buffer: list[Captured] = []
        self._buffered_bytes = 0
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._stores: dict[tuple[str, str | None], Store] = {}
        self._hour_written: dict[tuple[str, str], int] = {}
        self._closed_hours: set[tuple[str, str]] = set()
        """(endpoint, hour) whose budget a record did not fit: later ones are not even buffered."""
        self._writing = threading.Lock()  # the last flush at shutdown may meet a running one
        self.stats = {"captured": 0, "written": 0, "dropped": 0, "failed_writes": 0}
        self.written_bytes = 0
        self.dropped: dict[str, list[int]] = {}
        """Reason (``buffer_full``, ``record_too_large``, ``hourly_cap``) -> [records, bytes]."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes of requests and answers waiting to be written."""
        return self._buffered_bytes

    def _drop(self, reason: str, size: int, records: int = 1) -> None:
        counts = self.dropped.setdefault(reason, [0, 0])
        counts[0] += records
        counts[1] += size
        self.stats["dropped"] += records

    def record(self, item: Captured) -> None:
        """Queue one answer for writing; never blocks, never raises, never encodes.

        Only ``route.percent`` of the answers are kept (all of them during an experiment).
        """
        if item.route.percent < 100.0 and random.random() * 100.0 >= item.route.percent:
            self.stats["not_sampled"] = self.stats.get("not_sampled", 0) + 1
            return
        size = len(item.request) + len(item.response)
        if size > self.limits.record_bytes:
            self._drop("record_too_large", size)
            return
        if (item.route.endpoint, time.strftime("%Y%m%d%H", time.gmtime(item.at))) in (
            self._closed_hours
        ):
            self._drop("hourly_cap", size)
            return
        if (
            len(self._buffer) >= self.max_buffered
            or self._buffered_bytes + size > self.limits.buffer_bytes
        ):
            self._drop("buffer_full", size)
            return
        self._buffer.append(item)
        self._buffered_bytes += size
        self.stats["captured"] += 1
        full = self._buffered_bytes * 4 >= self.limits.buffer_bytes
        if (len(self._buffer) >= self.flush_records or full) and self._wake is not None:
            self._wake.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the background flusher while the server runs; flush what is left at the end.

        With ``encoder_processes``, the encoder's processes start with the first record to
        encode (a router that captures nothing starts none) and stop after the last flush.
        """
        self._wake = asyncio.Event()
        self._stopping = False
        task = asyncio.create_task(self._loop())
        try:
            yield
        finally:
            # Not cancelled: a flush in its writer thread finishes and is counted.
            self._stopping = True
            self._wake.set()
            await task
            await self.flush()
            self._wake = None
            if self._pool is not None:
                pool, self._pool = self._pool, None
                await asyncio.to_thread(pool.shutdown)

    def _encode(self, item: Captured) -> bytes:
        """One record's line, in an encoder process when there is one (called in a thread)."""
        if not self.encoder_processes:
            return encode_line(item)
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.encoder_processes, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool.submit(encode_line, item).result()

    async def _loop(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write everything buffered now; return how many records were written.

        Grouping, encoding and writing all run in one worker thread: a batch of large records
        takes the JSON encoder seconds, which the event loop (and ``/ping``) must not wait for.
        """
        if not self._buffer:
            return 0
        items, self._buffer, self._buffered_bytes = self._buffer, [], 0
        outcome = await asyncio.to_thread(self._encode_and_write, items)
        self.stats["written"] += outcome.written
        self.stats["failed_writes"] += outcome.failed
        self.written_bytes += outcome.written_bytes
        for reason, (records, size) in outcome.dropped.items():
            self._drop(reason, size, records)
        return outcome.written

    def _encode_and_write(self, items: list[Captured]) -> _Outcome:
        """Encode ``items`` into one file per endpoint, variant and hour; write each (a thread)."""
        with self._writing:
            return self._encode_and_write_locked(items)

    def _encode_and_write_locked(self, items: list[Captured]) -> _Outcome:
        outcome = _Outcome()
        files: dict[tuple[CaptureRoute, str, str], list[Captured]] = defaultdict(list)
        for item in items:
            hour = time.strftime("%Y%m%d%H", time.gmtime(item.at))
            files[(item.route, item.variant, hour)].append(item)
        for (route, variant, hour), batch in files.items():
            lines: list[bytes] = []
            budget_key = (route.endpoint, hour)
            spent = self._hour_written.get(budget_key, 0)
            for item in batch:
                if budget_key in self._closed_hours:  # not encoded: the encoder holds the GIL
                    outcome.drop("hourly_cap", len(item.request) + len(item.response))
                    continue
                line = self._encode(item)
                if spent + len(line) > self.limits.hourly_bytes:
                    outcome.drop("hourly_cap", len(line))
                    self._closed_hours.add(budget_key)
                    continue
                spent += len(line)
                lines.append(line)
            if not lines:
                continue
            body = b"".join(lines)
            key = capture_key(route.endpoint, variant, batch[0].at, uuid.uuid4().hex[:12])
            try:
                self._write(route, key, body)
            except Exception as exc:  # a capture failure never fails a request
                outcome.failed += len(lines)
                log.error("capture of %d records to %s failed: %r", len(lines), route.uri, exc)
                continue
            # Only what reached the store counts against the hour: a failed write is retried
            # by nothing, so it must not use up the budget either.
            self._hour_written[budget_key] = self._hour_written.get(budget_key, 0) + len(body)
            outcome.written += len(lines)
            outcome.written_bytes += len(body)
        current = time.strftime("%Y%m%d%H", time.gmtime())
        for old in [k for k in self._hour_written if k[1] < current]:
            del self._hour_written[old]
        self._closed_hours = {k for k in self._closed_hours if k[1] >= current}
        return outcome

    def _write(self, route: CaptureRoute, key: str, body: bytes) -> None:
        from adapters.store import store_from_uri

        store = self._stores.get((route.uri, route.kms_key_id))
        if store is None:
            store = store_from_uri(route.uri, kms_key_id=route.kms_key_id)
            self._stores[(route.uri, route.kms_key_id)] = store
        store.put_bytes(key, body)


@dataclass
class _Outcome:
    """What one flush did, handed from the writer thread back to the event loop."""

    written: int = 0
    written_bytes: int = 0
    failed: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)

    def drop(self, reason: str, size: int) -> None:
        counts = self.dropped.setdefault(reason, [0, 0])
        counts[0] += 1
        counts[1] += size

"""Prediction capture in the router: every answer of an experiment's arms, off the request path.

Records are written in SageMaker Data Capture's layout, so one reader serves both targets::

    {capture uri}/{endpoint}/{variant}/{yyyy}/{mm}/{dd}/{hh}/{time}-{uuid}.jsonl

one JSON object per line (``captureData.endpointInput`` / ``endpointOutput``, ``eventMetadata``
with ``eventId``, ``inferenceId``, ``inferenceTime`` and ``customAttributes``
``experiment_id=...;variant=...;version=vN;arm=champion|challenger|shadow``).

The request path only appends a tuple to a bounded buffer (:meth:`CaptureWriter.record`, no
I/O, no encoding); a background task encodes and writes the buffer every second, or sooner once
``flush_records`` wait, in a worker thread so the event loop never blocks on a disk or S3. A
write that fails is logged and counted, never raised: capture loses records rather than
requests. A full buffer (the store slower than the traffic) drops new records and counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.store import Store
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
    return {
        "captureData": {
            "endpointInput": side("INPUT", item.content_type, item.request),
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


class CaptureWriter:
    """Buffers captured answers and writes them in the background (see the module docstring).

    Args:
        flush_seconds: longest a record waits in the buffer.
        flush_records: a buffer this long is written at once.
        max_buffered: records held at most; more are dropped (and counted).
    """

    def __init__(
        self, flush_seconds: float = 1.0, flush_records: int = 1000, max_buffered: int = 100_000
    ) -> None:
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self.max_buffered = max_buffered
        self._buffer: list[Captured] = []
        self._wake: asyncio.Event | None = None
        self._stores: dict[tuple[str, str | None], Store] = {}
        self.stats = {"captured": 0, "written": 0, "dropped": 0, "failed_writes": 0}

    def record(self, item: Captured) -> None:
        """Queue one answer for writing; never blocks, never raises."""
        if len(self._buffer) >= self.max_buffered:
            self.stats["dropped"] += 1
            return
        self._buffer.append(item)
        self.stats["captured"] += 1
        if len(self._buffer) >= self.flush_records and self._wake is not None:
            self._wake.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the background flusher while the server runs; flush what is left at the end."""
        self._wake = asyncio.Event()
        task = asyncio.create_task(self._loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.flush()
            self._wake = None

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write everything buffered now; return how many records were written."""
        if not self._buffer:
            return 0
        items, self._buffer = self._buffer, []
        files: dict[tuple[CaptureRoute, str, str], list[Captured]] = defaultdict(list)
        for item in items:
            hour = time.strftime("%Y%m%d%H", time.gmtime(item.at))
            files[(item.route, item.variant, hour)].append(item)
        written = 0
        for (route, variant, _hour), batch in files.items():
            key = capture_key(route.endpoint, variant, batch[0].at, uuid.uuid4().hex[:12])
            body = "".join(json.dumps(capture_line(i), separators=(",", ":")) + "\n" for i in batch)
            try:
                await asyncio.to_thread(self._write, route, key, body.encode())
            except Exception as exc:  # a capture failure never fails a request
                self.stats["failed_writes"] += len(batch)
                log.error("capture of %d records to %s failed: %r", len(batch), route.uri, exc)
                continue
            written += len(batch)
        self.stats["written"] += written
        return written

    def _write(self, route: CaptureRoute, key: str, body: bytes) -> None:
        from adapters.store import store_from_uri

        store = self._stores.get((route.uri, route.kms_key_id))
        if store is None:
            store = store_from_uri(route.uri, kms_key_id=route.kms_key_id)
            self._stores[(route.uri, route.kms_key_id)] = store
        store.put_bytes(key, body)

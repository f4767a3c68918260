"""The shadow mirror: copies of a share of the requests go to a shadow variant, never awaited.

The caller's answer never depends on the shadow (SageMaker's shadow variants and Seldon's
``mirror`` promise the same): the request path does one ``put_nowait`` on a bounded queue and
goes on; a few worker tasks send the copies on an HTTP client of their own (so a slow shadow
cannot hold the connections the callers' requests need), each with a timeout, and capture the
shadow's answers as ``arm=shadow``. Every failure (refused, reset, timeout, an error status)
is counted and dropped; a full queue (a shadow slower than the traffic) drops the copy and
counts it. Nothing here raises into the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serving.capture import Captured, CaptureWriter
from serving.experiment_routing import model_latency_ms

if TYPE_CHECKING:
    import aiohttp

    from serving.experiment_routing import ExperimentRoute, ShadowRoute

log = logging.getLogger("serving.shadow")


@dataclass(frozen=True)
class _Copy:
    model: str
    shadow: ShadowRoute
    experiment: ExperimentRoute
    body: bytes
    headers: dict[str, str]
    inference_id: str


class ShadowMirror:
    """Sends shadow copies in the background (see the module docstring).

    Args:
        capture: where the shadow's answers are captured.
        timeout: seconds one copy may take, connection included.
        queue_size: copies waiting at most; more are dropped.
        workers: copies in flight at most.
    """

    def __init__(
        self,
        capture: CaptureWriter,
        timeout: float = 2.0,
        queue_size: int = 1000,
        workers: int = 8,
    ) -> None:
        self.capture = capture
        self.timeout = timeout
        self.workers = workers
        self._queue: asyncio.Queue[_Copy] = asyncio.Queue(maxsize=queue_size)
        self._running = False
        self.stats = {"sent": 0, "answered": 0, "failed": 0, "timed_out": 0, "dropped": 0}

    def offer(
        self,
        model: str,
        shadow: ShadowRoute,
        experiment: ExperimentRoute,
        body: bytes,
        headers: dict[str, str],
        inference_id: str,
    ) -> bool:
        """Queue one copy; False (and counted) when the mirror is full or not running."""
        if not self._running:
            self.stats["dropped"] += 1
            return False
        try:
            self._queue.put_nowait(_Copy(model, shadow, experiment, body, headers, inference_id))
        except asyncio.QueueFull:
            self.stats["dropped"] += 1
            return False
        return True

    @contextlib.asynccontextmanager
    async def running(self, client: aiohttp.ClientSession) -> AsyncIterator[None]:
        """Run the workers while the server runs.

        Args:
            client: the mirror's own HTTP client (the router builds it: it owns aiohttp), with
                at most ``workers`` connections and ``timeout`` as its total timeout.
        """
        tasks = [asyncio.create_task(self._work(client)) for _ in range(self.workers)]
        self._running = True
        try:
            yield
        finally:
            self._running = False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _work(self, client: aiohttp.ClientSession) -> None:
        while True:
            copy = await self._queue.get()
            try:
                await self._send(client, copy)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the shadow's trouble is never the caller's
                self.stats["failed"] += 1
                log.debug("shadow %s: %r", copy.shadow.name, exc)
            finally:
                self._queue.task_done()

    async def _send(self, client: aiohttp.ClientSession, copy: _Copy) -> None:
        shadow = copy.shadow
        self.stats["sent"] += 1
        started = time.perf_counter()
        try:
            async with client.post(
                f"http://{shadow.host}:{shadow.port}/invocations",
                data=copy.body,
                headers=copy.headers,
            ) as answer:
                content = await answer.read()
                status = answer.status
                content_type = answer.headers.get("content-type", "application/json")
                took = model_latency_ms(answer.headers, (time.perf_counter() - started) * 1000.0)
        except TimeoutError:  # aiohttp's timeouts are TimeoutError subclasses
            self.stats["timed_out"] += 1
            content, status = b'{"error": "shadow timed out"}', 504
            content_type = "application/json"
            took = (time.perf_counter() - started) * 1000.0
        if 200 <= status < 300:
            self.stats["answered"] += 1
        elif status != 504:
            self.stats["failed"] += 1
        # The shadow's 5xx and timeouts are captured as its errors (the guardrail counts them).
        if copy.experiment.capture is not None and (200 <= status < 300 or status >= 500):
            self.capture.record(
                Captured(
                    route=copy.experiment.capture,
                    variant=shadow.name,
                    version=shadow.version,
                    arm="shadow",
                    experiment_id=copy.experiment.experiment_id,
                    inference_id=copy.inference_id,
                    content_type=copy.headers.get("content-type", "application/json"),
                    request=copy.body,
                    response=content,
                    response_type=content_type,
                    at=time.time(),
                    latency_ms=took,
                    status=status,
                )
            )

"""Micro-batching: concurrent requests joined into one model call, for a fixed per-call cost.

IsolationForest walks every tree in Python once per call, so one row costs about what 100 do
(see :attr:`core.families.Family.batchable`). Under concurrent load the app therefore queues
each request's columns here; the first request of a batch waits at most ``max_wait`` seconds
(2 ms) for others while the worker is idle, a batch holds at most ``max_rows`` rows, and one
batch runs at a time on one worker thread, so the event loop keeps reading requests meanwhile;
what queues while a batch runs goes as the next batch the moment it ends (MLServer's "adaptive
batching"). Rows are predicted independently, so a
joined batch answers each row as it would alone (a test compares them).

A batch that fails (one request with a bad value) is retried request by request, so each
caller gets its own answer or its own 400.

MLServer's adaptive batching and Triton's dynamic batcher do the same; neither is a library
this app can call, and the loop here is some 60 lines.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Columns = dict[str, list[Any]]
Predict = Callable[[Columns], dict[str, Any]]


class MicroBatcher:
    """Joins concurrent :meth:`predict` calls into batches for ``run``.

    Args:
        run: predicts one batch of columns (thread-safe; called from one worker thread).
        max_rows: most rows in one batch (a request larger than this runs alone).
        max_wait: seconds the first request of a batch waits for more.
    """

    def __init__(self, run: Predict, max_rows: int = 256, max_wait: float = 0.002) -> None:
        self.run = run
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._queue: list[tuple[int, Columns, asyncio.Future[dict[str, Any]]]] = []
        self._rows = 0
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="micro-batch")

    def close(self) -> None:
        """Stop the worker thread (pending batches finish first)."""
        self._pool.shutdown(wait=True)

    async def predict(self, rows: int, columns: Columns) -> dict[str, Any]:
        """This request's predictions, computed in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._queue.append((rows, columns, future))
        self._rows += rows
        if not self._busy:
            # Idle worker: a full batch goes now, otherwise the first request waits up to
            # max_wait for company. A busy worker takes the queue when it finishes.
            if self._rows >= self.max_rows or self.max_wait <= 0:
                self._flush(loop)
            elif self._timer is None:
                self._timer = loop.call_later(self.max_wait, self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy or not self._queue:
            return
        batch: list[tuple[int, Columns, asyncio.Future[dict[str, Any]]]] = []
        size = 0
        while self._queue and (not batch or size + self._queue[0][0] <= self.max_rows):
            item = self._queue.pop(0)
            batch.append(item)
            size += item[0]
        self._rows -= size
        self._busy = True
        work = loop.run_in_executor(self._pool, self._run_batch, batch)
        work.add_done_callback(lambda done: self._finished(loop, batch, done))

    def _run_batch(self, batch: list[tuple[int, Columns, Any]]) -> list[Any]:
        """Runs on the worker thread: one call for the batch, or one per request on failure."""
        keys = {tuple(columns) for _, columns, _ in batch}
        if len(batch) > 1 and len(keys) == 1:
            (names,) = keys
            joined = {
                c: list(itertools.chain.from_iterable(cols[c] for _, cols, _ in batch))
                for c in names
            }
            try:
                answer = self.run(joined)
            except Exception:  # one bad request: answer each alone, below
                pass
            else:
                out, at = [], 0
                for rows, _, _ in batch:
                    out.append({c: v[at : at + rows] for c, v in answer.items()})
                    at += rows
                return out
        results: list[Any] = []
        for _, columns, _ in batch:
            try:
                results.append(self.run(columns))
            except Exception as exc:  # handed to that request's caller
                results.append(exc)
        return results

    def _finished(
        self, loop: asyncio.AbstractEventLoop, batch: list[Any], done: asyncio.Future[Any]
    ) -> None:
        self._busy = False
        error = done.exception()
        results = [error] * len(batch) if error is not None else done.result()
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._queue:
            # Those that queued while the worker was busy have waited long enough.
            self._flush(loop)

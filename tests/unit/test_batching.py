"""Micro-batching: concurrent requests joined into one model call answer as if alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.families import get_family
from serving.batching import MicroBatcher
from tests.fixtures.serving import build_model_dir, training_frame


@pytest.mark.parametrize("family", ["abuse_detector", "limit_optimiser"])
def test_joined_requests_answer_what_each_would_alone(family: str, tmp_path: Path) -> None:
    impl = get_family(family)
    assert impl.batchable
    model = impl.load(build_model_dir(family, tmp_path / "m").model_dir)
    frame = training_frame(family, seed=31)[list(impl.input_columns())]
    sizes = [1, 3, 1, 40, 1, 7, 1, 1, 100, 2] * 3
    requests, at = [], 0
    for n in sizes:
        part = frame.iloc[at : at + n]
        requests.append((n, {c: part[c].tolist() for c in part.columns}))
        at += n
    # One bad request among them: it alone gets its error.
    bad_columns = dict(requests[4][1])
    first = next(iter(impl.input_columns()))
    bad_columns[first] = [float("inf")] if impl.input_columns()[first] == "float64" else [True]
    requests[4] = (1, bad_columns)
    calls: list[int] = []

    def run(columns: dict[str, list[Any]]) -> dict[str, Any]:
        calls.append(len(next(iter(columns.values()))))
        return impl.predict_columns(model, columns)

    async def burst() -> list[Any]:
        batcher = MicroBatcher(run, max_rows=128, max_wait=0.002)
        try:
            return await asyncio.gather(
                *(batcher.predict(n, cols) for n, cols in requests), return_exceptions=True
            )
        finally:
            batcher.close()

    answers = asyncio.run(burst())
    assert isinstance(answers[4], ValueError) and f"'{first}'" in str(answers[4])
    for i, ((_n, columns), got) in enumerate(zip(requests, answers, strict=True)):
        if i == 4:
            continue
        alone = impl.predict_columns(model, columns)
        assert list(got) == list(alone)
        for name in alone:
            np.testing.assert_array_equal(got[name], alone[name], err_msg=f"request {i} {name}")
    # Batches were formed (fewer model calls than requests) and none passed the row cap,
    # except the retries of the batch that held the bad request, one call per request.
    assert len(calls) < len(requests) + 10
    assert max(calls) <= 128


def test_a_lone_request_is_answered_by_one_call_of_its_own() -> None:
    seen: list[float] = []

    def run(columns: dict[str, list[Any]]) -> dict[str, Any]:
        seen.append(len(columns["x"]))
        return {"y": np.asarray(columns["x"], dtype=float) * 2}

    async def once() -> tuple[dict[str, Any], float]:
        loop = asyncio.get_running_loop()
        batcher = MicroBatcher(run, max_rows=64, max_wait=0.002)
        try:
            start = loop.time()
            answer = await batcher.predict(1, {"x": [1.5]})
            return answer, loop.time() - start
        finally:
            batcher.close()

    answer, _elapsed = asyncio.run(once())
    assert answer["y"].tolist() == [3.0]
    assert seen == [1]

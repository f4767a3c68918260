"""Arms are drawn, not chosen, through the real router and serving processes.

A caller tries both ways of choosing its arm during an A/B test: naming the challenger's
variant (``X-Amzn-SageMaker-Target-Variant``) and sending sticky keys it searched to land on the
challenger using only what the router publishes (``GET /endpoints/{model}``'s experiment id).
Both land where random draws land, and what the evaluation reads from the capture is what a
random split gives. Then an experiment that allows named variants: they answer, and are
captured as chosen and left out of the analysis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from adapters.capture import CaptureRead, read_captures
from adapters.store import LocalStore
from core.observations import CHOSEN_ARM, observe
from tests.fixtures.experiments import FAMILY, record
from tests.integration import test_local_experiment as local
from tests.integration.test_local_experiment import (
    MODEL,
    VARIANT,
    Endpoint,
    plan,
    plausible,
    send,
)

pytestmark = pytest.mark.integration
SHARE = 0.10
NO_LABELS = pd.DataFrame({"client_id": [], "best_limit": []})
endpoint = local.endpoint
"""The same endpoint setup as the local experiment tests (one of its own for this module)."""


def published_point(key: str, experiment_id: str) -> float:
    """Where a key would fall if the router hashed what it publishes (the experiment id)."""
    digest = hashlib.sha256(f"{experiment_id}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def searched_keys(experiment_id: str, n: int) -> list[str]:
    """Keys an adversarial caller computes to land on the challenger (the top ``SHARE``)."""
    keys = [f"caller-{i}" for i in range(200 * n)]
    return [k for k in keys if published_point(k, experiment_id) >= 1 - SHARE][:n]


def capture_of(endpoint: Endpoint, experiment_id: str, rows: int) -> CaptureRead:
    """The capture reader's view of ``experiment_id`` once ``rows`` request records are in."""
    store = LocalStore(Path(endpoint.target.store_uri))
    deadline = time.monotonic() + 30
    while True:
        read = read_captures(store, endpoint.target.capture_prefix(MODEL), experiment_id)
        if len(read.frame) >= rows or time.monotonic() > deadline:
            return read
        time.sleep(0.3)


def shown(client: httpx.Client, endpoint: Endpoint, answers: list[httpx.Response]) -> str:
    """Everything the router told callers: its endpoint views and the answers, as text."""
    base = endpoint.target.address(MODEL).rsplit("/", 2)[0]
    views = [client.get(f"{base}/{MODEL}").text, client.get(base).text]
    return "\n".join(views + [json.dumps(dict(r.headers)) + r.text for r in answers])


def test_neither_a_named_variant_nor_a_searched_key_steers_an_experiment(
    endpoint: Endpoint,
) -> None:
    target = endpoint.target
    target.start_experiment(plan(endpoint, "ab", 100 * SHARE, "exp-drawn"), lambda _m: None)
    try:
        names = {v["arm"]: v["name"] for v in target.traffic(MODEL)["variants"]}  # type: ignore[index]
        route = target.router.route(MODEL) or {}
        secret = route["experiment"].get("secret", "")
        with httpx.Client(trust_env=False, timeout=30) as client:
            published = client.get(target.address(MODEL).rsplit("/", 1)[0]).json()
            assert published["experiment_id"] == "exp-drawn"
            keys = searched_keys(published["experiment_id"], 60)
            keyed = [
                send(client, endpoint, 1, **{"X-Caller-Key": k})[0] for k in keys
            ]  # one request per key: each key is one draw
            named = send(
                client, endpoint, 60, **{"X-Amzn-SageMaker-Target-Variant": names["challenger"]}
            )
            honest = send(client, endpoint, 60)
            text = shown(client, endpoint, [*keyed, *named, *honest])
        answers = [*keyed, *named, *honest]
        assert {r.status_code for r in answers} == {200}
        for tried in (keyed, named):
            landed = sum(r.headers[VARIANT] == names["challenger"] for r in tried)
            low, high = plausible(len(tried), SHARE)
            assert low <= landed <= high, (landed, len(tried))
        assert secret and secret not in text  # the key of the callers' hash is never shown

        per_request = len(endpoint.records)
        read = capture_of(endpoint, "exp-drawn", len(answers) * per_request)
        assert len(read.frame) == len(answers) * per_request and read.skipped == 0
        assert not read.frame["chosen"].any()
        obs = observe(record(mode="ab"), read.frame, NO_LABELS, FAMILY, {"client_id": "string"})
        assert CHOSEN_ARM not in obs.skipped
        challenger = obs.requests["challenger"] // per_request
        low, high = plausible(len(answers), SHARE)
        assert low <= challenger <= high, obs.requests
    finally:
        target.stop_experiment(MODEL, lambda _m: None)


def test_an_experiment_that_allows_named_variants_leaves_them_out_of_its_decision(
    endpoint: Endpoint,
) -> None:
    target = endpoint.target
    allowing = dataclasses.replace(
        plan(endpoint, "ab", 100 * SHARE, "exp-named"), allow_target_variant=True
    )
    target.start_experiment(allowing, lambda _m: None)
    try:
        names = {v["arm"]: v["name"] for v in target.traffic(MODEL)["variants"]}  # type: ignore[index]
        with httpx.Client(trust_env=False, timeout=30) as client:
            named = send(
                client, endpoint, 30, **{"X-Amzn-SageMaker-Target-Variant": names["challenger"]}
            )
            honest = send(client, endpoint, 60)
        assert {r.headers[VARIANT] for r in named} == {names["challenger"]}
        per_request = len(endpoint.records)
        total = (len(named) + len(honest)) * per_request
        read = capture_of(endpoint, "exp-named", total)
        assert len(read.frame) == total
        by_id: dict[str, Any] = read.frame.groupby("inference_id")["chosen"].all().to_dict()
        assert all(by_id[r.headers["X-Inference-Id"]] for r in named)
        assert not any(by_id[r.headers["X-Inference-Id"]] for r in honest)
        obs = observe(record(mode="ab"), read.frame, NO_LABELS, FAMILY, {"client_id": "string"})
        assert obs.skipped == {CHOSEN_ARM: len(named) * per_request}
        drawn = Counter(r.headers[VARIANT] for r in honest)
        assert obs.requests == {
            "champion": drawn[names["champion"]] * per_request,
            "challenger": drawn[names["challenger"]] * per_request,
        }
    finally:
        target.stop_experiment(MODEL, lambda _m: None)

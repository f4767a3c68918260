"""Outcomes come back: the real router and serving processes, an A/B experiment, reports by
inference id, and the evaluation that uses them.

One endpoint is shared by the tests of this module, which run in file order: v1 serves, v2 is
tested at 50 %; answers are reported, refused, reported again after a router restart, then
imported in bulk; each test says what it leaves. Every process started here is stopped at the
end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from adapters.endpoints.local import LocalTarget
from adapters.endpoints.local.processes import free_port
from adapters.source import seed_source
from adapters.store import LocalStore
from core.drift import Champion
from core.endpoint import TrafficPlan
from core.experiment import Experiment
from core.settings import load_settings
from tasks.experiment import gather_observations
from tasks.monitor import score_feedback
from tests.fixtures.experiments import CFG, record
from tests.fixtures.home import isolated_env
from tests.fixtures.serving import build_model_dir, kill_leftovers, publish_tiny
from tests.integration.test_local_experiment import captured

pytestmark = pytest.mark.integration

MODEL = "limit_optimiser"
TOKEN = "feedback-token-for-tests-0123456789"
OFFSET = 7.0
"""Every reported outcome is the answer plus this: each labelled answer's error is exactly it."""


@dataclass
class Endpoint:
    """The shared endpoint, its experiment, and the answers reported so far."""

    target: LocalTarget
    store: LocalStore
    source_url: str
    exp: Experiment
    answers: dict[str, float] = field(default_factory=dict)
    """Inference id -> the answer's recommended limit, for every answer of the experiment."""
    reported: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    base = tmp_path_factory.mktemp("feedback")
    home = base / "home"
    with pytest.MonkeyPatch.context() as mp:
        isolated_env(mp, home, endpoint_target="local")
        mp.setenv("MLOPS_STORE_URI", str(base / "store"))
        mp.setenv("MLOPS_ENDPOINT_PORT", str(free_port()))
        mp.setenv("MLOPS_ROUTER_FEEDBACK_TOKEN", TOKEN)  # the deploying process's secret
        settings = load_settings()
        seed_source(settings.source_url, weeks=1, n_clients=5, n_services=1, seed=3)
        store = LocalStore(settings.store)
        v1 = publish_tiny(store, build_model_dir(MODEL, base / "m1", seed=1), base / "s1")
        v2 = publish_tiny(store, build_model_dir(MODEL, base / "m2", seed=2), base / "s2")
        target = LocalTarget.from_settings(settings, stop_seconds=5)
        exp = record(mode="ab", share_percent=50)
        try:
            target.deploy(v1, lambda _m: None)
            plan = TrafficPlan(MODEL, "ab", v1, v2, 50, exp.id)
            target.start_experiment(plan, lambda _m: None)
            yield Endpoint(target, store, settings.source_url, exp)
        finally:
            target.stop()
            kill_leftovers(home)


def report(
    client: httpx.Client, endpoint: Endpoint, body: Any, token: str | None = TOKEN, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{endpoint.target.url}/feedback/{kw.get('model', MODEL)}"
    if isinstance(body, bytes):
        return client.post(url, content=body, headers=headers)
    return client.post(url, json=body, headers=headers)


def feedback_counts(client: httpx.Client, endpoint: Endpoint) -> dict[str, float]:
    """``mlops_router_feedback_total`` by result, from the router's ``/metrics``."""
    text = client.get(f"{endpoint.target.url}/metrics").text
    return {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "mlops_router_feedback"
        for s in family.samples
        if s.name.endswith("_total")
    }


def look(endpoint: Endpoint) -> Any:
    settings = load_settings()
    assert settings.store == str(endpoint.store.root)
    return gather_observations.fn(
        endpoint.store, endpoint.source_url, CFG, endpoint.target, endpoint.exp
    )


def test_an_outcome_reported_by_inference_id_labels_the_experiment(endpoint: Endpoint) -> None:
    request = build_model_dir(MODEL, endpoint.store.root.parent / "req", seed=1).example_request
    with httpx.Client(trust_env=False, timeout=30) as client:
        for i in range(21):  # one record per request: an outcome is about one decision
            answer = client.post(
                endpoint.target.address(MODEL), json={"instances": [request[i % len(request)]]}
            )
            assert answer.status_code == 200
            limit = answer.json()["predictions"][0]["recommended_limit"]
            endpoint.answers[answer.headers["X-Inference-Id"]] = float(limit)
        assert len(captured(endpoint.target.capture_prefix(MODEL), 21)) == 21
        before = look(endpoint)
        kept = sorted(endpoint.answers)[-1]  # left for the bulk import
        for inference_id, limit in endpoint.answers.items():
            if inference_id == kept:
                continue
            body = {"inference_id": inference_id, "outcome": limit + OFFSET}
            answer = report(client, endpoint, body)
            assert answer.status_code == 201, answer.text
            endpoint.reported.add(inference_id)

    after = look(endpoint)
    assert sum(before.requests.values()) == sum(after.requests.values()) == 21
    # The source table knows none of these requests' keys: only the reports label them.
    assert sum(before.labelled.values()) == 0
    assert sum(after.labelled.values()) == 20
    errors = [*after.values["abs_error"][0], *after.values["abs_error"][1]]
    assert len(errors) == 20 and all(abs(e - OFFSET) < 1e-6 for e in errors)


def test_each_refusal_has_its_reason_and_is_counted(endpoint: Endpoint) -> None:
    answered = next(iter(endpoint.reported))
    with httpx.Client(trust_env=False, timeout=30) as client:
        counts = feedback_counts(client, endpoint)
        assert counts["accepted"] == 20
        good = {"inference_id": answered, "outcome": 1.0}
        stranger = {"inference_id": "never-issued", "outcome": 1.0}
        refused = [
            (report(client, endpoint, good, token=None), 401, "unauthenticated"),
            (report(client, endpoint, good, token="not-" + TOKEN), 401, "unauthenticated"),
            (report(client, endpoint, b"{not json"), 400, "not JSON"),
            (report(client, endpoint, {"inference_id": answered}), 400, "outcome"),
            (report(client, endpoint, b"x" * 20_000), 413, "too large"),
            (report(client, endpoint, stranger), 404, "unknown inference id"),
            (report(client, endpoint, good, model="no_such_model"), 404, "unknown model"),
            (report(client, endpoint, good), 409, "duplicate"),
        ]
        for answer, status, reason in refused:
            assert answer.status_code == status, answer.text
            assert reason in answer.json()["error"]
        assert TOKEN not in client.get(f"{endpoint.target.url}/metrics").text
        after = feedback_counts(client, endpoint)
    delta = {k: after[k] - counts.get(k, 0) for k in after}
    assert delta == {
        "accepted": 0,
        "unauthenticated": 2,
        "malformed": 3,
        "unknown": 2,
        "duplicate": 1,
        "unavailable": 0,
    }
    # The first report stands: the duplicate changed nothing.
    assert sum(look(endpoint).labelled.values()) == 20


def test_a_duplicate_is_refused_after_the_router_restarts(endpoint: Endpoint) -> None:
    """The first report wins across restarts: the store's conditional create, not memory."""
    router = endpoint.target.router
    old = router.info()["pid"]
    router.stop()
    router.ensure(lambda _m: None)
    assert router.info()["pid"] != old
    answered = next(iter(endpoint.reported))
    kept = next(i for i in endpoint.answers if i not in endpoint.reported)
    with httpx.Client(trust_env=False, timeout=30) as client:
        again = report(client, endpoint, {"inference_id": answered, "outcome": 3.0})
        forgotten = report(client, endpoint, {"inference_id": kept, "outcome": 3.0})
    assert again.status_code == 409 and "duplicate" in again.json()["error"]
    # An answer from before the restart that was never reported: the router no longer
    # knows it (it remembers what it answered in memory); the bulk import still takes it.
    assert forgotten.status_code == 404 and "unknown" in forgotten.json()["error"]


def test_a_bulk_import_records_new_outcomes_and_lists_each_refusal(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    from cli import app

    kept = next(i for i in endpoint.answers if i not in endpoint.reported)
    answered = sorted(endpoint.reported)[0]
    lines = [
        {"inference_id": kept, "outcome": endpoint.answers[kept] + OFFSET},
        {"inference_id": answered, "outcome": 1.0},
        {"inference_id": "never-issued", "outcome": 1.0},
    ]
    path = tmp_path / "outcomes.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    result = CliRunner().invoke(app, ["feedback", "import", str(path), "--model", MODEL, "--json"])
    assert result.exit_code == 1, result.output  # something was refused
    out = json.loads(result.stdout)
    assert out["recorded"] == 1
    reasons = {
        item.get("inference_id", item.get("line")): item["reason"] for item in out["refused"]
    }
    assert reasons[4] == "malformed: the line is not JSON"
    assert reasons[answered].startswith("duplicate")
    assert reasons["never-issued"].startswith("unknown inference id")

    obs = look(endpoint)
    assert sum(obs.labelled.values()) == 21  # the imported outcome labels the last answer
    errors = [*obs.values["abs_error"][0], *obs.values["abs_error"][1]]
    assert all(abs(e - OFFSET) < 1e-6 for e in errors)


def test_the_monitor_measures_the_champion_on_the_reported_outcomes(endpoint: Endpoint) -> None:
    """The monitor's live error, beside the source table's: the champion's reported answers."""
    champion = Champion(MODEL, "v1", None, [], None)
    metrics, _ = score_feedback.fn(endpoint.store, CFG, champion, ({}, None), 1)
    labelled = look(endpoint).labelled["champion"]
    assert labelled > 0
    assert metrics["feedback_labelled"] == labelled
    assert metrics["feedback_abs_error"] == pytest.approx(OFFSET)

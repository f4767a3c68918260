"""Experiments: the record and its validation, the store's one-per-model rule, and looks at
captured answers written in SageMaker Data Capture's layout, joined to labels from SQLite.

No endpoint runs here: the captured records are written as the router writes them, so the
evaluation is tested without the traffic half (tests/integration has the end to end).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.capture import read_captures
from adapters.endpoints.local import LocalTarget
from adapters.experiments import begin_experiment, read_experiment, save_experiment
from adapters.pointer import move_latest
from adapters.registry import Registry
from adapters.source.read import label_rows
from adapters.store import LocalStore
from adapters.versions import publish_version, version_manifest_sha256
from core.endpoint import Serving, TrafficPlan
from core.experiment import (
    Experiment,
    ExperimentError,
    ExperimentPolicy,
    decide,
)
from core.observations import observe
from tasks.experiment import (
    experiment_status,
    look_markdown,
    start_experiment,
    stop_experiment,
)
from tests.fixtures.experiments import CFG, FAMILY, MODEL, record

START = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
KEYS = {k: CFG.dataset.columns[k] for k in CFG.dataset.key_columns}


# --- the record -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"share_percent": 0}, "between 0 and 100"),
        ({"share_percent": 100}, "between 0 and 100"),
        ({"share_percent": -5}, "between 0 and 100"),
        ({"share_percent": float("nan")}, "between 0 and 100"),
        ({"metric": "roc_auc"}, "no experiment metric 'roc_auc'.*abs_error"),
        ({"mode": "canary"}, "mode must be one of ab, shadow"),
        ({"min_days": 10, "max_days": 3}, "min-days <= max-days"),
        ({"min_samples": 100, "max_samples": 10}, "min-samples <= max-samples"),
    ],
)
def test_bad_input_is_refused_with_a_message_naming_it(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        record(**kw)


def test_a_record_takes_the_config_defaults_and_reads_back_the_same() -> None:
    exp = record(mode="shadow", share_percent=25)
    assert exp.metric == "abs_error" and exp.direction == "lower" and exp.paired
    assert set(exp.guardrails) == {"latency_ms", "error", "abs_pct_error"}
    assert exp.state == "starting" and exp.active and exp.id.startswith("limit_optimiser-v2-")
    assert Experiment.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp


def test_the_store_holds_one_active_experiment_per_model(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    first = begin_experiment(store, record())
    before = store.get_bytes("models/limit_optimiser/experiment.json")
    with pytest.raises(ExperimentError, match=f"already in experiment {first.id}"):
        begin_experiment(store, record(share_percent=30))
    assert store.get_bytes("models/limit_optimiser/experiment.json") == before
    running = save_experiment(store, first.with_state("running"), expected=first)
    with pytest.raises(ExperimentError, match="changed while this step ran"):
        save_experiment(store, first.with_state("stopped"), expected=first)  # a stale read
    ended = save_experiment(store, running.with_state("stopped"), expected=running)
    assert store.exists(f"models/limit_optimiser/experiments/{ended.id}.json")
    second = begin_experiment(store, record(share_percent=30))  # allowed once it ended
    assert read_experiment(store, MODEL) == second


# --- starting: every check before any traffic changes ----------------------------------------


def _publish(store: LocalStore, tmp_path: Path, tag: str) -> str:
    folder = tmp_path / f"v-{tag}"
    folder.mkdir()
    (folder / "model.tar.gz").write_bytes(tag.encode() * 50)
    (folder / "schema.json").write_text(json.dumps({"example_request": [{"tier": "free"}]}))
    (folder / "metrics.json").write_text("{}")
    files = {p.name: p for p in folder.iterdir()}
    return publish_version(store, MODEL, files, {"model_contents_sha256": tag * 8}).version


@pytest.fixture
def published(tmp_path: Path) -> tuple[LocalStore, LocalTarget]:
    store = LocalStore(tmp_path / "store")
    champion = _publish(store, tmp_path, "a")
    _publish(store, tmp_path, "b")
    move_latest(store, MODEL, champion, reason="test")
    return store, LocalTarget(home=tmp_path / "home", store_uri=str(store.root))


@pytest.mark.parametrize(
    ("challenger", "kw", "message"),
    [
        ("v7", {}, "v7 is not a published version"),
        ("v2", {"share_percent": 100.0}, "between 0 and 100"),
        ("v2", {"metric": "roc_auc"}, "no experiment metric"),
    ],
)
def test_start_refuses_bad_input_and_changes_nothing(
    published: tuple[LocalStore, LocalTarget],
    tmp_path: Path,
    challenger: str,
    kw: dict[str, Any],
    message: str,
) -> None:
    store, target = published
    registry = Registry(f"sqlite:///{tmp_path / 'unused.db'}")  # refused before it is asked
    before = sorted(store.list(""))
    with pytest.raises(ExperimentError, match=message):
        start_experiment.fn(store, registry, CFG, target, challenger, **kw)
    assert sorted(store.list("")) == before and target.describe(MODEL) is None


def test_start_refuses_a_model_already_in_an_experiment(
    published: tuple[LocalStore, LocalTarget], tmp_path: Path
) -> None:
    store, target = published
    registry = Registry(f"sqlite:///{tmp_path / 'unused.db'}")
    running = begin_experiment(store, record())
    before = store.get_bytes("models/limit_optimiser/experiment.json")
    with pytest.raises(ExperimentError, match=f"already in experiment {running.id}"):
        start_experiment.fn(store, registry, CFG, target, "v2")
    assert store.get_bytes("models/limit_optimiser/experiment.json") == before


class ServingTarget(LocalTarget):
    """A local target whose endpoint serves ``v1``; it records the splits it is asked for.

    The split itself (variants, capture) is the router's, tested with real processes in
    tests/integration; here the question is whether start asks for one at all.
    """

    def __init__(self, home: Path, store_uri: str) -> None:
        super().__init__(home=home, store_uri=store_uri)
        self.splits: list[TrafficPlan] = []

    def describe(self, model: str) -> Serving | None:
        return Serving(model, f"{model}-ep", "running", "v1", "http://127.0.0.1:1/x")

    def start_experiment(self, plan: TrafficPlan, progress: Any) -> None:
        self.splits.append(plan)


@pytest.fixture
def registered(
    published: tuple[LocalStore, LocalTarget], tmp_path: Path
) -> tuple[LocalStore, Registry, ServingTarget]:
    """v1 the champion, v2 promoted once before (the store has records of it), both
    registered in MLflow with the manifest hash of their publication."""
    from mlflow import MlflowClient

    store, _ = published
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri())
    run_id = (
        MlflowClient(registry.tracking_uri)
        .create_run(registry.ensure_experiment(MODEL))
        .info.run_id
    )
    for version in ("v1", "v2"):
        tags = {"store_version": version,
                "manifest_sha256": version_manifest_sha256(store, MODEL, version)}  # fmt: skip
        registry.register_version(MODEL, store.url(f"models/{MODEL}/{version}"), run_id, tags)
    move_latest(store, MODEL, "v2", reason="test")
    move_latest(store, MODEL, "v1", reason="test")
    target = ServingTarget(home=tmp_path / "home", store_uri=str(store.root))
    return store, registry, target


def rewrite_challenger(store: LocalStore) -> tuple[str, str]:
    """What a writer of the store does to v2: a new schema.json, a manifest made to match it,
    and the store's promotion records of v2 made to match that; MLflow's tag is left alone."""
    prefix = f"models/{MODEL}/v2"
    old_body = store.get_bytes(f"{prefix}/manifest.json")
    schema = json.loads(store.get_bytes(f"{prefix}/schema.json"))
    schema["example_request"] = [{"tier": "enterprise"}]
    data = json.dumps(schema).encode()
    store.put_bytes(f"{prefix}/schema.json", data)
    manifest = json.loads(old_body)
    manifest["files"]["schema.json"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                        "bytes": len(data)}  # fmt: skip
    body = json.dumps(manifest).encode()
    store.put_bytes(f"{prefix}/manifest.json", body)
    old, new = hashlib.sha256(old_body).hexdigest(), hashlib.sha256(body).hexdigest()
    for key in store.list(f"models/{MODEL}/promotions"):
        doc = json.loads(store.get_bytes(key))
        if doc.get("version") == "v2":
            store.put_bytes(key, json.dumps({**doc, "manifest_sha256": new}).encode())
    return old, new


def test_a_challenger_mlflow_knows_starts(
    registered: tuple[LocalStore, Registry, ServingTarget],
) -> None:
    store, registry, target = registered
    exp = start_experiment.fn(store, registry, CFG, target, "v2", mode="ab", share_percent=50)
    assert exp.state == "running"
    (plan,) = target.splits
    assert plan.challenger.version == "v2" and plan.champion.version == "v1"
    assert plan.allow_target_variant is False  # callers may not name an arm by default


def test_the_models_target_variant_setting_reaches_the_endpoint(
    registered: tuple[LocalStore, Registry, ServingTarget],
) -> None:
    store, registry, target = registered
    policy = CFG.experiment.model_copy(update={"allow_target_variant": True})
    cfg = CFG.model_copy(update={"experiment": policy})
    start_experiment.fn(store, registry, cfg, target, "v2", mode="ab", share_percent=50)
    assert [p.allow_target_variant for p in target.splits] == [True]


def test_a_rewritten_challenger_is_refused_against_mlflow_and_nothing_starts(
    registered: tuple[LocalStore, Registry, ServingTarget],
) -> None:
    """Issue 21: the store's records agree with the rewrite; the MLflow tag does not."""
    store, registry, target = registered
    recorded, rewritten = rewrite_challenger(store)
    before = sorted(store.list(""))
    with pytest.raises(ExperimentError) as refused:
        start_experiment.fn(store, registry, CFG, target, "v2", mode="ab", share_percent=50)
    message = str(refused.value)
    assert f"{MODEL} v2 was changed in the store after it was published" in message
    assert f"has sha256 {rewritten}" in message and f"tag) recorded {recorded}" in message
    # Nothing started: no split asked of the endpoint (no variant, no capture), no record.
    assert target.splits == []
    assert read_experiment(store, MODEL) is None
    assert sorted(store.list("")) == before


# --- looks at captured answers ---------------------------------------------------------------


def capture_line(exp_id: str, arm: str, version: str, rows: list[dict], answers: Any,
                 latency: float) -> str:  # fmt: skip
    """One Data Capture record, as the router writes it (plus a latency attribute)."""
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                              "data": json.dumps({"instances": rows}), "encoding": "JSON"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": json.dumps(answers), "encoding": "JSON"},
        },
        "eventMetadata": {
            "eventId": f"e-{arm}-{rows[0]['client_id']}",
            "inferenceId": f"i-{rows[0]['client_id']}",
            "inferenceTime": "2026-12-02T04:00:00Z",
            "customAttributes": f"experiment_id={exp_id};variant={version};version={version};"
                                f"arm={arm};latency_ms={latency:.3f}",
        },
        "eventVersion": "0",
    })  # fmt: skip


def write_traffic(
    store: LocalStore,
    exp: Experiment,
    n: int,
    champion_sd: float,
    challenger_sd: float,
    challenger_failures: float = 0.0,
    seed: int = 11,
) -> dict[str, float]:
    """Captured answers of ``n`` clients per arm (shadow: the same clients), and their labels.

    Each answer is the label plus normal noise of the arm's sd: abs_error is ~0.8 sd.
    """
    rng = np.random.default_rng(seed)
    labels, lines = {}, {"champion": [], "challenger": []}
    for i in range(2 * n):
        arms = ["champion", "challenger"] if exp.paired else [("champion", "challenger")[i % 2]]
        if exp.paired and i >= n:
            break
        client = f"c{i:05d}"
        labels[client] = float(rng.uniform(50, 500))
        row = {"client_id": client, "day": "2026-12-01", "tier": "pro", "avg_rps": 3.0}
        for arm in arms:
            sd = champion_sd if arm == "champion" else challenger_sd
            answer: Any = {
                "predictions": [{"recommended_limit": labels[client] + rng.normal(0, sd)}]
            }
            if arm == "challenger" and rng.random() < challenger_failures:
                answer = {"error": "model failed"}
            version = exp.champion if arm == "champion" else exp.challenger
            wire = "shadow" if exp.paired and arm == "challenger" else arm
            lines[arm].append(capture_line(exp.id, wire, version, [row], answer,
                                           rng.normal(20, 2)))  # fmt: skip
    for arm, arm_lines in lines.items():
        key = f"capture/{MODEL}/ep/{arm}/2026/12/02/04/part.jsonl"
        store.put_bytes(key, ("\n".join(arm_lines) + "\nnot json\n").encode())
    return labels


def labels_db(tmp_path: Path, labels: dict[str, float]) -> str:
    path = tmp_path / "source.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE client_limits (id INTEGER, client_id TEXT, day TIMESTAMP, "
                   "best_limit REAL)")  # fmt: skip
        db.executemany(
            "INSERT INTO client_limits VALUES (?, ?, ?, ?)",
            [(i, c, "2026-12-01 00:00:00.000000", v) for i, (c, v) in enumerate(labels.items())],
        )
    return f"sqlite:///{path}"


def look(tmp_path: Path, exp: Experiment, days: float = 8, **traffic: Any) -> tuple[Any, ...]:
    store = LocalStore(tmp_path / "store")
    labels = write_traffic(store, exp, **traffic)
    captured = read_captures(store, store.url(f"capture/{MODEL}"), exp.id, START)
    source = label_rows(labels_db(tmp_path, labels), CFG.dataset, "best_limit", "2026-11-01")
    obs = observe(exp, captured.frame, source, FAMILY, KEYS)
    updated, result = decide(exp, obs, START + timedelta(days=days))
    return updated, result, obs, captured


@pytest.mark.parametrize("mode", ["ab", "shadow"])
def test_a_better_challenger_is_promoted(tmp_path: Path, mode: str) -> None:
    exp = record(mode=mode, min_samples=200)
    updated, result, obs, captured = look(tmp_path, exp, n=1500, champion_sd=10, challenger_sd=8)
    assert captured.skipped == 2  # the line that is not a capture record, once per file
    assert obs.requests == {"champion": 1500, "challenger": 1500}
    assert obs.labelled == {"champion": 1500, "challenger": 1500}
    assert result["verdict"] == "promote", result["reason"]
    assert result["difference_ci"][1] < 0 and result["p_value"] <= exp.alpha
    assert updated.planned_n and updated.tau and len(updated.looks) == 1
    table = look_markdown(updated, result)
    assert "| champion | v1 | 1500 | 1500 |" in table and "| latency_ms |" in table


def test_a_worse_challenger_is_stopped(tmp_path: Path) -> None:
    exp = record(mode="ab", min_samples=200)
    _, result, _, _ = look(tmp_path, exp, n=1500, champion_sd=8, challenger_sd=10)
    # 25 % worse: the relative-error guardrail (5 %) is breached too, and is checked first.
    assert result["verdict"] == "stop", result["reason"]
    assert "worse on abs_error" in result["reason"] or "breached: abs_pct_error" in result["reason"]


def test_a_guardrail_breach_stops_at_once_even_before_the_minimum_duration(
    tmp_path: Path,
) -> None:
    # Better on the success metric, but 10 % of its answers fail: the error guardrail (half a
    # point) is breached on day 1, before min_days, and the experiment stops.
    exp = record(mode="ab", min_samples=200)
    _, result, obs, _ = look(tmp_path, exp, days=1, n=1500, champion_sd=10, challenger_sd=8,
                             challenger_failures=0.10)  # fmt: skip
    assert obs.requests["challenger"] == 1500 and obs.labelled["challenger"] < 1400
    assert result["verdict"] == "stop" and "guardrail breached: error" in result["reason"]


def test_nothing_is_decided_before_the_minimum_duration(tmp_path: Path) -> None:
    exp = record(mode="ab", min_samples=200)
    _, result, _, _ = look(tmp_path, exp, days=2, n=1500, champion_sd=10, challenger_sd=8)
    assert result["verdict"] == "continue" and "day 2.0 of 7+" in result["reason"]


def test_policy_defaults_are_valid() -> None:
    assert ExperimentPolicy().power == 0.9 and CFG.experiment.metric == "abs_error"


def test_a_start_killed_before_the_endpoint_changed_shows_in_status_and_stop_finishes_it(
    published: tuple[LocalStore, LocalTarget],
) -> None:
    # The process died after recording "starting" and before asking the endpoint to split:
    # the endpoint was never touched, status says so, and stop ends the record.
    store, target = published
    begin_experiment(store, record())
    report = experiment_status(store, target, MODEL)
    assert report["experiment"].state == "starting"
    assert "interrupted while starting" in report["note"]
    assert "mlops experiment stop limit_optimiser" in report["note"]
    ended = stop_experiment.fn(store, target, MODEL, "clean up after a crash")
    assert ended is not None and ended.state == "stopped" and not ended.active
    assert experiment_status(store, target, MODEL)["note"] == ""
    assert stop_experiment.fn(store, target, MODEL, "again") == ended  # idempotent


@pytest.mark.parametrize(
    ("state", "split", "note"),
    [
        ("starting", True, "interrupted while starting: the endpoint splits traffic"),
        ("stopping", True, "interrupted while stopping: the endpoint still splits traffic"),
        ("stopping", False, "interrupted while stopping: the endpoint serves one version"),
        ("running", False, "recorded as running, but the endpoint does not split traffic"),
        ("stopped", True, "the endpoint splits traffic but no experiment is active"),
    ],
)
def test_status_says_where_a_crash_left_the_record_and_the_endpoint(
    published: tuple[LocalStore, LocalTarget], state: str, split: bool, note: str
) -> None:
    # A process killed between the record and the endpoint leaves them disagreeing; status
    # compares the two (the route table here is the router's, written as a start writes it).
    store, target = published
    exp = begin_experiment(store, record())
    if state != "starting":
        save_experiment(store, exp.with_state(state), expected=exp)
    variants = [{"name": "champ", "version": "v1", "port": 1, "weight": 90.0}]
    arms = {"id": exp.id, "mode": "ab", "arms": {"champ": "champion"}}
    target.router.write(MODEL, variants, {"experiment": arms} if split else {})
    report = experiment_status(store, target, MODEL)
    assert report["note"].startswith(note), report["note"]
    assert (report["traffic"]["experiment_id"] == exp.id) is split

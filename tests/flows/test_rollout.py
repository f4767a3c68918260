"""Rollback and cleanup on the embedded store and registry, without an endpoint.

The endpoint side of rollout is tested with the local endpoint (real processes) and with
SageMaker on moto server; here the pointer, the alias and the history are the subject.

One story test: building its world takes three retrains, and each step starts from the state
the previous one left (the rollback step relies on cleanup having deleted v1; the last step
tampers with the store).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import cast

import pytest

from adapters.layout import IntegrityError
from adapters.pointer import promotion_history, read_latest
from adapters.registry import Registry
from adapters.source import seed_source
from adapters.store import Store, store_from_settings
from adapters.versions import list_versions
from cli.status import status_of
from core.config import load_model_configs
from core.settings import Settings, load_settings
from flows.cleanup import cleanup
from flows.retrain import retrain
from flows.rollout import rollback, rollout
from tasks.training import TrainingData, score_champion
from tests.fixtures.home import SMALL_SOURCE, champion, isolated_env, project_configs

MODEL = "limit_optimiser"


@pytest.fixture
def three_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """v1, v2, v3 of the limit optimiser published and promoted in turn; keep_last 1."""
    isolated_env(monkeypatch, tmp_path / "home")
    edits = {"platform.yaml": {"keep_last: 3": "keep_last: 1"}}
    project_configs(monkeypatch, tmp_path / "configs", edits)
    settings = load_settings()
    seed_source(settings.source_url, weeks=8, **SMALL_SOURCE)
    for i in range(3):
        state = retrain(models=[MODEL], force=i > 0, reason=f"run {i + 1}", return_state=True)
        summary = state.result()
        assert summary["models"][0]["status"] == "promoted", summary
    return settings


def test_rollout_cleanup_and_rollback_keep_pointer_alias_and_history_agreeing(
    three_versions: Settings,
) -> None:
    """The steps below, in order, on one world of three promoted versions."""
    settings = three_versions
    rollout_of_a_missing_version_changes_nothing(settings)
    cleanup_dry_run_deletes_nothing_and_apply_deletes_exactly_the_plan(settings)
    rollback_moves_pointer_and_alias_and_keeps_history(settings)
    a_rewritten_champion_is_flagged_and_refused(settings)


def rollout_of_a_missing_version_changes_nothing(settings: Settings) -> None:
    """Leaves the champion at v3."""
    before = promotion_history(store_from_settings(settings), MODEL)
    state = rollout(MODEL, "v9", return_state=True)
    assert state.is_failed()
    assert "v9" in str(state.message)
    assert champion(settings, MODEL) == ("v3", "v3")
    assert promotion_history(store_from_settings(settings), MODEL) == before


def cleanup_dry_run_deletes_nothing_and_apply_deletes_exactly_the_plan(settings: Settings) -> None:
    """Deletes v1 (store and registry); leaves the champion at v3."""
    store = store_from_settings(settings)
    dry = cleanup(models=[MODEL], clean_store=True)
    planned = {(p["kind"], p["name"]) for p in dry["plan"] if p["action"] == "delete"}
    # keep_last 1: v3 is the champion, v2 the rollback target, v1 goes with its MLflow version.
    assert planned == {("store-version", f"{MODEL}/v1"), ("registry-version", f"{MODEL}/1")}
    assert [v["version"] for v in list_versions(store, MODEL)] == ["v1", "v2", "v3"]

    done = cleanup(models=[MODEL], clean_store=True, apply=True)
    assert {(d["kind"], d["name"]) for d in done["done"]} == planned
    assert all(d["outcome"] == "deleted" for d in done["done"])
    assert [v["version"] for v in list_versions(store, MODEL)] == ["v2", "v3"]
    versions = [r["version"] for r in Registry.from_settings(settings).list_versions(MODEL)]
    assert versions == ["2", "3"]
    assert champion(settings, MODEL) == ("v3", "v3")


def rollback_moves_pointer_and_alias_and_keeps_history(settings: Settings) -> None:
    """Rolls back to v2, forward to v3, then fails to reach the deleted v1: ends at v3."""
    assert champion(settings, MODEL) == ("v3", "v3")

    state = rollback(MODEL, return_state=True)
    assert state.is_completed(), state.message
    assert champion(settings, MODEL) == ("v2", "v2")
    history = promotion_history(store_from_settings(settings), MODEL)
    assert [h["version"] for h in history][-2:] == ["v3", "v2"]
    assert "rollback" in history[-1]["reason"] and "from v3 to v2" in history[-1]["reason"]
    assert history[-1]["rolled_back_from"] == "v3"
    # The next rollback goes further back, never to the v3 just rolled back from.
    assert (read_latest(store_from_settings(settings), MODEL) or {})["previous"] == "v1"

    state = rollback(MODEL, to="v3", return_state=True)
    assert state.is_completed(), state.message
    assert champion(settings, MODEL) == ("v3", "v3")
    (row,) = status_of(settings, [MODEL])
    assert row["agree"] and row["latest_version"] == "v3"
    assert "back to v2" in row["rollback"]

    # v1 was cleaned up: rolling back to it fails and moves nothing.
    state = rollback(MODEL, to="v1", return_state=True)
    assert state.is_failed() and "v1" in str(state.message)
    assert champion(settings, MODEL) == ("v3", "v3")
    assert row["rollback"].startswith(f"mlops rollback {MODEL}")


def rewrite_version(store: Store, version: str) -> tuple[str, str]:
    """What a writer of the store does: a new schema.json and a manifest made to match it."""
    prefix = f"models/{MODEL}/{version}"
    old_body = store.get_bytes(f"{prefix}/manifest.json")
    schema = json.loads(store.get_bytes(f"{prefix}/schema.json"))
    schema["example_request"] = schema["example_request"][:1]
    data = json.dumps(schema).encode()
    store.put_bytes(f"{prefix}/schema.json", data)
    manifest = json.loads(old_body)
    manifest["files"]["schema.json"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    body = json.dumps(manifest).encode()
    store.put_bytes(f"{prefix}/manifest.json", body)
    return hashlib.sha256(old_body).hexdigest(), hashlib.sha256(body).hexdigest()


def a_rewritten_champion_is_flagged_and_refused(settings: Settings) -> None:
    """Review finding 1: the champion v3 rewritten in the store with a consistent manifest.

    It used to deploy and serve, and status said everything agreed. Now the hashes recorded at
    promotion (latest.json, history) and publication (MLflow tag) are the truth. Last step: it
    leaves the store tampered.
    """
    store = store_from_settings(settings)
    recorded, rewritten = rewrite_version(store, "v3")

    (row,) = status_of(settings, [MODEL])
    assert row["agree"] is False
    assert f"has sha256 {rewritten}, latest.json recorded {recorded}" in row["problem"]
    assert f"the MLflow champion's tag recorded {recorded}" in row["problem"]

    records = len(promotion_history(store, MODEL))
    state = rollout(MODEL, "v3", return_state=True)
    assert state.is_failed()
    assert f"{MODEL} v3 was changed in the store" in str(state.message)
    assert recorded in str(state.message) and rewritten in str(state.message)
    assert (read_latest(store, MODEL) or {})["manifest_sha256"] == recorded
    assert len(promotion_history(store, MODEL)) == records

    # Re-scoring it as the champion fails (and the retrain with it) instead of gating against
    # it; the check comes before any data is read, so no training data is needed here.
    (cfg,) = load_model_configs(settings.config_dir, [MODEL])
    with pytest.raises(IntegrityError, match=f"{MODEL} v3 was changed in the store"):
        score_champion.fn(store, cfg, cast(TrainingData, None), settings.work_dir)

    # A writer who also rewrites latest.json and the history still meets MLflow's record.
    for key in [f"models/{MODEL}/latest.json", *store.list(f"models/{MODEL}/promotions")]:
        doc = json.loads(store.get_bytes(key))
        if doc.get("version") == "v3":
            doc["manifest_sha256"] = rewritten
            store.put_bytes(key, json.dumps(doc).encode())
    state = rollout(MODEL, "v3", return_state=True)
    assert state.is_failed()
    assert "manifest_sha256 tag) recorded " + recorded in str(state.message)

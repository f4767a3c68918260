"""A champion rewritten in the store, with a consistent new manifest, is refused everywhere.

Review finding 1: the rewrite used to deploy and serve, and ``mlops status`` said the pointer,
alias and endpoint agreed. Now the hash recorded at promotion (``latest.json``, the promotion
history) and at publication (the MLflow version's ``manifest_sha256`` tag) is the truth: status
flags the difference with both hashes; the rollout, the rollback and the champion's re-scoring
fail naming the version. One story on one promoted version: each step tampers a little more.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import cast

import pytest

from adapters.layout import IntegrityError
from adapters.pointer import promotion_history, read_latest
from adapters.source import seed_source
from adapters.store import Store, store_from_settings
from cli.status import status_of
from core.config import load_model_configs
from core.settings import Settings, load_settings
from flows.retrain import retrain
from flows.rollout import rollout
from tasks.training import TrainingData, score_champion
from tests.fixtures.home import SMALL_SOURCE, isolated_env, project_configs

MODEL = "limit_optimiser"


@pytest.fixture
def promoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    isolated_env(monkeypatch, tmp_path / "home")
    project_configs(monkeypatch, tmp_path / "configs")
    settings = load_settings()
    seed_source(settings.source_url, weeks=8, **SMALL_SOURCE)
    summary = retrain(models=[MODEL], reason="first", return_state=True).result()
    assert summary["models"][0]["status"] == "promoted", summary
    return settings


def rewrite_champion(store: Store) -> tuple[str, str]:
    """Rewrite v1's schema.json (the smoke test's request) and make its manifest match."""
    prefix = f"models/{MODEL}/v1"
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


def test_a_rewritten_champion_is_flagged_and_refused(promoted: Settings) -> None:
    settings = promoted
    store = store_from_settings(settings)
    recorded, rewritten = rewrite_champion(store)

    # Status: red, with both hashes.
    (row,) = status_of(settings, [MODEL])
    assert row["agree"] is False
    assert f"has sha256 {rewritten}, latest.json recorded {recorded}" in row["problem"]
    assert f"the MLflow champion's tag recorded {recorded}" in row["problem"]

    # Redeploying (or rolling back to) it fails naming the version and both hashes.
    state = rollout(MODEL, "v1", return_state=True)
    assert state.is_failed()
    message = str(state.message)
    assert "limit_optimiser v1 was changed in the store" in message
    assert recorded in message and rewritten in message
    assert read_latest(store, MODEL)["manifest_sha256"] == recorded  # type: ignore[index]
    assert len(promotion_history(store, MODEL)) == 1

    # Re-scoring it as the champion fails (the run with it) instead of gating against it; the
    # check comes before any data is touched, so no training data is needed here.
    (cfg,) = load_model_configs(settings.config_dir, [MODEL])
    with pytest.raises(IntegrityError, match="limit_optimiser v1 was changed in the store"):
        score_champion.fn(store, cfg, cast(TrainingData, None), settings.work_dir)

    # A writer who also rewrites latest.json and the history still meets MLflow's record.
    for key in [f"models/{MODEL}/latest.json", *store.list(f"models/{MODEL}/promotions")]:
        doc = json.loads(store.get_bytes(key))
        doc["manifest_sha256"] = rewritten
        store.put_bytes(key, json.dumps(doc).encode())
    state = rollout(MODEL, "v1", return_state=True)
    assert state.is_failed()
    assert f"but MLflow ({MODEL} version 1's manifest_sha256 tag) recorded {recorded}" in str(
        state.message
    )

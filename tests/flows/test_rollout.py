"""Rollback and cleanup on the embedded store and registry, without an endpoint.

The endpoint side of rollout is tested with the local endpoint (real processes) and with
SageMaker on moto server; here the pointer, the alias and the history are the subject.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from adapters.pointer import promotion_history, read_latest
from adapters.registry import CHAMPION, Registry
from adapters.source import seed_source
from adapters.store import store_from_settings
from adapters.versions import list_versions
from cli.status import status_of
from core.settings import PROJECT_ROOT, load_settings
from flows.cleanup import cleanup
from flows.retrain import retrain
from flows.rollout import rollback, rollout
from tests.conftest import _LEAKY

MODEL = "limit_optimiser"


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """v1, v2, v3 of the limit optimiser published and promoted in turn; keep_last 1.

    Shared by the tests of this module (they run in file order): building it takes three
    retrains, and each test leaves the champion at v3 or says what it changed.
    """
    with pytest.MonkeyPatch.context() as mp:
        tmp = tmp_path_factory.mktemp("rollout")
        for name in _LEAKY:
            mp.delenv(name, raising=False)
        mp.setenv("MLOPS_HOME", str(tmp / "home"))
        mp.setenv("MLOPS_ENDPOINT_TARGET", "none")
        yield _build(tmp, mp)


def _build(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    configs = tmp / "configs"
    shutil.copytree(PROJECT_ROOT / "configs", configs)
    platform = (configs / "platform.yaml").read_text().replace("keep_last: 3", "keep_last: 1")
    (configs / "platform.yaml").write_text(platform)
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(configs))
    settings = load_settings()
    seed_source(
        settings.source_url, weeks=8, n_clients=40, n_services=2, seed=7, today=date(2026, 3, 2)
    )
    for i in range(3):
        state = retrain(models=[MODEL], force=i > 0, reason=f"run {i + 1}", return_state=True)
        summary = state.result()
        assert summary["models"][0]["status"] == "promoted", summary
    return settings


def champion(settings: Any) -> tuple[str | None, str | None]:
    latest = read_latest(store_from_settings(settings), MODEL) or {}
    alias = Registry.from_settings(settings).get_alias(MODEL, CHAMPION) or {}
    return latest.get("version"), alias.get("tags", {}).get("store_version")


def test_rollout_of_a_missing_version_changes_nothing(three_versions: Any) -> None:
    settings = three_versions
    before = promotion_history(store_from_settings(settings), MODEL)
    state = rollout(MODEL, "v9", return_state=True)
    assert state.is_failed()
    assert "v9" in str(state.message)
    assert champion(settings) == ("v3", "v3")
    assert promotion_history(store_from_settings(settings), MODEL) == before


def test_cleanup_dry_run_deletes_nothing_and_apply_deletes_exactly_the_plan(
    three_versions: Any,
) -> None:
    settings = three_versions
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
    assert champion(settings) == ("v3", "v3")


def test_rollback_moves_pointer_and_alias_and_keeps_history(three_versions: Any) -> None:
    settings = three_versions
    assert champion(settings) == ("v3", "v3")

    state = rollback(MODEL, return_state=True)
    assert state.is_completed(), state.message
    assert champion(settings) == ("v2", "v2")
    history = promotion_history(store_from_settings(settings), MODEL)
    assert [h["version"] for h in history][-2:] == ["v3", "v2"]
    assert "rollback" in history[-1]["reason"] and "from v3 to v2" in history[-1]["reason"]
    assert history[-1]["rolled_back_from"] == "v3"
    # The next rollback goes further back, never to the v3 just rolled back from.
    assert (read_latest(store_from_settings(settings), MODEL) or {})["previous"] == "v1"

    state = rollback(MODEL, to="v3", return_state=True)
    assert state.is_completed(), state.message
    assert champion(settings) == ("v3", "v3")
    (row,) = status_of(settings, [MODEL])
    assert row["agree"] and row["latest_version"] == "v3"
    assert "back to v2" in row["rollback"]

    # v1 was cleaned up: rolling back to it fails and moves nothing.
    state = rollback(MODEL, to="v1", return_state=True)
    assert state.is_failed() and "v1" in str(state.message)
    assert champion(settings) == ("v3", "v3")
    assert row["rollback"].startswith(f"mlops rollback {MODEL}")

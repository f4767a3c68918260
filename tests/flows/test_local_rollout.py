"""The retrain, rollout and rollback flows on the local endpoint (real serving processes).

What ``make run`` does on a laptop, one model, as one story test like a week of operations: the
first retrain ends with v1 serving; a forced retrain swaps to v2 while requests flow; a rollout
whose model cannot load leaves v2 serving with pointer, alias and history untouched; a rollback
puts v1 back everywhere; ``mlops endpoint stop`` ends every process and ``status`` says so. Each
step starts from the state the previous one left. Every process started here is stopped at the
end, even when a step fails.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from adapters.endpoints.local import LocalTarget
from adapters.endpoints.local.processes import free_port
from adapters.pointer import promotion_history, read_latest
from adapters.registry import CHAMPION, Registry
from adapters.source import seed_source
from adapters.store import store_from_settings
from cli.status import status_of
from core.config import load_platform_config
from core.settings import Settings, load_settings
from flows.retrain import retrain
from flows.rollout import rollback, rollout
from tests.fixtures.home import SMALL_SOURCE, isolated_env, project_configs
from tests.fixtures.serving import our_processes, post_until

pytestmark = pytest.mark.integration

MODEL = "limit_optimiser"


@dataclass
class Local:
    settings: Settings
    target: LocalTarget
    home: Path


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Local]:
    home = isolated_env(monkeypatch, tmp_path / "home", endpoint_target="local")
    monkeypatch.setenv("MLOPS_ENDPOINT_PORT", str(free_port()))
    configs = project_configs(monkeypatch, tmp_path / "configs")
    settings = load_settings()
    seed_source(settings.source_url, weeks=8, **SMALL_SOURCE)
    target = LocalTarget.from_settings(settings, load_platform_config(configs))
    try:
        yield Local(settings, target, home)
    finally:
        target.stop()
        for pid in our_processes(home):  # nothing may outlive the tests
            os.kill(pid, signal.SIGKILL)


def test_a_week_on_the_local_endpoint(local: Local) -> None:
    """The steps below, in order, on one endpoint and one home."""
    first_retrain_ends_serving_v1(local)
    forced_retrain_swaps_to_v2_without_a_failed_request(local)
    a_rollout_that_cannot_load_leaves_v2_serving_and_moves_nothing(local)
    rollback_serves_v1_again_with_pointer_and_alias(local)
    endpoint_stop_ends_every_process_and_status_says_so(local)


def invoke(local: Local) -> httpx.Response:
    example = _example(local)
    with httpx.Client(trust_env=False, timeout=30) as client:
        return client.post(local.target.address(MODEL), json={"instances": example})


def _example(local: Local) -> list[dict[str, Any]]:
    import json

    store = store_from_settings(local.settings)
    version = (read_latest(store, MODEL) or {})["version"]
    schema = json.loads(store.get_bytes(f"models/{MODEL}/{version}/schema.json"))
    return list(schema["example_request"])


def everywhere(local: Local) -> tuple[Any, ...]:
    """(latest.json, champion alias's store version, endpoint version, agree)."""
    (row,) = status_of(local.settings, [MODEL])
    return (
        row["latest_version"],
        row["champion_store_version"],
        row.get("endpoint_version"),
        row["agree"],
    )


def first_retrain_ends_serving_v1(local: Local) -> None:
    """Nothing before; leaves v1 serving everywhere."""
    state = retrain(models=[MODEL], reason="first", return_state=True)
    summary = state.result()
    (line,) = summary["models"]
    assert line["status"] == "promoted", line
    assert "serves at http://127.0.0.1" in line["note"]

    assert everywhere(local) == ("v1", "v1", "v1", True)
    # The rollout's smoke test went through the router: status shows that minute's traffic.
    (row,) = status_of(local.settings, [MODEL])
    health = row["health"]
    assert health["source"] == "local /metrics" and health["requests_per_second"] > 0, health
    assert health["error_rate"] == 0.0 and health["p99_ms"] > 0
    answer = invoke(local)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == "v1"
    assert len(answer.json()["predictions"]) == len(_example(local))


def forced_retrain_swaps_to_v2_without_a_failed_request(local: Local) -> None:
    """Leaves v2 serving everywhere."""
    stop = threading.Event()
    log: list[tuple[str | None, float]] = []
    failures: list[str] = []
    url = local.target.address(MODEL)

    thread = threading.Thread(
        target=post_until, args=(url, _example(local), stop, log, failures), daemon=True
    )
    thread.start()
    try:
        state = retrain(models=[MODEL], force=True, reason="second", return_state=True)
    finally:
        stop.set()
        thread.join(timeout=30)

    assert state.result()["models"][0]["status"] == "promoted"
    assert failures == []
    versions = [version for version, _ in log]
    assert versions and set(versions) <= {"v1", "v2"}
    assert versions[-1] == "v2"
    assert everywhere(local) == ("v2", "v2", "v2", True)


def a_rollout_that_cannot_load_leaves_v2_serving_and_moves_nothing(local: Local) -> None:
    """Leaves v2 serving, one router and one variant running."""
    store = store_from_settings(local.settings)
    history = promotion_history(store, MODEL)
    tarball = Path(local.settings.store) / "models" / MODEL / "v1" / "model.tar.gz"
    saved = tarball.read_bytes()
    tarball.write_bytes(b"not a tarball")  # what a corrupted upload looks like
    try:
        state = rollout(MODEL, "v1", reason="bad", return_state=True)
    finally:
        tarball.write_bytes(saved)

    assert state.is_failed()
    assert "pointer unchanged" in str(state.message)
    assert everywhere(local) == ("v2", "v2", "v2", True)
    assert promotion_history(store, MODEL) == history
    assert invoke(local).headers["x-model-version"] == "v2"
    # Nothing of the failed attempt is left running: one router and one variant.
    assert len(our_processes(local.home)) == 2


def rollback_serves_v1_again_with_pointer_and_alias(local: Local) -> None:
    """Leaves v1 serving everywhere."""
    state = rollback(MODEL, return_state=True)
    assert state.is_completed(), state.message
    assert everywhere(local) == ("v1", "v1", "v1", True)
    assert invoke(local).headers["x-model-version"] == "v1"
    alias = Registry.from_settings(local.settings).get_alias(MODEL, CHAMPION)
    assert alias is not None and alias["tags"]["store_version"] == "v1"
    history = promotion_history(store_from_settings(local.settings), MODEL)
    assert [h["version"] for h in history] == ["v1", "v2", "v1"]


def endpoint_stop_ends_every_process_and_status_says_so(local: Local) -> None:
    """Leaves nothing running; v1 is still the champion."""
    from cli import app

    result = CliRunner().invoke(app, ["endpoint", "stop"])
    assert result.exit_code == 0, result.output
    assert our_processes(local.home) == {}

    (row,) = status_of(local.settings, [MODEL])
    assert row["latest_version"] == "v1"
    assert not row["agree"]
    assert "no endpoint serves it" in row["problem"]

"""The embedded Prefect API the commands start before importing their flows (cli/prefect_api.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import prefect_api
from core.settings import PROJECT_ROOT


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without a Prefect server, with a Prefect home of the test's own."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return env | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        **extra,
    }


def test_a_commands_flow_runs_on_the_api_it_started_and_the_server_stops_with_it(
    tmp_path: Path,
) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.embedded_api"],
        cwd=PROJECT_ROOT,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])
    # The flow ran on the server started before Prefect was imported, and nothing else.
    assert found["client_api"].rstrip("/") == found["api"] == found["env_inside"], found
    assert found["state"] == "RUNNING"
    assert "Starting temporary server" not in child.stderr
    # Prefect's own launcher, and the server package it imports, were never needed here.
    assert found["server_package_imported"] is False
    # The variable is the block's only; the server ended with the command's process.
    assert found["env_after"] is None
    with pytest.raises(ProcessLookupError):
        os.kill(found["server_pid"], 0)


def test_a_server_that_cannot_start_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in child_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # A database in a directory that does not exist: the server exits at its start.
    monkeypatch.setenv(
        "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tmp_path}/none/prefect.db"
    )
    impatient = prefect_api.EmbeddedAPI()
    with pytest.raises(prefect_api.PrefectAPIError, match="did not answer within 0 s"):
        impatient.wait(timeout=0.2)
    assert impatient.process.poll() is not None  # a server that timed out is stopped
    broken = prefect_api.EmbeddedAPI()
    try:
        with pytest.raises(prefect_api.PrefectAPIError, match="exited with code"):
            broken.wait(timeout=120)
    finally:
        broken.stop()


def test_a_configured_server_is_used_and_nothing_is_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setattr(prefect_api, "_API", None)
    assert prefect_api.start() is None


def test_a_server_named_in_prefects_settings_wins_over_the_embedded_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile or prefect.toml names a server: the command's flows go there, as in Prefect."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cli.common import embedded_prefect

    for key, value in child_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(prefect_api, "_API", None)
    monkeypatch.setattr(prefect_api, "_DECLINED", False)
    started = prefect_api.start()  # as a command does, before it knows the settings
    assert started is not None
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}),
        embedded_prefect(),
    ):
        assert PREFECT_API_URL.value() == "http://127.0.0.1:9/api"
        assert "PREFECT_API_URL" not in os.environ
    assert started.process.poll() is not None  # the embedded server was stopped at once
    assert prefect_api.start() is None  # and is not started again by this process

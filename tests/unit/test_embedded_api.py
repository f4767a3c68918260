"""The embedded Prefect API the commands start before importing their flows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapters import prefect_server
from tests.fixtures.prefect import run_without_server, without_server


def no_server_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment as a command's with no Prefect server (the test's own)."""
    for key, value in without_server(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)


def test_a_commands_flow_runs_on_the_api_it_started_and_the_server_stops_with_it(
    tmp_path: Path,
) -> None:
    found, stderr = run_without_server(tmp_path, "tests.fixtures.embedded_api")
    # The flow ran on the server started before Prefect was imported, and nothing else; the
    # process's environment and every thread's settings name it.
    assert found["client_api"].rstrip("/") == found["api"] == found["env"], found
    assert found["thread_api"] == found["api"], found
    assert found["state"] == "RUNNING"
    assert "Starting temporary server" not in stderr
    # Prefect's own launcher, and the server package it imports, were never needed here.
    assert found["server_package_imported"] is False
    # The server ended with the command's process.
    with pytest.raises(ProcessLookupError):
        os.kill(found["server_pid"], 0)


def test_a_server_that_cannot_start_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_server_here(tmp_path, monkeypatch)
    # A database in a directory that does not exist: the server exits at its start.
    monkeypatch.setenv(
        "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tmp_path}/none/prefect.db"
    )
    impatient = prefect_server.EmbeddedAPI()
    with pytest.raises(prefect_server.PrefectAPIError, match="did not answer within 0 s"):
        impatient.wait(timeout=0.2)
    assert impatient.process.poll() is not None  # a server that timed out is stopped
    broken = prefect_server.EmbeddedAPI()
    try:
        with pytest.raises(prefect_server.PrefectAPIError, match="exited with code"):
            broken.wait(timeout=120)
    finally:
        broken.stop()


def test_a_configured_server_is_used_and_nothing_is_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setattr(prefect_server, "_API", None)
    assert prefect_server.start() is None


def test_a_server_named_in_prefects_settings_wins_over_the_embedded_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile or prefect.toml names a server: the command's flows go there, as in Prefect."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cli.common import embedded_prefect

    no_server_here(tmp_path, monkeypatch)
    monkeypatch.setattr(prefect_server, "_API", None)
    monkeypatch.setattr(prefect_server, "_DECLINED", False)
    launched: list[prefect_server.EmbeddedAPI] = []

    class Recorded(prefect_server.EmbeddedAPI):
        def __init__(self) -> None:
            super().__init__()
            launched.append(self)

    monkeypatch.setattr(prefect_server, "EmbeddedAPI", Recorded)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert prefect_server.start() is None
        with embedded_prefect():
            assert PREFECT_API_URL.value() == "http://127.0.0.1:9/api"
            assert "PREFECT_API_URL" not in os.environ
    (server,) = launched  # launched first (to overlap the imports), then stopped at once
    assert server.process.poll() is not None
    assert prefect_server.start() is None  # and not launched again by this process

"""The embedded Prefect API the commands start before importing their flows."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from adapters import prefect_server
from core.settings import PROJECT_ROOT
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


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie left for a non-reaping init counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _await(condition: Callable[[], bool], what: str, limit: float) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {limit:.0f} s"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_command_stopped_by_a_signal_stops_its_embedded_api(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Issue 21: ``kill <mlops pid>`` ended the command and left its Prefect API running."""
    mlops = Path(sys.executable).with_name("mlops")  # the installed entry point
    command = [str(mlops)] if mlops.exists() else [sys.executable, "-c", "import cli; cli.main()"]
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [*command, "monitor", "--no-trigger"],
            cwd=PROJECT_ROOT,
            env=without_server(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    servers: list[psutil.Process] = []

    def launched() -> bool:
        assert child.poll() is None, log.read_text()[-3000:]
        servers.extend(
            p
            for p in psutil.Process(child.pid).children()
            if "prefect.server.api.server:create_app" in " ".join(p.cmdline())
        )
        return bool(servers)

    try:
        _await(launched, "the command launched its embedded API", 180)
        child.send_signal(signum)  # while the command imports its flows or runs them
        assert child.wait(timeout=120) == -signum, log.read_text()[-3000:]  # ended by it
        _await(lambda: not _running(servers[0].pid), "the API's process ended", 120)
    finally:  # nothing outlives the test, whatever failed
        for server in servers:
            with contextlib.suppress(psutil.NoSuchProcess):
                server.kill()
        if child.poll() is None:
            child.kill()
        child.wait(timeout=60)

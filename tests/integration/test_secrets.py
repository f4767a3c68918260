"""A planted credential appears in no output line and no file the run writes.

Two runs: a retrain that fails at an unreachable MLflow (whose errors quote the URL), and a
full successful retrain, rollout to the local endpoint and ``mlops cleanup`` from a PostgreSQL
source whose URL holds the password, where the serving processes' environments are read too.

Review finding 8: with ``MLFLOW_TRACKING_URI=http://mlflow:s3cret@127.0.0.1:1`` a retrain printed
the password on 9 lines and stored it in the Prefect database. Here the command runs as a user
runs it (the ``mlops retrain`` entry point, recording into the session's Prefect API),
with a recognisable fake credential in every setting of this run that can hold one, and an
unreachable tracking server so that MLflow's errors (which quote the URL) happen.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from adapters.source import seed_source
from cli import main
from tests.fixtures.home import SMALL_SOURCE, isolated_env

pytestmark = pytest.mark.integration

PLANTED = "PLANTEDsecret7f3a"


def _files_holding(root: Path, secret: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and secret in path.read_bytes():
            found.append(str(path.relative_to(root)))
    return found


def test_a_planted_credential_reaches_no_output_and_no_file(
    tmp_path: Path,
    prefect_api: None,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from prefect.settings import get_current_settings

    # The session's Prefect API (its own server costs 10-30 s to start here); its database is
    # checked below like the files under MLOPS_HOME.
    prefect = get_current_settings()
    database = str(prefect.server.database.connection_url.get_secret_value())
    home = isolated_env(monkeypatch, tmp_path / "home")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # restored (absent) after the test
    planted = {
        "PREFECT_API_URL": str(prefect.api.url),
        # Every credential-bearing setting of an embedded run, each with the planted secret.
        "MLFLOW_TRACKING_URI": f"http://mlflow:{PLANTED}@127.0.0.1:1",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
        "AWS_SECRET_ACCESS_KEY": f"{PLANTED}-aws",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    seed_source(f"sqlite:///{home / 'source.db'}", weeks=3, **SMALL_SOURCE)
    capfd.readouterr()

    # The command as a user runs it (its entry point, its own output), in this process.
    monkeypatch.setattr(sys, "argv", ["mlops", "retrain", "-m", "limit_optimiser"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capfd.readouterr()
    output = captured.out + captured.err
    # The run failed where MLflow is unreachable, and said so with the URL masked.
    assert exit_info.value.code not in (0, None), output
    assert "127.0.0.1:1" in output, output
    leaked = [line for line in output.splitlines() if PLANTED in line]
    assert not leaked, leaked
    # Nothing under MLOPS_HOME holds it (MLflow, the store, snapshots), nor the Prefect database
    # that recorded the run's logs and state messages.
    assert not _files_holding(home, PLANTED.encode())
    assert database.startswith("sqlite+aiosqlite:///"), database
    db_file = Path(database.removeprefix("sqlite+aiosqlite:///"))
    assert _files_holding(db_file.parent, b"retrain-limit_optimiser")  # the run is recorded
    assert not _files_holding(db_file.parent, PLANTED.encode())


def test_a_full_retrain_rollout_and_cleanup_leak_no_planted_credential(
    tmp_path: Path,
    prefect_api: None,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Retrain (PostgreSQL source), rollout (local endpoint) and cleanup, all successful.

    The MLflow tracking URI is the embedded SQLite file, which cannot hold a password: the
    secret goes in ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` instead, where a user of a tracking
    server keeps it (a real ``mlflow server`` would add seconds of start-up and test nothing
    more of this project: its code never sees the URL's password once it has moved there).
    """
    import psycopg
    import sqlalchemy as sa
    from prefect.settings import get_current_settings

    from adapters.endpoints.local import LocalTarget
    from adapters.endpoints.local.processes import free_port
    from core.config import load_platform_config
    from core.settings import load_settings
    from tests.fixtures.home import champion, project_configs
    from tests.fixtures.serving import our_processes

    prefect = get_current_settings()
    database = str(prefect.server.database.connection_url.get_secret_value())
    home = isolated_env(monkeypatch, tmp_path / "home", endpoint_target="local")
    configs = project_configs(monkeypatch, tmp_path / "configs")
    # A role whose password is the planted secret, owning a database of its own.
    role, dbname = f"planted_{uuid.uuid4().hex[:8]}", f"planted_{uuid.uuid4().hex[:8]}"
    admin = sa.make_url(postgres_url)
    with psycopg.connect(
        host=admin.host, port=admin.port, user=admin.username, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PLANTED}-pg'")
        conn.execute(f"CREATE DATABASE {dbname} OWNER {role}")
    source = admin.set(username=role, password=f"{PLANTED}-pg", database=dbname)
    planted = {
        "PREFECT_API_URL": str(prefect.api.url),
        "MLOPS_ENDPOINT_PORT": str(free_port()),
        "MLOPS_DATABASE_URL": source.render_as_string(hide_password=False),
        "MLFLOW_TRACKING_USERNAME": "mlflow",
        "MLFLOW_TRACKING_PASSWORD": f"{PLANTED}-mlflow",
        "AWS_ACCESS_KEY_ID": "AKIAPLANTED",
        "AWS_SECRET_ACCESS_KEY": f"{PLANTED}-aws",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    seed_source(planted["MLOPS_DATABASE_URL"], weeks=3, **SMALL_SOURCE)
    settings = load_settings()
    target = LocalTarget.from_settings(settings, load_platform_config(configs))
    capfd.readouterr()

    def run(*argv: str) -> str:
        monkeypatch.setattr(sys, "argv", ["mlops", *argv])
        try:
            main()
            code: object = 0
        except SystemExit as exit_info:
            code = exit_info.code
        captured = capfd.readouterr()
        output = captured.out + captured.err
        assert code in (0, None), output
        return output

    try:
        output = run("retrain", "-m", "limit_optimiser")
        output += run("cleanup")
        assert champion(settings, "limit_optimiser") == ("v1", "v1"), output
        assert "serves" in output and "would be deleted" in output, output
        serving = our_processes(home)
        assert len(serving) >= 2, serving  # the router and the variant
        environ = {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in serving}
    finally:
        target.stop()
        for pid in our_processes(home):  # nothing may outlive the test
            os.kill(pid, signal.SIGKILL)

    leaked = [line for line in output.splitlines() if PLANTED in line]
    assert not leaked, leaked
    assert [pid for pid, env in environ.items() if PLANTED.encode() in env] == []
    # MLOPS_HOME holds the store (artifacts, snapshot manifests), MLflow's database and
    # artifacts, the endpoint's state and logs; the Prefect database holds logs, states and
    # artifacts of every flow and task run.
    assert (home / "mlflow.db").is_file()
    assert not _files_holding(home, PLANTED.encode())
    db_file = Path(database.removeprefix("sqlite+aiosqlite:///"))
    assert not _files_holding(db_file.parent, PLANTED.encode())

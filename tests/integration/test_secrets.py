"""A planted credential appears in no output line and no file the run writes.

Review finding 8: with ``MLFLOW_TRACKING_URI=http://mlflow:s3cret@127.0.0.1:1`` a retrain printed
the password on 9 lines and stored it in the Prefect database. Here the command runs as a user
runs it (the ``mlops retrain`` entry point, recording into the session's Prefect API),
with a recognisable fake credential in every setting of this run that can hold one, and an
unreachable tracking server so that MLflow's errors (which quote the URL) happen.
"""

from __future__ import annotations

import sys
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

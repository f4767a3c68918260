"""Config and settings mistakes fail loudly; credentials are masked wherever text may quote them.

Review findings 6 (no config directory meant "no models"), 7 (a misspelt gate metric rejected
every challenger without naming it), 8 and 12 (passwords in the tracking URI and in query
strings), 13 (SQL identifiers from config), 15 (a misspelt ``MLOPS_*`` variable fell back).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adapters.source.schema import mask_url as mask_database_url
from core.config import ConfigError, load_model_configs
from core.gate import decide
from core.secrets import mask_url, scrub, split_userinfo
from core.settings import PROJECT_ROOT, SettingsError, check_environment, load_settings
from tasks.report import outcome

SECRET = "s3cretPW"


def configs_with(tmp_path: Path, model: str, edit: dict[str, str]) -> Path:
    """A copy of ``configs/`` with one model file's text edited."""
    dest = tmp_path / "configs"
    (dest / "models").mkdir(parents=True)
    src = PROJECT_ROOT / "configs" / "models" / f"{model}.yaml"
    text = src.read_text()
    for old, new in edit.items():
        assert old in text
        text = text.replace(old, new)
    (dest / "models" / f"{model}.yaml").write_text(text)
    return dest


# --- 6. no models is an error, not an empty run ----------------------------------------------


def test_a_missing_or_empty_config_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"configs/models does not exist.*MLOPS_CONFIG_DIR"):
        load_model_configs(tmp_path / "configs")
    (tmp_path / "configs" / "models").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"holds no \*\.yaml files"):
        load_model_configs(tmp_path / "configs")


def test_the_cli_stops_on_a_wrong_config_directory_before_anything_runs(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLOPS_", "MLFLOW_", "PREFECT_", "AWS_"))
    }
    env |= {"MLOPS_HOME": str(tmp_path / "home"), "MLOPS_CONFIG_DIR": str(tmp_path / "nope")}
    env["MLOPS_ENDPOINT_TARGET"] = "none"
    code = "import sys; sys.argv = ['mlops', 'cleanup', '--all']; from cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "configuration error" in done.stdout and "nope/models does not exist" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "home" / "prefect").exists()  # no flow ran


# --- 7. gate metrics are checked against the family -------------------------------------------


def test_a_misspelt_gate_metric_is_refused_at_load_naming_it(tmp_path: Path) -> None:
    dest = configs_with(tmp_path, "traffic_forecaster", {"relative_mae:": "relative_maex:"})
    with pytest.raises(ConfigError) as err:
        load_model_configs(dest)
    message = str(err.value)
    assert "traffic_forecaster.yaml: gate.metrics: unknown metric(s) relative_maex" in message
    assert "did you mean relative_mae?" in message


def test_a_rejected_model_shows_the_gate_reasons_before_the_champion_note() -> None:
    (cfg,) = load_model_configs(PROJECT_ROOT / "configs", ["limit_optimiser"])
    decision = decide({"mape": 0.5, "r2": 0.9}, {"mape": 0.1, "r2": 0.9}, cfg.gate)
    row = outcome("limit_optimiser", "rejected", "champion v1 re-scored", decision=decision)
    assert row.note.startswith("mape=0.5000 must be at most")
    assert row.note.endswith("champion v1 re-scored")


def test_a_gate_metric_the_challenger_lacks_is_named() -> None:
    (cfg,) = load_model_configs(PROJECT_ROOT / "configs", ["limit_optimiser"])
    decision = decide({"r2": 0.9}, None, cfg.gate)
    assert not decision.promote
    assert any(r.startswith("mape:") for r in decision.reasons), decision.reasons


# --- 13. SQL identifiers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "why"),
    [
        ("(SELECT group_concat(name) FROM sqlite_master) AS note", "not a plain SQL identifier"),
        ("order", "reserved word"),
        ("Tier", "not a plain SQL identifier"),
    ],
)
def test_a_column_name_that_is_not_a_plain_identifier_is_refused(
    tmp_path: Path, column: str, why: str
) -> None:
    dest = configs_with(
        tmp_path, "limit_optimiser", {"    tier: string": f"    {column!r}: string"}
    )
    with pytest.raises(ConfigError, match=why):
        load_model_configs(dest)


# --- 15. unknown settings ---------------------------------------------------------------------


def test_a_misspelt_setting_is_an_error_naming_the_closest_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLOPS_DATABSE_URL", "postgresql://etl@db/api")
    with pytest.raises(SettingsError, match=r"MLOPS_DATABSE_URL \(did you mean MLOPS_DATABASE_URL"):
        load_settings()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "example.com"])
def test_the_local_endpoint_binds_loopback_only(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("MLOPS_ENDPOINT_HOST", host)
    with pytest.raises(ValueError, match="loopback address only"):
        load_settings()
    monkeypatch.setenv("MLOPS_ENDPOINT_HOST", "127.0.0.2")
    assert load_settings().endpoint_host == "127.0.0.2"


def test_serving_variables_and_known_settings_pass() -> None:
    check_environment(
        {
            "MLOPS_DATABASE_URL": "sqlite://",
            "MLOPS_MLFLOW_TRACKING_URI": "sqlite://",
            "MLOPS_MODEL_DIR": "/opt/ml/model",
            "MLOPS_SERVING_PORT": "8080",
            "MLOPS_MAX_BODY_BYTES": "6291456",
            "PATH": "/bin",
        }
    )


# --- 8, 12. credentials in URLs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://mlflow:s3cretPW@127.0.0.1:1", "http://mlflow:***@127.0.0.1:1"),
        (
            "postgresql+psycopg://etl@db:5432/api?sslmode=require&password=s3cretPW",
            "postgresql+psycopg://etl@db:5432/api?sslmode=require&password=***",
        ),
        ("https://hooks.example/x?token=s3cretPW&a=1", "https://hooks.example/x?token=***&a=1"),
        ("https://example/path?a=1", "https://example/path?a=1"),
    ],
)
def test_mask_url_hides_userinfo_and_query_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert SECRET not in mask_database_url(url)


def test_scrub_masks_urls_inside_text() -> None:
    text = f"API request to http://mlflow:{SECRET}@127.0.0.1:1/api failed ('x?password={SECRET}')"
    assert SECRET not in scrub(text)
    assert "http://mlflow:***@127.0.0.1:1/api" in scrub(text)


# Issue 21: unencoded passwords with # ? / (the URL parser ended the userinfo there), parts of
# passwords after ; or , in text, Authorization headers, tokens in paths and user names.
SLACK = "hBq8x2LmP0wZ7kRt5YvN3cJd"
TELEGRAM = "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
GITHUB = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://etl:s3c#retPW@db:5432/api", "postgresql://etl:***@db:5432/api"),
        (
            "postgresql://etl:s3c?retPW@db/api?sslmode=require",
            "postgresql://etl:***@db/api?sslmode=require",
        ),
        ("postgresql+psycopg://etl:s3c/retPW@db/api", "postgresql+psycopg://etl:***@db/api"),
        ("mysql://etl:s3c@r/e#tPW@db/api", "mysql://etl:***@db/api"),
        (
            f"https://hooks.slack.com/services/T00000000/B00000000/{SLACK}",
            "https://hooks.slack.com/services/T00000000/B00000000/***",
        ),
        (
            f"https://api.telegram.org/bot123456789:{TELEGRAM}/sendMessage",
            "https://api.telegram.org/bot123456789:***/sendMessage",
        ),
        (f"https://{GITHUB}@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
        (
            f"https://{GITHUB}:x-oauth-basic@github.com/org/repo.git",
            "https://***:***@github.com/org/repo.git",
        ),
    ],
    ids=[
        "hash",
        "question-mark",
        "slash",
        "at-and-hash",
        "path-token",
        "path-token-after-colon",
        "user-token",
        "user-token-and-password",
    ],
)
def test_unencoded_passwords_and_tokens_in_paths_and_user_names_are_masked(
    url: str, masked: str
) -> None:
    assert mask_url(url) == masked
    assert (
        scrub(f"could not connect to {url}: timeout") == f"could not connect to {masked}: timeout"
    )
    for part in ("s3c", "retPW", SLACK, TELEGRAM, GITHUB):
        assert part not in mask_database_url(url)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "connect to postgresql://etl:s3c;retPW@db/api failed",
            "connect to postgresql://etl:***@db/api failed",
        ),
        (
            "connect to postgresql://etl:s3c,retPW@db/api, retrying",
            "connect to postgresql://etl:***@db/api, retrying",
        ),
        ("dsn host=db password=s3c;retPW user=etl", "dsn host=db password=*** user=etl"),
        ("Server=db;Password=s3c,retPW", "Server=db;Password=***"),
        (
            "options {'password': 's3c; retPW', 'user': 'etl'}",
            "options {'password': '***', 'user': 'etl'}",
        ),
        (
            "-H 'Authorization: Bearer s3c.retPW-x_y' was refused",
            "-H 'Authorization: Bearer ***' was refused",
        ),
        (
            "headers={'Authorization': 'Basic czNjcmV0UFc='}",
            "headers={'Authorization': 'Basic ***'}",
        ),
        ("authorization=s3cretPW", "authorization=***"),
        ("sent Bearer s3c.retPW-x_y upstream", "sent Bearer *** upstream"),
    ],
    ids=[
        "semicolon-in-url",
        "comma-in-url",
        "semicolon-in-pair",
        "comma-in-pair",
        "quoted-pair",
        "bearer-header",
        "basic-header",
        "bare-header",
        "bare-bearer",
    ],
)
def test_scrub_masks_whole_passwords_and_authorization_headers_in_text(
    text: str, masked: str
) -> None:
    assert scrub(text) == masked
    assert "retPW" not in scrub(text) and "czNjcmV0UFc" not in scrub(text)


def test_ids_hashes_and_ordinary_urls_stay_readable() -> None:
    text = (
        "s3://bucket/snapshots/limit_optimiser/20260101T000000Z-abcdef12/part-0.parquet "
        "runs:/0123456789abcdef0123456789abcdef/model https://blog.example/@author "
        "postgresql://etl@db:5432/api file:///tmp/test_Authorization_Bearer0/x"
    )
    assert scrub(text) == text
    assert split_userinfo("http://mlflow:pa#ss@h:1/x") == ("http://h:1/x", "mlflow", "pa#ss")


def test_tracking_credentials_move_to_mlflow_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://mlflow:{SECRET}@127.0.0.1:1")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    settings = load_settings()
    assert settings.tracking_uri == "http://127.0.0.1:1"
    assert SECRET not in repr(settings) and SECRET not in os.environ["MLFLOW_TRACKING_URI"]
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "mlflow"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert split_userinfo("http://a%40b:p%3Aw@h/x") == ("http://h/x", "a@b", "p:w")


def test_the_shipped_configs_still_load() -> None:
    cfgs = load_model_configs(PROJECT_ROOT / "configs")
    assert {c.name for c in cfgs} == {
        p.stem for p in (PROJECT_ROOT / "configs" / "models").glob("*.yaml")
    }
    assert all(
        yaml.safe_load((PROJECT_ROOT / "configs" / "platform.yaml").read_text()) for _ in [0]
    )

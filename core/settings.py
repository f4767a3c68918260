"""Where things live: the environment chooses the parts, the embedded defaults need no setup.

Every embedded default sits under one directory, ``MLOPS_HOME`` (``.mlops`` in the working
directory unless set). Production parts are chosen by standard settings:

* ``MLOPS_DATABASE_URL``: the source database (SQLAlchemy URL); default a SQLite file.
* ``MLOPS_STORE_URI``: ``s3://bucket/prefix`` or a local path; default ``$MLOPS_HOME/store``.
* ``MLFLOW_TRACKING_URI``: the MLflow tracking server; default a SQLite file. Credentials go
  in ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``; a ``user:password@`` in the
  URI is moved there by :func:`load_settings`, so the URI never carries it.
* ``AWS_ENDPOINT_URL`` / ``AWS_PROFILE`` / ``AWS_DEFAULT_REGION``: read by boto3 itself.
* ``MLOPS_KMS_KEY_ID``: ask S3 for SSE-KMS with this key instead of SSE-S3.
* ``PREFECT_API_URL``: a Prefect server; without it Prefect runs an ephemeral API whose
  database lives under ``$MLOPS_HOME/prefect`` (set by :func:`prepare_environment`).

Nothing here runs at import time: call :func:`load_settings` when you need the values. An
``MLOPS_*`` variable that no setting reads is an error (a misspelt ``MLOPS_DATABSE_URL`` would
otherwise fall back to the embedded SQLite without a word).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.secrets import split_userinfo

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The checkout (or installed tree) that holds ``configs/``."""


class Settings(BaseSettings):
    """Endpoints and locations, read from the environment once per call of :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_", extra="ignore", frozen=True)

    home: Path = Field(
        default=Path(".mlops"), description="Directory holding every embedded default's state."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the source database; default SQLite in home."
    )
    store_uri: str | None = Field(
        default=None, description="Model and snapshot store: s3://bucket/prefix or a local path."
    )
    config_dir: Path = Field(
        default=PROJECT_ROOT / "configs", description="Directory with models/*.yaml."
    )
    kms_key_id: str | None = Field(
        default=None, description="KMS key for S3 server-side encryption; SSE-S3 when unset."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_TRACKING_URI"),
        description="MLflow tracking URI; default a SQLite file in home.",
    )
    aws_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_ENDPOINT_URL", "MLOPS_AWS_ENDPOINT_URL"),
        description="AWS API endpoint (moto server in tests); boto3 also reads it itself.",
    )
    export_chunk_rows: int = Field(
        default=50_000, ge=100, le=5_000_000, description="Rows fetched per chunk on export."
    )
    part_rows: int = Field(
        default=1_000_000, ge=1_000, le=50_000_000, description="Rows per Parquet part file."
    )
    endpoint_target: Literal["auto", "local", "sagemaker", "none"] = Field(
        default="auto",
        description="Where promoted models are served; auto: sagemaker when AWS is configured.",
    )
    endpoint_host: str = Field(
        default="127.0.0.1",
        description="Local endpoint bind address: a loopback address (the router has no auth).",
    )
    endpoint_port: int = Field(
        default=8080, ge=1024, le=65535, description="Local endpoint router port."
    )
    aws_region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("AWS_DEFAULT_REGION", "AWS_REGION", "MLOPS_AWS_REGION"),
        description="AWS region of SageMaker, IAM and CloudWatch.",
    )
    aws_profile: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_PROFILE", "MLOPS_AWS_PROFILE"),
        description="AWS profile; the default credential chain when unset.",
    )
    sagemaker_role_arn: str | None = Field(
        default=None,
        description="Execution role for SageMaker models; created (least privilege) when unset.",
    )
    sagemaker_poll_seconds: float = Field(
        default=15.0,
        ge=0.0,
        le=300.0,
        description="Pause between SageMaker status polls while an endpoint is created or updated.",
    )
    serving_image: str | None = Field(
        default=None,
        description="ECR image URI of the serving image built from docker/serving.Dockerfile.",
    )

    @field_validator("endpoint_host")
    @classmethod
    def _loopback_only(cls, v: str) -> str:
        # The local router and variants answer anyone who reaches them: no authentication, as
        # the SageMaker contract they implement has none. 0.0.0.0 would serve the network.
        try:
            loopback = v == "localhost" or ipaddress.ip_address(v).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"MLOPS_ENDPOINT_HOST={v!r}: the local endpoint binds a loopback address only "
                "(127.0.0.1, ::1, localhost); it has no authentication"
            )
        return v

    @property
    def home_dir(self) -> Path:
        """Absolute path of the state directory."""
        return self.home.expanduser().resolve()

    @property
    def work_dir(self) -> Path:
        """Scratch space of runs (a model's files before they are published)."""
        return self.home_dir / "work"

    @property
    def source_url(self) -> str:
        """SQLAlchemy URL of the source database."""
        return self.database_url or f"sqlite:///{self.home_dir / 'source.db'}"

    @property
    def store(self) -> str:
        """Store URI: ``s3://...`` or an absolute local path."""
        if self.store_uri:
            if self.store_uri.startswith("s3://"):
                return self.store_uri
            return str(Path(self.store_uri).expanduser().resolve())
        return str(self.home_dir / "store")

    @property
    def resolved_endpoint_target(self) -> str:
        """``endpoint_target``, ``auto`` resolved (see :func:`adapters.endpoints.open_target`)."""
        if self.endpoint_target != "auto":
            return self.endpoint_target
        aws = self.aws_endpoint_url or self.aws_profile or self.store.startswith("s3://")
        return "sagemaker" if aws else "local"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI, never with a ``user:password@`` (see :func:`load_settings`)."""
        uri = self.mlflow_tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"
        return split_userinfo(uri)[0]

    @property
    def mlflow_artifact_root(self) -> str | None:
        """Artifact root for experiments created against the embedded SQLite store.

        None when ``MLFLOW_TRACKING_URI`` names a tracking server: its experiments use the
        server's artifact root (its proxied store, S3...), never the runner's disk.
        """
        if self.tracking_uri.startswith(("http://", "https://", "databricks")):
            return None
        return (self.home_dir / "mlartifacts").as_uri()


class SettingsError(ValueError):
    """The environment holds a setting this project does not know; the message names it."""


RESERVED_PREFIXES = ("MLOPS_MODEL_", "MLOPS_SERVING_", "MLOPS_MAX_", "MLOPS_ROUTER_")
"""Variables of the serving processes and the router (their own settings), not of runs."""

OTHER_VARIABLES = frozenset({"MLOPS_APP_DIR"})
"""Read by scripts rather than by :class:`Settings` (``docker/flow-runner-entrypoint.sh``)."""


def known_variables() -> frozenset[str]:
    """Every known ``MLOPS_*`` variable: what :class:`Settings` reads, and the scripts' own."""
    known: set[str] = set(OTHER_VARIABLES)
    for name, field in Settings.model_fields.items():
        known.add(f"MLOPS_{name.upper()}")
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            known.update(str(c) for c in alias.choices if str(c).startswith("MLOPS_"))
    return frozenset(known)


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an ``MLOPS_*`` variable no setting reads: a misspelling must not fall back silently.

    Raises:
        SettingsError: names each unknown variable and the closest known one.
    """
    known = known_variables()
    unknown = sorted(
        k
        for k in environ
        if k.upper().startswith("MLOPS_")
        and k.upper() not in known
        and not k.upper().startswith(RESERVED_PREFIXES)
    )
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name.upper(), sorted(known), n=1)
            hints.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise SettingsError(
            f"unknown setting(s) in the environment: {', '.join(hints)}; "
            f"known: {', '.join(sorted(known))}"
        )


def _move_mlflow_credentials() -> None:
    """Hand a ``user:password@`` of ``MLFLOW_TRACKING_URI`` to MLflow's own variables.

    MLflow sends ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` as basic auth; a URI without them
    cannot put the password into an error message, a log line or the Prefect database, and the
    settings never hold it.
    """
    for name in ("MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_TRACKING_URI"):
        raw = os.environ.get(name)
        if not raw:
            continue
        bare, user, password = split_userinfo(raw)
        if user is None and password is None:
            continue
        if user is not None:
            os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
        if password is not None:
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
        os.environ[name] = bare


def load_settings() -> Settings:
    """Read the settings from the environment (and nothing else).

    Raises:
        SettingsError: an ``MLOPS_*`` variable that no setting reads (a misspelling).
    """
    check_environment(os.environ)
    _move_mlflow_credentials()
    return Settings()


def _check_config_dir(config_dir: Path) -> None:
    """Stop a command before anything starts when ``MLOPS_CONFIG_DIR`` holds no model configs.

    Only the cheap check (files exist); each file is validated when it is loaded.
    """
    from core.config import ConfigError  # local: core.config imports YAML and pydantic models

    folder = config_dir / "models"
    if not any(folder.glob("*.yaml")):
        state = "holds no *.yaml files" if folder.is_dir() else "does not exist"
        raise ConfigError(f"{folder} {state}: no model configs (check MLOPS_CONFIG_DIR)")


def prepare_environment() -> Settings:
    """Point Prefect's embedded state at ``$MLOPS_HOME/prefect`` unless a server is configured.

    Must run before ``prefect`` is imported (the CLI and the tests call it first). It only fills
    variables that are unset, so an explicit ``PREFECT_HOME`` or ``PREFECT_API_URL`` wins.

    Raises:
        SettingsError: an unknown ``MLOPS_*`` variable.
        ConfigError: ``MLOPS_CONFIG_DIR`` holds no model configs.
    """
    settings = load_settings()
    _check_config_dir(settings.config_dir)
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(settings.home_dir / "prefect"))
    # Great Expectations otherwise phones home on every context it creates.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # The ephemeral Prefect server otherwise tries to send telemetry (and logs an error offline).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its default 20 s is short on a busy 2-core machine (the first start migrates a database).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    return settings


@contextmanager
def exported(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment (and its children's) for the block only."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved

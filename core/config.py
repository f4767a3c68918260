"""Model-family configuration: one YAML file per model in ``configs/models/``.

Each file is loaded once into :class:`ModelConfig`, a strict, frozen pydantic model
(``extra="forbid"``): a typo in a key is an error naming the key, not a silently ignored
setting. The family's own hyperparameters are checked by the family's ``Params`` model
(see :mod:`core.families`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

# The endpoint's and the network's settings live in core.endpoint_config (this module would
# pass the house limit of 500 lines); re-exported here so every import keeps working.
from core.endpoint_config import (  # noqa: F401 (re-exported)
    AlarmConfig,
    AutoscalingConfig,
    DeploymentStrategy,
    EndpointConfig,
    NetworkConfig,
    ServerlessConfig,
    TrainingConfig,
    VpcConfig,
)
from core.experiment import ExperimentPolicy
from core.store_config import StoreConfig
from core.strict import Strict

ColumnType = Literal["int64", "float64", "string", "timestamp", "bool"]


IDENTIFIER = r"^[a-z][a-z0-9_]{0,62}$"
"""A table or column name the export may put into SQL: lower case, digits, underscores."""

# One string split, not a list literal: a word a line would be 70 lines of this module.
SQL_RESERVED = frozenset(
    (  # noqa: SIM905
        "all and any as asc between by case cast check column constraint create cross "
        "current_date current_time current_timestamp default delete desc distinct drop else end "
        "except exists false fetch for foreign from full grant group having in inner insert "
        "intersect into is join leading left like limit natural not null offset on or order outer "
        "primary references right select set table then to trailing true union unique update user "
        "using values when where with"
    ).split()
)
"""Words PostgreSQL or SQLite reserve: valid by the pattern, yet a syntax error unquoted."""


def _check_identifier(name: str, what: str) -> str:
    import re

    if not re.fullmatch(IDENTIFIER, name):
        raise ValueError(f"{what} {name!r} is not a plain SQL identifier ({IDENTIFIER})")
    if name in SQL_RESERVED:
        raise ValueError(f"{what} {name!r} is an SQL reserved word; rename the column")
    return name


class DatasetConfig(Strict):
    """Where a model's training data comes from and what its rows look like."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,62}$", description="Snapshot folder name.")
    table: str = Field(pattern=r"^[a-z][a-z0-9_]{1,62}$", description="Source table.")
    watermark: str = Field(
        description="Monotonic ingestion column (an autoincrement id) for incremental export."
    )
    event_time: str = Field(description="Timestamp column used to split train and holdout.")
    key_columns: list[str] = Field(min_length=1, description="Columns that identify a row.")
    columns: dict[str, ColumnType] = Field(
        min_length=2, description="Exported columns and their Arrow types, in order."
    )
    nullable: list[str] = Field(
        default_factory=list,
        description=(
            "Columns that may hold nulls. Every other column gets a not-null expectation in the "
            "suite, so a null can never pass validation and then break training."
        ),
    )
    future_tolerance_hours: float = Field(
        default=24.0,
        ge=0.0,
        le=24.0 * 30,
        description=(
            "How far past the run's start an event_time may be (clock skew, a day stamped "
            "ahead). A row dated later fails validation and never moves the training window."
        ),
    )

    @field_validator("columns")
    @classmethod
    def _plain_identifiers(cls, v: dict[str, ColumnType]) -> dict[str, ColumnType]:
        # Column names go into the export's SQL text (values are bound, names cannot be): a
        # name that is not a plain identifier would be SQL of the config author's choosing.
        for name in v:
            _check_identifier(name, "column")
        return v

    @field_validator("table")
    @classmethod
    def _table_not_reserved(cls, v: str) -> str:
        return _check_identifier(v, "table")

    @model_validator(mode="after")
    def _columns_known(self) -> DatasetConfig:
        for col in [self.watermark, self.event_time, *self.key_columns, *self.nullable]:
            if col not in self.columns:
                raise ValueError(f"column {col!r} is not listed in dataset.columns")
        for col in [self.watermark, self.event_time, *self.key_columns]:
            if col in self.nullable:
                raise ValueError(f"column {col!r} identifies or orders rows: it cannot be nullable")
        if self.columns[self.event_time] != "timestamp":
            raise ValueError(f"event_time column {self.event_time!r} must be a timestamp")
        if self.columns[self.watermark] != "int64":
            raise ValueError(f"watermark column {self.watermark!r} must be int64")
        return self

    def latest_event_time(self, started: datetime) -> datetime:
        """The newest event time a run started at ``started`` accepts, naive UTC as the rows.

        Args:
            started: the run's start, timezone-aware (naive is read as UTC).
        """
        if started.tzinfo is not None:
            started = started.astimezone(UTC).replace(tzinfo=None)
        return started + timedelta(hours=self.future_tolerance_hours)

    @property
    def query(self) -> str:
        """The SELECT that the exporter wraps with its watermark predicate."""
        return f"SELECT {', '.join(self.columns)} FROM {self.table}"


class SplitConfig(Strict):
    """Temporal split: the newest ``holdout_days`` are the fresh holdout."""

    holdout_days: int = Field(default=7, ge=1, le=90, description="Days held out at the end.")
    training_days: int = Field(
        default=56, ge=7, le=3650, description="Days before the holdout used for training."
    )


class ExpectationConfig(Strict):
    """One Great Expectations expectation, with the reason it exists."""

    expectation: str = Field(
        pattern=r"^expect_[a-z_]+$", description="GX expectation type, snake case."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Expectation arguments.")
    why: str = Field(min_length=10, description="Why this expectation exists.")


class MetricPolicy(Strict):
    """Gate rule for one metric."""

    direction: Literal["higher", "lower"] = Field(description="Which way is better.")
    floor: float | None = Field(
        default=None, description="Absolute bound the challenger must meet (min or max)."
    )
    max_regression: float = Field(
        default=0.0,
        ge=0.0,
        description="How much worse than the champion (absolute) the challenger may be.",
    )


class GatePolicy(Strict):
    """What a challenger must meet to be promoted."""

    metrics: dict[str, MetricPolicy] = Field(min_length=1, description="Rules by metric name.")
    mode: Literal["enforce", "warn"] = Field(
        default="enforce",
        description="enforce: a failed rule blocks promotion; warn: promote and record warnings.",
    )
    unscored_champion: Literal["reject", "floors"] = Field(
        default="reject",
        description=(
            "A champion exists but cannot be re-scored (its files are gone or no longer load): "
            "reject the challenger (nothing to compare it with), or apply the floors only (set "
            "it to replace a broken champion on purpose)."
        ),
    )


class RetentionPolicy(Strict):
    """What cleanup keeps."""

    keep_last: int = Field(default=3, ge=1, le=100, description="Newest versions kept per model.")
    idle_days: int = Field(
        default=14, ge=1, le=365, description="No invocations for this long: listed as idle."
    )


class PricingConfig(Strict):
    """On-demand prices, to print what an endpoint costs before creating it."""

    region: str = Field(default="us-east-1", description="Region the prices are for.")
    instance_hourly_usd: dict[str, float] = Field(
        default_factory=dict, description="Instance type -> USD per instance-hour."
    )
    serverless_gb_second_usd: float = Field(
        default=0.00002, ge=0, description="Serverless USD per GB-second of compute."
    )
    hours_per_month: float = Field(default=730.0, gt=0, description="Hours in a billing month.")


class ScheduleConfig(Strict):
    """When the weekly retrain and the daily monitor run."""

    retrain_cron: str = Field(default="0 3 * * 1", description="Cron of the weekly retrain.")
    monitor_cron: str = Field(default="0 6 * * *", description="Cron of the daily monitor.")
    experiment_cron: str = Field(
        default="0 7 * * *", description="Cron of the daily look at running experiments."
    )
    cleanup_cron: str = Field(
        default="0 5 * * 1", description="Cron of the weekly cleanup dry run (after the retrain)."
    )
    timezone: str = Field(default="UTC", description="IANA time zone of both crons.")


class ServingAlerts(Strict):
    """Thresholds of the Prometheus alert rules on the serving metrics (``mlops prometheus-rules``).

    Drift and champion-age alerts take the monitor's own thresholds above, so an alert and a
    retrain request fire on the same reading.
    """

    p99_latency_seconds: float = Field(
        default=1.0, gt=0, le=60, description="Alert when a model's p99 latency stays above this."
    )
    error_rate: float = Field(
        default=0.05, gt=0, le=1, description="Alert when this share of invocations is 5xx."
    )
    for_minutes: int = Field(
        default=5, ge=1, le=1440, description="How long latency or errors stay bad before alerting."
    )
    no_traffic_minutes: int = Field(
        default=15,
        ge=1,
        le=1440,
        description="Alert when a serving model answers nothing for this long.",
    )


class MonitorPolicy(Strict):
    """When the monitor asks for a retrain."""

    psi_threshold: float = Field(
        default=0.2, gt=0, le=10, description="Population stability index that counts as drift."
    )
    ks_p_value: float = Field(
        default=0.01, gt=0, lt=1, description="Two-sample KS p-value below which a feature drifted."
    )
    min_drifted_features: int = Field(
        default=1, ge=1, description="Drifted features needed to trigger a retrain."
    )
    max_champion_age_days: int = Field(
        default=14, ge=1, le=365, description="Champion older than this: retrain."
    )
    recent_days: int = Field(default=7, ge=1, le=90, description="Window of recent data compared.")
    textfile: Path | None = Field(
        default=None,
        description="Write the monitor's results as Prometheus metrics to this .prom file, "
        "for node_exporter's textfile collector (replaced atomically); none: no file.",
    )
    pushgateway_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="Push the monitor's results to this Prometheus Pushgateway (job "
        "mlops-monitor); none: no push.",
    )
    alerts: ServingAlerts = Field(
        default_factory=lambda: ServingAlerts(),
        description="Thresholds of the serving alert rules in deployments/prometheus/.",
    )


class RunnerConfig(Strict):
    """Where independent work runs: the three families of a retrain, a forecaster's services.

    ``threads`` and ``process`` run on the machine of the flow (Prefect's
    ``ThreadPoolTaskRunner`` and ``ProcessPoolTaskRunner``); ``dask`` runs on a Dask cluster
    through prefect-dask's ``DaskTaskRunner``: the scheduler at ``dask_address``, or a
    ``LocalCluster`` of ``max_workers`` single-threaded worker processes when it is empty.
    """

    kind: Literal["threads", "process", "dask"] = Field(
        default="threads", description="threads, process (a process pool) or dask."
    )
    max_workers: int = Field(
        default=2, ge=1, le=256, description="Threads, processes or LocalCluster workers."
    )
    dask_address: str = Field(
        default="",
        pattern=r"^$|^(tcp|tls|inproc|ucx)://\S+$",
        description="Scheduler of an existing Dask cluster; empty: a LocalCluster per run.",
    )


class PlatformConfig(Strict):
    """Settings shared by every model: ``configs/platform.yaml``."""

    project_tag: str = Field(
        default="intelli-rate",
        pattern=r"^[a-z][a-z0-9-]{1,30}$",
        description="Prefix and tag value of every cloud resource this project creates.",
    )
    retention: RetentionPolicy = RetentionPolicy()
    pricing: PricingConfig = PricingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    monitor: MonitorPolicy = MonitorPolicy()
    runner: RunnerConfig = RunnerConfig()
    network: NetworkConfig = Field(
        default_factory=lambda: NetworkConfig(),
        description="The VPC every endpoint and training job uses unless its model names one.",
    )
    store: StoreConfig = StoreConfig()


def load_platform_config(config_dir: Path) -> PlatformConfig:
    """Load ``platform.yaml`` from ``config_dir``; defaults when the file is absent.

    Raises:
        ConfigError: the file exists but is not valid.
    """
    path = Path(config_dir) / "platform.yaml"
    if not path.exists():
        return PlatformConfig()
    try:
        return PlatformConfig.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


class ModelConfig(Strict):
    """Everything the pipeline needs to know about one model."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,40}$", description="Model name.")
    family: str = Field(
        pattern=r"^[a-z][a-z0-9_]+$", description="Module in core/families implementing the family."
    )
    description: str = Field(default="", description="One line for humans.")
    dataset: DatasetConfig
    split: SplitConfig = SplitConfig()
    validation: list[ExpectationConfig] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict, description="Family hyperparameters.")
    seed: int = Field(default=42, ge=0, description="Random seed for training.")
    gate: GatePolicy
    endpoint: EndpointConfig = EndpointConfig()
    experiment: ExperimentPolicy = Field(
        default_factory=ExperimentPolicy, description="Online experiment defaults."
    )
    training: TrainingConfig = TrainingConfig()

    @field_validator("validation")
    @classmethod
    def _has_row_count(cls, v: list[ExpectationConfig]) -> list[ExpectationConfig]:
        # GX passes an empty frame on every column check; only a row-count check catches it.
        if not any(e.expectation == "expect_table_row_count_to_be_between" for e in v):
            raise ValueError("validation needs an expect_table_row_count_to_be_between")
        return v

    @model_validator(mode="after")
    def _suite_columns_exist(self) -> ModelConfig:
        # A check on a column the export does not produce is a broken suite, caught at load.
        for i, item in enumerate(self.validation):
            cols = [item.kwargs["column"]] if "column" in item.kwargs else []
            cols += list(item.kwargs.get("column_list", []))
            unknown = [c for c in cols if c not in self.dataset.columns]
            if unknown:
                raise ValueError(f"validation[{i}] {item.expectation}: unknown column(s) {unknown}")
        return self

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of this config (lineage)."""
        # The experiment defaults do not change what training produces: left out, so adding
        # or tuning them does not look like a new training config.
        blob = json.dumps(self.model_dump(mode="json", exclude={"experiment"}), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class ConfigError(ValueError):
    """A config file is missing or invalid; the message names the file and the field."""


def load_model_config(path: Path) -> ModelConfig:
    """Load and validate one model config file.

    Raises:
        ConfigError: the file cannot be read or does not match :class:`ModelConfig`.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        cfg = ModelConfig.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if cfg.name != path.stem:
        raise ConfigError(f"{path}: name {cfg.name!r} must match the file name {path.stem!r}")
    from core.families import get_family  # local: families import heavy libraries

    try:
        family = get_family(cfg.family)
        family.Params.model_validate(cfg.params)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"{path}: params for family {cfg.family!r}: {exc}") from exc
    _check_gate_metrics(path, cfg, family.gate_metrics)
    _check_experiment_metrics(path, cfg, family.experiment_metrics)
    return cfg


def _check_experiment_metrics(path: Path, cfg: ModelConfig, known: dict[str, str]) -> None:
    """The experiment's metric and guardrails must be ones the family (or the capture) measures."""
    from core.experiment import PLATFORM_METRICS

    policy = cfg.experiment
    if policy.metric is not None and policy.metric not in known:
        raise ConfigError(
            f"{path}: experiment.metric {policy.metric!r} is not a per-request metric of family "
            f"{cfg.family!r} (it has {', '.join(sorted(known)) or 'none'})"
        )
    unknown = sorted(set(policy.guardrails) - set(known) - set(PLATFORM_METRICS))
    if unknown:
        raise ConfigError(
            f"{path}: experiment.guardrails: unknown metric(s) {unknown}; family {cfg.family!r} "
            f"measures {sorted(known)}, every model {sorted(PLATFORM_METRICS)}"
        )


def _check_gate_metrics(path: Path, cfg: ModelConfig, known: frozenset[str]) -> None:
    """A gate metric the family never reports would reject every challenger: refuse it here."""
    import difflib

    unknown = sorted(set(cfg.gate.metrics) - known)
    if not unknown:
        return
    hints = [
        name + "".join(f" (did you mean {c}?)" for c in difflib.get_close_matches(name, known, 1))
        for name in unknown
    ]
    raise ConfigError(
        f"{path}: gate.metrics: unknown metric(s) {', '.join(hints)} for family "
        f"{cfg.family!r}; it reports {sorted(known)}"
    )


def load_model_configs(config_dir: Path, names: list[str] | None = None) -> list[ModelConfig]:
    """Load every ``models/*.yaml`` under ``config_dir`` (or just ``names``), sorted by name.

    Raises:
        ConfigError: no config files at all, an unknown name, or an invalid file.
    """
    folder = Path(config_dir) / "models"
    files = {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    if not files:
        # "No models" would make a retrain succeed doing nothing and a cleanup delete every
        # endpoint as unconfigured: a wrong MLOPS_CONFIG_DIR must stop everything instead.
        state = "holds no *.yaml files" if folder.is_dir() else "does not exist"
        raise ConfigError(f"{folder} {state}: no model configs (check MLOPS_CONFIG_DIR)")
    if names:
        unknown = sorted(set(names) - set(files))
        if unknown:
            raise ConfigError(f"unknown model(s) {unknown}; known: {sorted(files)}")
        files = {n: files[n] for n in sorted(set(names))}
    return [load_model_config(p) for p in files.values()]

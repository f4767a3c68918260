"""Model-family configuration: one YAML file per model in ``configs/models/``.

Each file is loaded once into :class:`ModelConfig`, a strict, frozen pydantic model
(``extra="forbid"``): a typo in a key is an error naming the key, not a silently ignored
setting. The family's own hyperparameters are checked by the family's ``Params`` model
(see :mod:`tasks.train`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ColumnType = Literal["int64", "float64", "string", "timestamp", "bool"]


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @model_validator(mode="after")
    def _columns_known(self) -> DatasetConfig:
        for col in [self.watermark, self.event_time, *self.key_columns]:
            if col not in self.columns:
                raise ValueError(f"column {col!r} is not listed in dataset.columns")
        if self.columns[self.event_time] != "timestamp":
            raise ValueError(f"event_time column {self.event_time!r} must be a timestamp")
        if self.columns[self.watermark] != "int64":
            raise ValueError(f"watermark column {self.watermark!r} must be int64")
        return self

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


class ModelConfig(Strict):
    """Everything the pipeline needs to know about one model."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,40}$", description="Model name.")
    family: str = Field(
        pattern=r"^[a-z][a-z0-9_]+$", description="Module in tasks/train implementing the family."
    )
    description: str = Field(default="", description="One line for humans.")
    dataset: DatasetConfig
    split: SplitConfig = SplitConfig()
    validation: list[ExpectationConfig] = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict, description="Family hyperparameters.")
    seed: int = Field(default=42, ge=0, description="Random seed for training.")
    gate: GatePolicy

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
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


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
    from tasks.train import get_family  # local: families import heavy libraries

    try:
        get_family(cfg.family).Params.model_validate(cfg.params)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"{path}: params for family {cfg.family!r}: {exc}") from exc
    return cfg


def load_model_configs(config_dir: Path, names: list[str] | None = None) -> list[ModelConfig]:
    """Load every ``models/*.yaml`` under ``config_dir`` (or just ``names``), sorted by name.

    Raises:
        ConfigError: an unknown name, or an invalid file.
    """
    files = {p.stem: p for p in sorted((config_dir / "models").glob("*.yaml"))}
    if names:
        unknown = sorted(set(names) - set(files))
        if unknown:
            raise ConfigError(f"unknown model(s) {unknown}; known: {sorted(files)}")
        files = {n: files[n] for n in sorted(set(names))}
    return [load_model_config(p) for p in files.values()]

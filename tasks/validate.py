"""Data validation with a Great Expectations 1.x suite built from the model's config.

The suite lives in ``configs/models/<model>.yaml`` (``validation:``), one entry per
expectation with the reason it exists, plus a not-null expectation for every column of
``dataset.columns`` that ``dataset.nullable`` does not name, and an upper bound on the event
time: the run's start plus ``dataset.future_tolerance_hours`` (:func:`schema_expectations`).
:func:`validate_frame` runs it on a pandas frame with an ephemeral GX context and returns a
:class:`ValidationReport` that names each failed expectation, its column(s) and sample bad
values.

GX reports a broken check (for example a column that does not exist) as ``success=False``
with ``exception_info``, not as an exception. Those are told apart from bad data: they raise
:class:`SuiteError`, because the fix is in the suite or the export, not in the source rows.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters.prefect_api import publish_markdown
from adapters.snapshots import current_watermark, read_snapshot_manifest, record_validation
from adapters.store import Store
from core.config import ExpectationConfig, ModelConfig
from tasks.training import WindowData

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite

SAMPLE_VALUES = 5


class SuiteError(RuntimeError):
    """The suite itself is broken (unknown expectation, missing column, GX error)."""


@dataclass(frozen=True)
class Failure:
    """One failed expectation on bad data."""

    expectation: str
    columns: list[str]
    why: str
    unexpected_count: int | None
    unexpected_percent: float | None
    sample: list[Any]
    observed: Any = None
    rows: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of one suite on one frame."""

    dataset: str
    snapshot_id: str | None
    success: bool
    rows: int
    evaluated: int
    failures: list[Failure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored next to the snapshot as ``validation.json``."""
        return asdict(self)

    def summary(self) -> str:
        """One line per failure: expectation, columns, count and sample values."""
        if self.success:
            return f"{self.dataset}: {self.evaluated} expectations passed on {self.rows} rows"
        lines = [
            f"{self.dataset}: {len(self.failures)} of {self.evaluated} expectations failed "
            f"on {self.rows} rows (snapshot {self.snapshot_id})"
        ]
        for f in self.failures:
            count = "" if f.unexpected_count is None else f" {f.unexpected_count} bad rows;"
            sample = f" sample {f.sample!r}" if f.sample else f" observed {f.observed!r}"
            rows = f"; rows {f.rows!r}" if f.rows else ""
            lines.append(
                f"  - {f.expectation} on {', '.join(f.columns) or 'table'}:{count}{sample}{rows}"
                + (f" ({f.why})" if f.why else "")
            )
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The Prefect artifact: a table of failures (or a pass line)."""
        head = "passed" if self.success else "FAILED"
        md = [
            f"# Validation {head}: `{self.dataset}`",
            "",
            f"Snapshot `{self.snapshot_id}`, {self.rows} rows, {self.evaluated} expectations.",
            "",
        ]
        if self.failures:
            md += [
                "| expectation | columns | bad rows | sample values | why it exists |",
                "|---|---|---|---|---|",
            ]
            for f in self.failures:
                sample = ", ".join(map(str, f.sample)) if f.sample else f"observed {f.observed}"
                md.append(
                    f"| {f.expectation} | {', '.join(f.columns)} | {f.unexpected_count} "
                    f"| {sample} | {f.why} |"
                )
        return "\n".join(md)


def _class_name(expectation: str) -> str:
    return "".join(part.capitalize() for part in expectation.split("_"))


def schema_expectations(
    cfg: ModelConfig, started: datetime | None = None
) -> list[ExpectationConfig]:
    """Not-null for every column not declared nullable; no event time from the future.

    The event time is bounded by the run's start plus ``dataset.future_tolerance_hours``
    (:func:`future_expectation`). The not-null expectations come after the config's own, and
    only for columns that do not already have one there (whose ``why`` is more specific).
    Range checks skip nulls, and the families refuse them: a null that passed validation would
    be accepted into a snapshot and break every training window that holds it.

    Args:
        cfg: the model's config.
        started: the run's start (default: now).
    """
    covered = {
        item.kwargs.get("column")
        for item in cfg.validation
        if item.expectation == "expect_column_values_to_not_be_null"
    }
    not_null = [
        ExpectationConfig(
            expectation="expect_column_values_to_not_be_null",
            kwargs={"column": column},
            why="Declared in dataset.columns and not in dataset.nullable: a null breaks training.",
        )
        for column in cfg.dataset.columns
        if column not in covered and column not in cfg.dataset.nullable
    ]
    return [*not_null, future_expectation(cfg, started or datetime.now(UTC))]


def future_expectation(cfg: ModelConfig, started: datetime) -> ExpectationConfig:
    """No ``event_time`` later than ``started`` plus the dataset's tolerance.

    A row from the future would otherwise become the training window's newest row: the
    window would hold almost nothing, and every later run would fail on it.
    """
    dataset = cfg.dataset
    limit = dataset.latest_event_time(started)
    return ExpectationConfig(
        expectation="expect_column_values_to_be_between",
        kwargs={"column": dataset.event_time, "max_value": limit},
        why=(
            f"No {dataset.event_time} after the run's start "
            f"{started.astimezone(UTC):%Y-%m-%d %H:%M} UTC plus dataset.future_tolerance_hours "
            f"({dataset.future_tolerance_hours:g} h), i.e. after {limit:%Y-%m-%d %H:%M}: "
            "a row from the future; correct or delete it in the source"
        ),
    )


def build_suite(cfg: ModelConfig, started: datetime | None = None) -> ExpectationSuite:
    """Turn the config's ``validation`` list into a ``gx.ExpectationSuite``.

    Args:
        cfg: the model's config.
        started: the run's start, which bounds the event time (default: now).

    Raises:
        SuiteError: an expectation type GX does not know, or arguments it rejects.
    """
    import great_expectations as gx

    expectations = []
    for i, item in enumerate([*cfg.validation, *schema_expectations(cfg, started)]):
        cls = getattr(gx.expectations, _class_name(item.expectation), None)
        if cls is None:
            raise SuiteError(
                f"{cfg.name}: validation[{i}]: unknown expectation {item.expectation!r}"
            )
        try:
            expectations.append(cls(**item.kwargs, meta={"why": item.why, "index": i}))
        except Exception as exc:  # pydantic errors from GX name the bad argument
            raise SuiteError(f"{cfg.name}: validation[{i}] {item.expectation}: {exc}") from exc
    return gx.ExpectationSuite(name=f"{cfg.name}.{cfg.dataset.name}", expectations=expectations)


def _columns(kwargs: dict[str, Any]) -> list[str]:
    if "column" in kwargs:
        return [str(kwargs["column"])]
    return [str(c) for c in kwargs.get("column_list", [])]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if value != value else value  # NaN -> null
    return str(value)


def validate_frame(
    frame: pd.DataFrame,
    cfg: ModelConfig,
    snapshot_id: str | None = None,
    started: datetime | None = None,
) -> ValidationReport:
    """Run the model's suite on ``frame``; bad rows are named by ``dataset.key_columns``.

    Args:
        frame: the rows.
        cfg: the model's config.
        snapshot_id: named in the report.
        started: the run's start, which bounds the event time (default: now).

    Returns:
        The report; ``success`` is False when any expectation failed on the data.

    Raises:
        SuiteError: the suite is broken (GX raised while computing a check).
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    suite = build_suite(cfg, started)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("snapshot").add_dataframe_asset(cfg.dataset.name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": frame}
    )
    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": SAMPLE_VALUES,
        "unexpected_index_column_names": list(cfg.dataset.key_columns),
    }
    result = batch.validate(suite, result_format=result_format)
    failures: list[Failure] = []
    broken: list[str] = []
    for res in result.results:
        if res.success:
            continue
        config = res.expectation_config
        if config is None:  # GX reports which expectation failed; without it, a broken suite
            broken.append(f"a failed result without its expectation: {res.exception_info}")
            continue
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        info = res.exception_info or {}
        raised = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
        if info.get("raised_exception"):
            raised.append(info)
        if raised:
            message = raised[0].get("exception_message", "GX raised")
            broken.append(f"{config.type} {kwargs}: {message}")
            continue
        details = res.result or {}
        sample = details.get("partial_unexpected_list") or []
        failures.append(
            Failure(
                expectation=config.type,
                columns=_columns(kwargs),
                why=str((config.meta or {}).get("why", "")),
                unexpected_count=details.get("unexpected_count"),
                unexpected_percent=details.get("unexpected_percent"),
                sample=_jsonable(sample[:SAMPLE_VALUES]),
                observed=_jsonable(details.get("observed_value")),
                rows=_jsonable(
                    (details.get("partial_unexpected_index_list") or [])[:SAMPLE_VALUES]
                ),
            )
        )
    if broken:
        raise SuiteError(f"{cfg.name}: the suite is broken, not the data: " + "; ".join(broken))
    return ValidationReport(
        dataset=cfg.dataset.name,
        snapshot_id=snapshot_id,
        success=not failures,
        rows=len(frame),
        evaluated=len(result.results),
        failures=failures,
    )


class SnapshotSuperseded(RuntimeError):
    """Another run accepted rows past this snapshot's start since it was exported."""


def _refuse_if_superseded(store: Store, cfg: ModelConfig, snapshot_id: str) -> None:
    """Reject ``snapshot_id`` when the watermark moved past its start since the export.

    Two runs (say a scheduled one and ``mlops retrain`` by hand) can export the same rows;
    accepting both would put every row twice in every later training window. The second to
    finish validating is marked rejected (its rows are the other's) and stops here.

    Raises:
        SnapshotSuperseded: the accepted watermark is past this snapshot's ``from``.
    """
    manifest = read_snapshot_manifest(store, cfg.dataset.name, snapshot_id)
    start = manifest["watermark"]["from"]
    accepted = current_watermark(store, cfg.dataset.name)
    if accepted is not None and (start is None or accepted > int(start)):
        reason = (
            f"{cfg.dataset.name}: snapshot {snapshot_id} starts after watermark {start}, but "
            f"another run accepted rows up to {accepted} since; its rows are that run's"
        )
        record_validation(
            store, cfg.dataset.name, snapshot_id, {"success": False, "superseded": reason}
        )
        raise SnapshotSuperseded(reason)


class ValidationFailed(RuntimeError):
    """The data broke the suite; the message is the readable report."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(f"validation failed: {report.summary()}")
        self.report = report


@task(name="validate-snapshot", cache_policy=NO_CACHE)
def validate_data(
    store: Store,
    cfg: ModelConfig,
    window: WindowData,
    new_snapshot: str | None,
    started: datetime | None = None,
) -> ValidationReport:
    """Run the suite on the training window; record the outcome next to the new snapshot.

    A failed validation marks the snapshot rejected (so the watermark does not move past its
    rows), publishes the report as an artifact and raises :class:`ValidationFailed`, which
    stops this model's path before training. ``started`` is the run's start (default: now):
    rows dated past it plus ``dataset.future_tolerance_hours`` fail.
    """
    snapshot = new_snapshot or window.newest_snapshot
    report = validate_frame(window.frame, cfg, snapshot, started)
    if new_snapshot:
        if report.success:
            _refuse_if_superseded(store, cfg, new_snapshot)
        record_validation(store, cfg.dataset.name, new_snapshot, report.to_dict())
    publish_markdown(
        f"validation-{cfg.name}", report.to_markdown(), f"Validation of {cfg.dataset.name}"
    )
    if not report.success:
        raise ValidationFailed(report)
    return report

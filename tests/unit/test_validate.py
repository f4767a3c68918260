"""The GX suites in configs/: clean data passes, bad rows are named, a broken suite is caught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from core.config import load_model_config
from core.settings import PROJECT_ROOT
from core.synth import generate
from tasks.validate import SuiteError, build_suite, schema_expectations, validate_frame

START = datetime(2026, 1, 5)


def cfg(name: str):
    return load_model_config(PROJECT_ROOT / "configs" / "models" / f"{name}.yaml")


def frame(table: str, days: int = 2) -> pd.DataFrame:
    df = generate(table, START, days, n_clients=10, n_services=2, seed=1)
    return df.assign(id=range(1, len(df) + 1))


@pytest.mark.parametrize(
    ("model", "table"),
    [
        ("abuse_detector", "client_windows"),
        ("limit_optimiser", "client_limits"),
        ("traffic_forecaster", "service_traffic"),
    ],
)
def test_generated_data_passes_its_suite(model: str, table: str) -> None:
    report = validate_frame(frame(table, days=8), cfg(model), "snap")
    assert report.success, report.summary()
    assert report.evaluated == len(cfg(model).validation) + len(schema_expectations(cfg(model)))


def test_each_kind_of_bad_row_is_named_with_samples() -> None:
    df = frame("client_windows")
    df.loc[0, "requests"] = -5  # negative count
    df.loc[1, "error_rate"] = 1.7  # out-of-range rate
    df.loc[2, "client_id"] = None  # null key
    dup = df.iloc[[3]].copy()
    dup["id"] = len(df) + 1
    df = pd.concat([df, dup], ignore_index=True)  # duplicated key
    report = validate_frame(df, cfg("abuse_detector"), "snap-bad")
    assert not report.success
    failed = {(f.expectation, tuple(f.columns)): f for f in report.failures}
    assert failed[("expect_column_values_to_be_between", ("requests",))].sample == [-5]
    assert failed[("expect_column_values_to_be_between", ("error_rate",))].sample == [1.7]
    assert ("expect_column_values_to_not_be_null", ("client_id",)) in failed
    assert ("expect_compound_columns_to_be_unique", ("client_id", "window_start")) in failed
    text = report.summary()
    assert "snap-bad" in text and "-5" in text and "1.7" in text
    # The artifact carries the reason each failed expectation exists.
    assert "Counts are never negative" in report.to_markdown()


def test_empty_frame_fails_on_row_count() -> None:
    # GX passes column checks on an empty frame; the row-count expectation must catch it.
    empty = frame("client_limits").iloc[0:0]
    report = validate_frame(empty, cfg("limit_optimiser"), "empty")
    assert not report.success
    assert [f.expectation for f in report.failures] == ["expect_table_row_count_to_be_between"]


def test_missing_column_is_a_broken_suite_not_bad_data() -> None:
    df = frame("service_traffic").drop(columns=["is_holiday"])
    with pytest.raises(SuiteError, match="is_holiday"):
        validate_frame(df, cfg("traffic_forecaster"), "s")


def test_unknown_expectation_type_is_a_suite_error() -> None:
    c = cfg("traffic_forecaster")
    bad = c.validation[0].model_copy(update={"expectation": "expect_the_moon"})
    broken = c.model_copy(update={"validation": [*c.validation, bad]})
    with pytest.raises(SuiteError, match="expect_the_moon"):
        build_suite(broken)


@pytest.mark.parametrize(
    ("model", "table", "column"),
    [
        ("abuse_detector", "client_windows", "login_attempts"),
        ("abuse_detector", "client_windows", "is_abuse"),
        ("limit_optimiser", "client_limits", "p99_rps"),
        ("traffic_forecaster", "service_traffic", "ts"),
    ],
)
def test_a_null_in_any_column_fails_validation(model: str, table: str, column: str) -> None:
    # These columns have range or set checks (which skip nulls) or none: the schema-derived
    # not-null expectation is what catches them, before a trainer would refuse the snapshot.
    df = frame(table, days=8)
    df[column] = df[column].astype("object")
    df.loc[5, column] = None
    report = validate_frame(df, cfg(model), "snap-null")
    assert not report.success
    failed = {(f.expectation, tuple(f.columns)) for f in report.failures}
    assert ("expect_column_values_to_not_be_null", (column,)) in failed


def test_every_column_is_not_null_unless_declared_nullable() -> None:
    for name in ("abuse_detector", "limit_optimiser", "traffic_forecaster"):
        c = cfg(name)
        checked = {
            e.kwargs["column"]
            for e in [*c.validation, *schema_expectations(c)]
            if e.expectation == "expect_column_values_to_not_be_null"
        }
        assert checked == set(c.dataset.columns) - set(c.dataset.nullable), name


RUN_START = datetime(2026, 1, 13, 6, 0, tzinfo=UTC)  # the frames end on 2026-01-12


@pytest.mark.parametrize(
    ("model", "table", "column", "key"),
    [
        ("abuse_detector", "client_windows", "window_start", "client_id"),
        ("limit_optimiser", "client_limits", "day", "client_id"),
        ("traffic_forecaster", "service_traffic", "ts", "service"),
    ],
)
def test_a_row_from_the_future_fails_naming_column_rows_and_tolerance(
    model: str, table: str, column: str, key: str
) -> None:
    """Issue 21: a row dated five years past the run's start used to pass validation."""
    c = cfg(model)
    df = frame(table, days=8)
    df.loc[3, column] = pd.Timestamp("2031-01-13")
    report = validate_frame(df, c, "snap-future", started=RUN_START)
    assert not report.success
    (failure,) = report.failures
    assert failure.expectation == "expect_column_values_to_be_between"
    assert failure.columns == [column] and failure.unexpected_count == 1
    assert failure.rows == [{key: df.loc[3, key], column: "2031-01-13 00:00:00"}]
    text = report.summary()
    tolerance = f"dataset.future_tolerance_hours ({c.dataset.future_tolerance_hours:g} h)"
    assert f"on {column}: 1 bad rows" in text and tolerance in text
    assert "2031-01-13" in text and str(df.loc[3, key]) in text and "2026-01-13 06:00" in text


def test_the_tolerance_is_the_boundary() -> None:
    c = cfg("limit_optimiser")
    assert c.dataset.future_tolerance_hours == 168  # the demo's appended week validates
    df = frame("client_limits", days=8)
    edge = RUN_START.replace(tzinfo=None) + timedelta(hours=168)
    df.loc[3, "day"] = pd.Timestamp(edge)
    assert validate_frame(df, c, "s", started=RUN_START).success
    df.loc[3, "day"] = pd.Timestamp(edge) + pd.Timedelta(seconds=1)
    assert not validate_frame(df, c, "s", started=RUN_START).success
    # Bounded in config: at most 30 days.
    with pytest.raises(ValueError, match="future_tolerance_hours"):
        c.dataset.model_validate({**c.dataset.model_dump(), "future_tolerance_hours": 24 * 31})

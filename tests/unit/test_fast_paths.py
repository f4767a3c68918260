"""The serving fast paths answer what ``Family.predict`` answers, to the last bit.

Each family's :meth:`~core.families.Family.predict_columns` (numpy in, numpy out: what the
serving app calls) is compared with :meth:`~core.families.Family.predict` (the DataFrame path
that training, evaluation and MLflow use) on a few thousand generated rows per family.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core import synth
from core.families import check_columns, column_arrays, get_family
from tests.fixtures.serving import FAMILIES, TinyModel, build_model_dir, training_frame


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    base = tmp_path_factory.mktemp("fast-path-models")
    return {family: build_model_dir(family, base / family) for family in FAMILIES}


def _rows(family: str, model: Any) -> pd.DataFrame:
    """About 3,000 request rows: fresh generator data, shuffled, with extreme values mixed in."""
    rng = np.random.default_rng(11)
    if family == "traffic_forecaster":
        services = np.array(model.services)
        start = pd.Timestamp("2025-03-10")
        hours = rng.integers(-24 * 20, 24 * 40, size=3000)
        ts = start + pd.to_timedelta(hours, unit="h")
        return pd.DataFrame(
            {"service": services[rng.integers(0, len(services), 3000)], "ts": ts.astype(str)}
        )
    frame = pd.concat([training_frame(family, seed) for seed in range(21, 33)], ignore_index=True)
    frame = frame.sample(n=min(3000, len(frame)), random_state=3).reset_index(drop=True)
    columns = get_family(family).input_columns()
    return frame[list(columns)]


def _plain_columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """Columns of plain Python values, as a JSON request carries them."""
    return {c: frame[c].tolist() for c in frame.columns}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_fast_path_answers_what_predict_answers(
    tiny: dict[str, TinyModel], family: str
) -> None:
    impl = get_family(family)
    model = impl.load(tiny[family].model_dir)
    frame = _rows(family, model)
    assert len(frame) >= 2000
    expected = impl.predict(model, frame)
    got = impl.predict_columns(model, _plain_columns(frame))
    assert list(got) == list(expected.columns)
    for column in expected.columns:
        np.testing.assert_array_equal(got[column], expected[column].to_numpy(), err_msg=column)
    # One row at a time too (the serving app's commonest call), on a sample. Compared with
    # predict on the same one row: BLAS may sum a 1-row product in another order than a
    # 3,000-row one, so Prophet's own answer for an hour can differ in the last bit by batch.
    for i in range(0, len(frame), 97):
        row = frame.iloc[[i]]
        one = impl.predict_columns(model, _plain_columns(row))
        alone = impl.predict(model, row)
        for column in expected.columns:
            assert one[column][0] == alone[column].iloc[0], (i, column)


def test_the_forecasters_fast_path_covers_a_model_with_holidays() -> None:
    # Trained on two weeks holding Memorial Day: the numpy forecast must cover the holiday
    # column (not quietly fall back to Prophet) and answer the same on and off the holiday.
    impl = get_family("traffic_forecaster")
    frame = synth.generate("service_traffic", datetime(2025, 5, 19), 14, n_services=1, seed=5)
    model = impl.train(frame, impl.Params(candidates=["prophet"], backtest_folds=0), seed=5)
    assert model.holiday_dates == ["2025-05-26"]
    assert set(model.point_forecasts) == set(model.services)
    hours = pd.date_range("2025-05-25", periods=24 * 4, freq="h")
    rows = pd.DataFrame({"service": model.services[0], "ts": hours.astype(str)})
    expected = impl.predict(model, rows)["forecast"].to_numpy()
    got = impl.predict_columns(model, _plain_columns(rows))["forecast"]
    np.testing.assert_array_equal(got, expected)
    on_holiday = hours.normalize() == pd.Timestamp("2025-05-26")
    # The holiday lowers traffic: the column is used, not zero.
    assert got[on_holiday].mean() < got[~on_holiday].mean()


@pytest.mark.parametrize("candidate", ["seasonal_naive", "mstl", "mstl_naive"])
def test_the_forecasters_fast_path_serves_a_statistical_candidate(candidate: str) -> None:
    # A service whose backtest chose a statistical candidate has no Prophet inside: the fast
    # path must take that candidate's own forecast, as predict does.
    impl = get_family("traffic_forecaster")
    frame = synth.generate("service_traffic", datetime(2025, 3, 3), 21, n_services=2, seed=7)
    model = impl.train(frame, impl.Params(candidates=[candidate], backtest_folds=0), seed=7)
    assert not model.point_forecasts
    hours = pd.date_range("2025-03-24", periods=24 * 3, freq="h")
    rows = pd.DataFrame(
        {"service": np.resize(np.array(model.services), len(hours)), "ts": hours.astype(str)}
    )
    expected = impl.predict(model, rows)["forecast"].to_numpy()
    got = impl.predict_columns(model, _plain_columns(rows))["forecast"]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("inf"), "finite"),
        (float("-inf"), "finite"),
        (float("nan"), "null|non-finite"),
        (True, "boolean"),
    ],
)
def test_numbers_refuse_non_finite_values_and_booleans(value: Any, reason: str) -> None:
    columns = {"avg_rps": "float64", "endpoints_used": "int64"}
    good = {"avg_rps": [1.5, 2.0], "endpoints_used": [3, 4]}
    for column in columns:
        bad = {**good, column: [good[column][0], value]}
        with pytest.raises(ValueError, match=rf"column '{column}'.*{reason}"):
            column_arrays(bad, columns)
        with pytest.raises(ValueError, match=rf"column '{column}'.*{reason}"):
            check_columns(pd.DataFrame(bad), columns)


def test_column_arrays_coerce_like_check_columns() -> None:
    columns = {"a": "float64", "n": "int64", "s": "string", "t": "timestamp"}
    values = {
        "a": ["1.5", 2, 3.25],  # text digits go the DataFrame way
        "n": [1, 2, 3],
        "s": ["x", "y", "z"],
        "t": ["2025-03-03T00:00:00", "2025-03-03T01:00:00", "2025-03-03T02:00:00"],
    }
    got = column_arrays(values, columns)
    expected = check_columns(pd.DataFrame(values), columns)
    for column in columns:
        assert pd.Series(got[column]).tolist() == expected[column].tolist(), column
    # Timestamps numpy reads itself (naive ISO, either separator, fractions) and those it
    # leaves to pandas (a zone, another era) come out as pandas reads them.
    for stamps in (
        ["2025-03-03 01:00:00", "2025-03-03 01:30:00"],
        ["2025-03-03T01:30", "2025-12-31T23:59"],
        ["2025-03-03", "2026-01-01"],
        ["2025-03-03T01:00:00.25", "2025-03-03T01:00:00.50"],
        ["2025-03-03T01:00:00Z", "2025-03-03T02:00:00Z"],
        ["2025-03-03T01:00:00+02:00"],
        ["1850-01-01T00:00:00", "2025-03-03T00:00:00"],
    ):
        got_ts = column_arrays({"t": stamps}, {"t": "timestamp"})["t"]
        want = check_columns(pd.DataFrame({"t": stamps}), {"t": "timestamp"})["t"]
        assert pd.Series(got_ts).tolist() == want.tolist(), stamps
    # Mixed formats: pandas refuses them, and so does the fast path.
    mixed = ["2025-03-03 01:00:00", "2025-03-03T01:30"]
    with pytest.raises(ValueError, match="column 't' must be timestamp"):
        check_columns(pd.DataFrame({"t": mixed}), {"t": "timestamp"})
    with pytest.raises(ValueError, match="column 't' must be timestamp"):
        column_arrays({"t": mixed}, {"t": "timestamp"})
    with pytest.raises(ValueError, match="missing column"):
        column_arrays({"a": [1.0]}, columns)

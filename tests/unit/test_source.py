"""The source database on SQLite: table shape, seeding and appending weeks, deliberate damage."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from adapters.source import (
    corrupt_source,
    create_source_tables,
    last_monday,
    seed_source,
    source_extent,
    source_has_data,
    source_tables,
)
from core.synth import generate
from core.tables import EVENT_TIME, KEYS, SCHEMAS, TABLES

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"n_clients": 4, "n_services": 2, "seed": 5}
TODAY = date(2026, 3, 18)  # a Wednesday: data ends on Monday 2026-03-16 00:00
MODELS = {
    "client_windows": "abuse_detector",
    "client_limits": "limit_optimiser",
    "service_traffic": "traffic_forecaster",
}


@pytest.fixture
def url(tmp_path: Path) -> str:
    # A directory that does not exist yet: seeding must create it.
    return f"sqlite:///{tmp_path / 'nested' / 'dir' / 'source.db'}"


def count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return int(n)


def read(url: str, table: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    tab = source_tables()[table]
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(sa.select(tab).order_by(tab.c.id)).mappings().all())
    engine.dispose()
    return frame


def test_tables_have_an_autoincrement_id_and_no_unique_natural_key() -> None:
    tables = source_tables()
    assert set(tables) == set(TABLES)
    for name, table in tables.items():
        assert [c.name for c in table.columns] == ["id", *SCHEMAS[name]]
        assert [c.name for c in table.primary_key.columns] == ["id"]
        assert table.c.id.autoincrement is True
        assert all(table.c[c].nullable for c in SCHEMAS[name])  # bad rows must be storable
        # Duplicates are for validation to find, so the database must accept them.
        assert not [c for c in table.constraints if isinstance(c, sa.UniqueConstraint)]
        assert not [i for i in table.indexes if i.unique]
        assert {col.name for i in table.indexes for col in i.columns} == {EVENT_TIME[name]}
    # The same metadata twice: the tables are reused, not redefined.
    metadata = sa.MetaData()
    assert source_tables(metadata)["client_limits"] is source_tables(metadata)["client_limits"]


def test_create_is_idempotent_and_an_empty_source_has_no_extent(url: str) -> None:
    assert not source_has_data(url)  # not even a file yet
    engine = sa.create_engine(url)
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    create_source_tables(engine)
    create_source_tables(engine)
    assert set(sa.inspect(engine).get_table_names()) == set(TABLES)
    assert source_extent(engine) == dict.fromkeys(TABLES)
    engine.dispose()
    assert not source_has_data(url)


def test_last_monday() -> None:
    assert last_monday(date(2026, 3, 18)) == datetime(2026, 3, 16)
    assert last_monday(date(2026, 3, 16)) == datetime(2026, 3, 16)  # a Monday: its midnight
    assert last_monday(date(2026, 3, 15)) == datetime(2026, 3, 9)
    assert last_monday().weekday() == 0


def test_seed_writes_whole_weeks_ending_last_monday(url: str) -> None:
    messages: list[str] = []
    written = seed_source(url, weeks=2, today=TODAY, progress=messages.append, **SMALL)
    assert written == {
        "client_windows": 4 * 24 * 14,
        "client_limits": 4 * 14,
        "service_traffic": 2 * 24 * 14,
    }
    assert {t: count(url, t) for t in TABLES} == written
    assert source_extent(url) == {
        "client_windows": datetime(2026, 3, 15, 23),
        "client_limits": datetime(2026, 3, 15),
        "service_traffic": datetime(2026, 3, 15, 23),
    }
    assert source_has_data(url)
    assert any("client_windows" in m for m in messages)
    # What the database holds is exactly what the generator made, ids in event-time order.
    for table in TABLES:
        stored = read(url, table)
        assert stored["id"].tolist() == list(range(1, len(stored) + 1))
        expected = generate(table, datetime(2026, 3, 2), 14, **SMALL)
        stored = stored.drop(columns="id").astype(expected.dtypes.to_dict())
        pd.testing.assert_frame_equal(stored, expected, check_datetimelike_compat=True)


def test_seed_again_appends_weeks_after_the_latest_event(url: str) -> None:
    seed_source(url, weeks=2, today=TODAY, **SMALL)
    before = source_extent(url)
    written = seed_source(url, append_weeks=2, today=TODAY, **SMALL)
    assert written["client_limits"] == 4 * 14
    after = source_extent(url)
    for table in TABLES:
        assert after[table] == before[table] + timedelta(days=14)
        assert count(url, table) == 2 * written[table]
    # The appended rows continue the series seamlessly: same as generating 4 weeks at once.
    stored = read(url, "service_traffic").drop(columns="id")
    expected = generate("service_traffic", datetime(2026, 3, 2), 28, **SMALL)
    assert stored["ts"].tolist() == expected["ts"].tolist()
    assert stored["requests"].tolist() == expected["requests"].tolist()
    # Default: one more week.
    assert seed_source(url, today=TODAY, **SMALL)["service_traffic"] == 2 * 24 * 7


def test_seed_with_drift_changes_only_the_new_rows(url: str) -> None:
    seed_source(url, weeks=1, today=TODAY, **SMALL)
    first = read(url, "service_traffic")
    seed_source(url, drift=1.0, today=TODAY, **SMALL)
    both = read(url, "service_traffic")
    pd.testing.assert_frame_equal(both.iloc[: len(first)], first)
    assert both["requests"].iloc[len(first) :].mean() > 1.3 * first["requests"].mean()


def test_seed_refuses_nonsense(url: str) -> None:
    with pytest.raises(ValueError, match="weeks"):
        seed_source(url, weeks=0)
    with pytest.raises(ValueError, match="append_weeks"):
        seed_source(url, append_weeks=0)


def expectations(table: str) -> list[dict]:
    raw = yaml.safe_load((ROOT / "configs" / "models" / f"{MODELS[table]}.yaml").read_text())
    return raw["validation"]


def broken(frame: pd.DataFrame, table: str) -> set[tuple[str, str]]:
    """(expectation, column) pairs of the model config that ``frame`` violates."""
    out = set()
    for item in expectations(table):
        kind, kw = item["expectation"], item["kwargs"]
        if kind == "expect_column_values_to_not_be_null" and frame[kw["column"]].isna().any():
            out.add((kind, kw["column"]))
        elif kind == "expect_column_values_to_be_between":
            values = frame[kw["column"]].dropna()
            low = values < kw.get("min_value", float("-inf"))
            high = values > kw.get("max_value", float("inf"))
            if (low | high).any():
                out.add((kind, kw["column"]))
        elif kind == "expect_column_values_to_be_in_set":
            if not frame[kw["column"]].dropna().isin(kw["value_set"]).all():
                out.add((kind, kw["column"]))
        elif (
            kind == "expect_compound_columns_to_be_unique"
            and frame.duplicated(kw["column_list"]).any()
        ):
            out.add((kind, ",".join(kw["column_list"])))
    return out


@pytest.mark.parametrize("table", TABLES)
def test_corrupt_appends_each_kind_of_bad_row(url: str, table: str) -> None:
    seed_source(url, weeks=1, today=TODAY, **SMALL)
    clean = read(url, table).drop(columns="id")
    assert broken(clean, table) == set()
    counts = corrupt_source(url, table, seed=1)
    assert counts == {"null": 1, "negative": 1, "out_of_range": 1, "duplicate_key": 1}
    dirty = read(url, table).drop(columns="id")
    assert len(dirty) == len(clean) + 4
    bad = dirty.iloc[len(clean) :]
    kinds = {kind for kind, _ in broken(dirty, table)}
    # Each kind of damage breaks an expectation the model's config declares.
    assert kinds >= {
        "expect_column_values_to_not_be_null",
        "expect_compound_columns_to_be_unique",
    }
    assert kinds & {"expect_column_values_to_be_between", "expect_column_values_to_be_in_set"}
    assert len(broken(dirty, table)) >= 4
    # The bad rows sit in the newest data, so a training window cannot skip them.
    event = EVENT_TIME[table]
    assert (bad[event] == clean[event].max()).all()
    # The duplicate repeats an existing natural key exactly.
    keys = list(KEYS[table])
    assert dirty.duplicated(keys).sum() == 1
    assert (bad.iloc[-1][keys] == clean[keys]).all(axis=1).any()


def test_corrupt_client_limits_names_what_the_pipeline_reports(url: str) -> None:
    # The retrain flow's failure message must name these columns (see tests/flows).
    seed_source(url, weeks=1, today=TODAY, **SMALL)
    corrupt_source(url, "client_limits")
    dirty = read(url, "client_limits")
    assert dirty["best_limit"].isna().sum() == 1
    assert (dirty["error_rate"] > 1).sum() == 1
    assert (dirty["account_age_days"] < 0).sum() == 1


def test_corrupt_refuses_unknown_or_empty_tables(url: str) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        corrupt_source(url, "nope")
    engine = sa.create_engine(url)
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    create_source_tables(engine)
    engine.dispose()
    with pytest.raises(ValueError, match="no rows"):
        corrupt_source(url, "client_windows")


def test_mlops_seed_sizes_the_population_on_request(mlops_home: Path) -> None:
    from typer.testing import CliRunner

    from cli import app
    from core.settings import load_settings

    result = CliRunner().invoke(
        app, ["seed", "--weeks", "2", "--clients", "7", "--services", "3", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    engine = sa.create_engine(load_settings().source_url)
    with engine.connect() as conn:
        clients = {
            table: conn.execute(sa.text(f"SELECT count(DISTINCT client_id) FROM {table}")).scalar()
            for table in ("client_windows", "client_limits")
        }
        services = conn.execute(
            sa.text("SELECT count(DISTINCT service) FROM service_traffic")
        ).scalar()
    engine.dispose()
    assert clients == {"client_windows": 7, "client_limits": 7}
    assert services == 3


@pytest.mark.parametrize("flag", ["--clients", "--services"])
def test_mlops_seed_refuses_an_empty_population(mlops_home: Path, flag: str) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["seed", "--weeks", "2", flag, "0"])
    assert result.exit_code == 2
    assert f"Invalid value for '{flag}'" in result.output
    # The home holds only the empty MLflow database every isolated home starts with.
    written = [p.name for p in mlops_home.iterdir() if p.name != "mlflow.db"]
    assert not written, "nothing is written for a refused size"

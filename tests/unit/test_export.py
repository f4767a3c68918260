"""SQL -> Parquet snapshots on SQLite and a local store: content, hashes, increments, status."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, tzinfo
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml

from adapters.snapshots import (
    SnapshotInfo,
    combined_sha256,
    current_watermark,
    list_snapshots,
    read_snapshots,
    record_validation,
)
from adapters.source import corrupt_source, mask_url, seed_source
from adapters.store import KeyNotFound, LocalStore, sha256_file, store_from_settings
from core.config import DatasetConfig
from tasks.export import export_new_data, export_snapshot, export_task

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"n_clients": 4, "n_services": 2, "seed": 5}
TODAY = date(2026, 3, 18)  # data ends Monday 2026-03-16 00:00
WINDOWS_PER_WEEK = 4 * 24 * 7


def dataset(model: str) -> DatasetConfig:
    raw = yaml.safe_load((ROOT / "configs" / "models" / f"{model}.yaml").read_text())
    return DatasetConfig.model_validate(raw["dataset"])


WINDOWS = dataset("abuse_detector")
LIMITS = dataset("limit_optimiser")
TRAFFIC = dataset("traffic_forecaster")


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    seed_source(url, weeks=1, today=TODAY, **SMALL)
    return url


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def source_frame(url: str, ds: DatasetConfig) -> pd.DataFrame:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text(f"{ds.query} ORDER BY {ds.watermark}"), conn)
    engine.dispose()
    return frame


def accept(store: LocalStore, info: SnapshotInfo) -> None:
    record_validation(store, info.dataset, info.snapshot_id, {"success": True})


def test_export_writes_parts_and_manifest_last(url: str, store: LocalStore) -> None:
    info = export_snapshot(url, store, WINDOWS)
    assert info is not None
    assert info.rows == WINDOWS_PER_WEEK
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", info.snapshot_id)
    assert info.snapshot_id.endswith(info.sha256[:8])
    assert (info.watermark_from, info.watermark_to) == (None, WINDOWS_PER_WEEK)
    assert (info.min_event_time, info.max_event_time) == (
        "2026-03-09T00:00:00",
        "2026-03-15T23:00:00",
    )
    prefix = f"snapshots/client_windows/{info.snapshot_id}"
    assert info.manifest_key == f"{prefix}/manifest.json"
    assert info.uri == store.url(prefix)
    assert store.list(prefix) == [f"{prefix}/manifest.json", f"{prefix}/part-00000.parquet"]

    manifest = json.loads(store.get_bytes(info.manifest_key))
    assert manifest["rows"] == info.rows and manifest["snapshot_id"] == info.snapshot_id
    assert manifest["schema"] == WINDOWS.columns
    assert manifest["watermark"] == {"column": "id", "from": None, "to": WINDOWS_PER_WEEK}
    assert manifest["event_time"]["column"] == "window_start"
    assert manifest["query"] == f"{WINDOWS.query} ORDER BY id"
    assert manifest["source"] == url
    # The hashes in the manifest are the hashes of the files in the store.
    (part,) = manifest["parts"]
    local = Path(store.url(part["key"]))
    assert part["sha256"] == sha256_file(local) and part["bytes"] == local.stat().st_size
    assert part["rows"] == info.rows
    assert manifest["sha256"] == info.sha256 == combined_sha256([part["sha256"]])
    # The Parquet file carries the dataset's explicit types.
    schema = pq.read_schema(local)
    assert [str(t) for t in schema.types] == [
        {"timestamp": "timestamp[us]", "float64": "double"}.get(k, k)
        for k in WINDOWS.columns.values()
    ]


@pytest.mark.parametrize("ds", [WINDOWS, LIMITS, TRAFFIC], ids=lambda d: d.name)
def test_read_back_equals_the_source_with_typed_columns(
    url: str, store: LocalStore, ds: DatasetConfig
) -> None:
    info = export_snapshot(url, store, ds)
    assert info is not None
    frame = read_snapshots(store, ds, [info.snapshot_id])
    assert list(frame.columns) == list(ds.columns)
    for col, kind in ds.columns.items():
        if kind == "timestamp":
            assert str(frame[col].dtype) in ("datetime64[us]", "datetime64[ns]"), col
        elif kind == "string":
            assert pd.api.types.is_string_dtype(frame[col].dtype), col
        else:
            assert str(frame[col].dtype) == kind, col
    expected = source_frame(url, ds)
    for col, kind in ds.columns.items():
        if kind == "timestamp":
            expected[col] = pd.to_datetime(expected[col]).astype(frame[col].dtype)
        elif kind == "string":
            expected[col] = expected[col].astype(frame[col].dtype)
    pd.testing.assert_frame_equal(frame, expected)


def test_nothing_new_returns_none_and_writes_nothing(url: str, store: LocalStore) -> None:
    info = export_snapshot(url, store, LIMITS)
    assert info is not None
    accept(store, info)
    before = store.list("snapshots")
    assert export_snapshot(url, store, LIMITS) is None
    assert store.list("snapshots") == before


def test_incremental_export_after_append_gets_only_new_rows(url: str, store: LocalStore) -> None:
    first = export_snapshot(url, store, WINDOWS)
    assert first is not None
    accept(store, first)
    assert current_watermark(store, "client_windows") == first.watermark_to
    seed_source(url, today=TODAY, **SMALL)  # one more week
    second = export_snapshot(url, store, WINDOWS)
    assert second is not None
    assert second.rows == WINDOWS_PER_WEEK
    assert second.watermark_from == first.watermark_to
    assert second.watermark_to == 2 * WINDOWS_PER_WEEK
    assert second.min_event_time == "2026-03-16T00:00:00"
    frame = read_snapshots(store, WINDOWS, [second.snapshot_id])
    assert frame["id"].min() == first.watermark_to + 1
    both = read_snapshots(store, WINDOWS, [first.snapshot_id, second.snapshot_id])
    assert both["id"].tolist() == list(range(1, 2 * WINDOWS_PER_WEEK + 1))
    assert [m["snapshot_id"] for m in list_snapshots(store, "client_windows")] == [
        first.snapshot_id,
        second.snapshot_id,
    ]


def test_rejected_or_pending_snapshots_do_not_move_the_watermark(
    url: str, store: LocalStore
) -> None:
    first = export_snapshot(url, store, LIMITS)
    assert first is not None
    record_validation(
        store, "client_limits", first.snapshot_id, {"success": False, "failures": ["x"]}
    )
    assert current_watermark(store, "client_limits") is None
    # Rejected: the same rows come again next time (fixed at the source, they are not lost).
    second = export_snapshot(url, store, LIMITS)
    assert second is not None and second.snapshot_id != first.snapshot_id
    assert (second.rows, second.watermark_from) == (first.rows, None)
    # Pending (not validated yet) does not count either.
    assert current_watermark(store, "client_limits") is None
    statuses = [(m["snapshot_id"], m["status"]) for m in list_snapshots(store, "client_limits")]
    assert statuses == [(first.snapshot_id, "rejected"), (second.snapshot_id, "pending")]
    accept(store, second)
    assert current_watermark(store, "client_limits") == second.watermark_to
    validation = json.loads(
        store.get_bytes(f"snapshots/client_limits/{first.snapshot_id}/validation.json")
    )
    assert validation["success"] is False and validation["failures"] == ["x"]


def test_bad_rows_are_exported_for_validation_to_see(url: str, store: LocalStore) -> None:
    corrupt_source(url, "client_windows")
    info = export_snapshot(url, store, WINDOWS)
    assert info is not None and info.rows == WINDOWS_PER_WEEK + 4
    frame = read_snapshots(store, WINDOWS, [info.snapshot_id])
    assert frame["requests"].isna().sum() == 1  # an int column with a null comes back as float
    assert (frame["error_rate"] > 1).sum() == 1
    assert frame.duplicated(["client_id", "window_start"]).sum() == 1


def test_chunks_and_part_files_roll(url: str, store: LocalStore) -> None:
    progress: list[int] = []
    info = export_snapshot(
        url, store, WINDOWS, chunk_rows=100, part_rows=250, progress=progress.append
    )
    assert info is not None
    n = WINDOWS_PER_WEEK  # 672
    # One progress call per fetched chunk of 100 rows.
    assert progress == [*range(100, n, 100), n]
    manifest = json.loads(store.get_bytes(info.manifest_key))
    assert [p["rows"] for p in manifest["parts"]] == [250, 250, n - 500]
    assert [p["key"].rsplit("/", 1)[1] for p in manifest["parts"]] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    for part in manifest["parts"]:
        meta = pq.ParquetFile(store.url(part["key"])).metadata
        assert meta.num_rows == part["rows"]
        # Row groups come from the fetched chunks: never more than a chunk in memory at once.
        assert all(meta.row_group(i).num_rows <= 100 for i in range(meta.num_row_groups))
    assert info.sha256 == combined_sha256([p["sha256"] for p in manifest["parts"]])
    frame = read_snapshots(store, WINDOWS, [info.snapshot_id])
    assert frame["id"].tolist() == list(range(1, n + 1))


def test_a_tampered_part_is_detected(url: str, store: LocalStore) -> None:
    info = export_snapshot(url, store, TRAFFIC, part_rows=100)
    assert info is not None
    manifest = json.loads(store.get_bytes(info.manifest_key))
    victim = manifest["parts"][1]["key"]
    other = Path(store.url(manifest["parts"][2]["key"])).read_bytes()
    store.put_bytes(victim, other)  # a valid Parquet file, just not the one exported
    with pytest.raises(ValueError, match=re.escape(victim)):
        read_snapshots(store, TRAFFIC, [info.snapshot_id])


def test_incomplete_snapshots_are_invisible(url: str, store: LocalStore) -> None:
    # An export that died before its manifest left parts behind: not a snapshot.
    store.put_bytes("snapshots/client_limits/20260101T000000Z-deadbeef/part-00000.parquet", b"x")
    assert list_snapshots(store, "client_limits") == []
    info = export_snapshot(url, store, LIMITS)
    assert info is not None
    assert [m["snapshot_id"] for m in list_snapshots(store, "client_limits")] == [info.snapshot_id]
    with pytest.raises(KeyNotFound):
        read_snapshots(store, LIMITS, ["20260101T000000Z-deadbeef"])


def test_two_exports_of_the_same_rows_in_one_second_get_their_own_folders(
    url: str, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adapters.snapshots as snapshots

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:
            return datetime(2026, 3, 16, 12, 0, 0, tzinfo=tz)

    monkeypatch.setattr(snapshots, "datetime", Frozen)
    first = export_snapshot(url, store, LIMITS)
    assert first is not None
    record_validation(store, "client_limits", first.snapshot_id, {"success": False})
    second = export_snapshot(url, store, LIMITS)
    assert second is not None
    assert first.snapshot_id == f"20260316T120000Z-{first.sha256[:8]}"
    assert second.snapshot_id == f"20260316T120001Z-{first.sha256[:8]}"
    # The re-export must not inherit the first one's rejection.
    assert [m["status"] for m in list_snapshots(store, "client_limits")] == ["rejected", "pending"]


def test_record_validation_needs_an_outcome_and_a_snapshot(url: str, store: LocalStore) -> None:
    info = export_snapshot(url, store, TRAFFIC)
    assert info is not None
    with pytest.raises(KeyError, match="success"):
        record_validation(store, "service_traffic", info.snapshot_id, {"rows": 3})
    with pytest.raises(KeyNotFound):
        record_validation(store, "service_traffic", "20990101T000000Z-00000000", {"success": True})
    key = record_validation(store, "service_traffic", info.snapshot_id, {"success": 1, "rows": 3})
    assert json.loads(store.get_bytes(key))["success"] is True


def test_types_are_converted_per_the_dataset(tmp_path: Path, store: LocalStore) -> None:
    # SQLite hands back timestamps as text and booleans as 0/1; the schema decides the type.
    url = f"sqlite:///{tmp_path / 'other.db'}"
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    table = sa.Table(
        "events",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime),
        sa.Column("ok", sa.Boolean),
        sa.Column("n", sa.BigInteger),
        sa.Column("label", sa.String),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "at": datetime(2026, 1, 1, 5, 30, 0, 123456),
                    "ok": True,
                    "n": 2**40,
                    "label": "a",
                },
                {"at": None, "ok": False, "n": None, "label": None},
            ],
        )
    engine.dispose()
    ds = DatasetConfig(
        name="events",
        table="events",
        watermark="id",
        event_time="at",
        key_columns=["id"],
        columns={"id": "int64", "at": "timestamp", "ok": "bool", "n": "int64", "label": "string"},
    )
    info = export_snapshot(url, store, ds)
    assert info is not None and info.max_event_time == "2026-01-01T05:30:00.123456"
    frame = read_snapshots(store, ds, [info.snapshot_id])
    assert frame["at"].iloc[0] == pd.Timestamp("2026-01-01 05:30:00.123456") and pd.isna(
        frame["at"].iloc[1]
    )
    assert frame["ok"].tolist() == [True, False] and frame["ok"].dtype == bool
    assert frame["n"].iloc[0] == 2**40 and pd.isna(frame["n"].iloc[1])
    assert frame["label"].iloc[0] == "a" and pd.isna(frame["label"].iloc[1])


def test_a_value_of_the_wrong_type_names_the_column(url: str, store: LocalStore) -> None:
    wrong = DatasetConfig.model_validate(
        {**LIMITS.model_dump(), "columns": {**LIMITS.columns, "tier": "float64"}}
    )
    with pytest.raises(ValueError, match="'tier'"):
        export_snapshot(url, store, wrong)
    assert store.list("snapshots") == []  # nothing half-written


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql+psycopg://etl:s3cret@db.internal:5432/api")
    assert "s3cret" not in masked and masked.startswith("postgresql+psycopg://etl:***@db.internal")


def test_prefect_tasks_wrap_the_plain_functions(
    url: str, store: LocalStore, mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flows call these; outside a flow their .fn runs without a Prefect API.
    assert export_task.name == "export-snapshot" and export_task.retries == 2
    info = export_task.fn(url, store, TRAFFIC)
    assert isinstance(info, SnapshotInfo)

    from core.config import ModelConfig
    from core.settings import load_settings

    monkeypatch.setenv("MLOPS_DATABASE_URL", url)
    raw = yaml.safe_load((ROOT / "configs" / "models" / "limit_optimiser.yaml").read_text())
    cfg = ModelConfig.model_validate(raw)
    settings = load_settings()
    configured = store_from_settings(settings)
    chunks = (settings.export_chunk_rows, settings.part_rows)
    made = export_new_data.fn(settings.source_url, configured, cfg, *chunks)
    assert made is not None and made.rows == 4 * 7
    assert made.uri.startswith(str(mlops_home / "store"))
    accept(LocalStore(settings.store), made)
    assert export_new_data.fn(settings.source_url, configured, cfg, *chunks) is None


def test_two_runs_exporting_the_same_rows_never_both_accept_them(
    url: str, store: LocalStore
) -> None:
    from core.config import load_model_config
    from tasks.validate import SnapshotSuperseded, _refuse_if_superseded

    cfg = load_model_config(ROOT / "configs" / "models" / "limit_optimiser.yaml")
    # Two runs export before either has validated: both snapshots hold the same rows.
    first = export_snapshot(url, store, LIMITS)
    second = export_snapshot(url, store, LIMITS)
    assert first is not None and second is not None
    assert (first.watermark_from, second.watermark_from) == (None, None)

    _refuse_if_superseded(store, cfg, first.snapshot_id)  # nothing accepted yet: fine
    accept(store, first)
    with pytest.raises(SnapshotSuperseded, match="another run accepted rows"):
        _refuse_if_superseded(store, cfg, second.snapshot_id)
    statuses = {m["snapshot_id"]: m["status"] for m in list_snapshots(store, "client_limits")}
    assert statuses == {first.snapshot_id: "accepted", second.snapshot_id: "rejected"}
    assert current_watermark(store, "client_limits") == first.watermark_to

"""The export path against a real PostgreSQL server: seed, export, append, export again, and a
larger table exported through a server-side cursor with flat memory."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from adapters.snapshots import current_watermark, list_snapshots, read_snapshots, record_validation
from adapters.source import corrupt_source, seed_source, source_extent, source_tables
from adapters.store import LocalStore, sha256_file
from core.config import DatasetConfig
from tasks.export import export_snapshot
from tasks.watermark import has_new_rows

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 3, 18)  # data ends Monday 2026-03-16 00:00
SMALL = {"n_clients": 6, "n_services": 2, "seed": 3}
MODELS = ("abuse_detector", "limit_optimiser", "traffic_forecaster")


def dataset(model: str) -> DatasetConfig:
    raw = yaml.safe_load((ROOT / "configs" / "models" / f"{model}.yaml").read_text())
    return DatasetConfig.model_validate(raw["dataset"])


@pytest.fixture
def pg(postgres_url: str) -> Iterator[str]:
    """The session's database, emptied of source tables before and after each test."""
    engine = sa.create_engine(postgres_url)
    metadata = sa.MetaData()
    source_tables(metadata)
    metadata.drop_all(engine)
    yield postgres_url
    metadata.drop_all(engine)
    engine.dispose()


def source_frame(url: str, ds: DatasetConfig, where: str = "") -> pd.DataFrame:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text(f"{ds.query} {where} ORDER BY {ds.watermark}"), conn)
    engine.dispose()
    return frame


def same_rows(exported: pd.DataFrame, source: pd.DataFrame, ds: DatasetConfig) -> None:
    expected = source.copy()
    for col, kind in ds.columns.items():
        if kind == "timestamp":
            expected[col] = pd.to_datetime(expected[col]).astype(exported[col].dtype)
        elif kind == "string":
            expected[col] = expected[col].astype(exported[col].dtype)
    pd.testing.assert_frame_equal(exported.reset_index(drop=True), expected)


def test_seed_export_append_export(pg: str, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    written = seed_source(pg, weeks=2, today=TODAY, **SMALL)
    assert written == {
        "client_windows": 6 * 24 * 14,
        "client_limits": 6 * 14,
        "service_traffic": 2 * 24 * 14,
    }
    first = {}
    for model in MODELS:
        ds = dataset(model)
        info = export_snapshot(pg, store, ds, chunk_rows=500, part_rows=1_500)
        assert info is not None
        assert info.rows == written[ds.table]
        manifest = json.loads(store.get_bytes(info.manifest_key))
        assert manifest["source"] == pg  # no password here; the URL is recorded as given
        assert manifest["source"].startswith("postgresql+psycopg://")
        for part in manifest["parts"]:
            assert sha256_file(Path(store.url(part["key"]))) == part["sha256"]
        assert sum(p["rows"] for p in manifest["parts"]) == info.rows
        same_rows(read_snapshots(store, ds, [info.snapshot_id]), source_frame(pg, ds), ds)
        record_validation(store, ds.name, info.snapshot_id, {"success": True})
        first[model] = info
    # What `mlops retrain` asks before it starts a flow, on PostgreSQL: nothing new now.
    assert not any(has_new_rows(pg, store, dataset(model)) for model in MODELS)

    extent = source_extent(pg)
    appended = seed_source(pg, today=TODAY, **SMALL)  # one more week
    assert all(has_new_rows(pg, store, dataset(model)) for model in MODELS)
    assert source_extent(pg)["client_windows"] == extent["client_windows"] + pd.Timedelta(days=7)
    for model in MODELS:
        ds = dataset(model)
        info = export_snapshot(pg, store, ds, chunk_rows=500)
        assert info is not None
        assert info.rows == appended[ds.table]
        assert info.watermark_from == first[model].watermark_to
        assert info.min_event_time == "2026-03-16T00:00:00"
        new = source_frame(pg, ds, f"WHERE {ds.watermark} > {first[model].watermark_to}")
        same_rows(read_snapshots(store, ds, [info.snapshot_id]), new, ds)
        # Not validated yet: the watermark stays at the first, accepted snapshot.
        assert current_watermark(store, ds.name) == first[model].watermark_to
        assert [m["status"] for m in list_snapshots(store, ds.name)] == ["accepted", "pending"]


def test_bad_rows_reach_the_snapshot(pg: str, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    seed_source(pg, weeks=1, today=TODAY, **SMALL)
    assert corrupt_source(pg, "client_limits") == {
        "null": 1,
        "negative": 1,
        "out_of_range": 1,
        "duplicate_key": 1,
    }
    ds = dataset("limit_optimiser")
    info = export_snapshot(pg, store, ds)
    assert info is not None
    frame = read_snapshots(store, ds, [info.snapshot_id])
    assert frame["best_limit"].isna().sum() == 1
    assert (frame["error_rate"] > 1).sum() == 1
    assert (frame["account_age_days"] < 0).sum() == 1
    assert frame.duplicated(["client_id", "day"]).sum() == 1


def _rss_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measure(fn: Callable[[], Any]) -> tuple[Any, float, int, int | None]:
    """Run ``fn``; return its result, seconds, Python peak bytes and RSS growth (KiB, or None)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    can_reset = _reset_rss_hwm()
    rss_before = _rss_kib()
    started = time.perf_counter()
    try:
        result = fn()
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    hwm = _rss_hwm_kib()
    growth = hwm - rss_before if can_reset and hwm is not None else None
    return result, elapsed, peak, growth


def test_large_export_streams_with_flat_memory(pg: str, tmp_path: Path) -> None:
    # 225 clients x 8 weeks of hourly windows = 302,400 rows.
    written = seed_source(pg, weeks=8, today=TODAY, n_clients=225, n_services=2, seed=1)
    rows = written["client_windows"]
    assert rows == 302_400
    ds = dataset("abuse_detector")
    store = LocalStore(tmp_path / "store")

    # Speed, measured without tracemalloc (which slows allocation-heavy code several times).
    started = time.perf_counter()
    timed = export_snapshot(pg, store, ds, chunk_rows=50_000)
    seconds = time.perf_counter() - started
    assert timed is not None and timed.rows == rows

    # Memory: the same rows again (the first snapshot is still pending, so the watermark has
    # not moved), in small chunks, with every Python allocation traced.
    chunks: list[int] = []
    info, _, export_peak, export_rss = measure(
        lambda: export_snapshot(
            pg, store, ds, chunk_rows=5_000, part_rows=100_000, progress=chunks.append
        )
    )
    assert info is not None and info.rows == rows
    assert info.sha256 != timed.sha256  # other part files, so another snapshot
    assert len(chunks) == rows // 5_000 + (rows % 5_000 > 0)
    manifest = json.loads(store.get_bytes(info.manifest_key))
    assert [p["rows"] for p in manifest["parts"]] == [100_000, 100_000, 100_000, 2_400]

    # The same rows loaded whole into pandas: what a non-streaming export would hold at once.
    def load_all() -> int:
        frame = source_frame(pg, ds)
        return len(frame)

    loaded, _, full_peak, full_rss = measure(load_all)
    assert loaded == rows
    print(
        f"\nPostgreSQL export: {rows:,} rows in {seconds:.2f} s ({rows / seconds:,.0f} rows/s); "
        f"Python peak {export_peak / 2**20:.1f} MiB vs {full_peak / 2**20:.1f} MiB loading it "
        f"whole; RSS growth {export_rss} KiB vs {full_rss} KiB"
    )
    # A generous bound that a non-streaming read (every row in memory) cannot meet.
    assert export_peak < full_peak / 3, (export_peak, full_peak)
    if export_rss is not None and full_rss is not None and full_rss > 50_000:
        assert export_rss < full_rss / 2, (export_rss, full_rss)

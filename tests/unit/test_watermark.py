"""The check ``mlops retrain`` makes before Prefect: the export's rule, asked without exporting.

Every step compares the check with what the export then does on the same source and store, so
the two cannot drift apart; a source that cannot answer is an error, never "no new rows".
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapters.snapshots import record_validation
from adapters.source import seed_source
from adapters.store import LocalStore, store_from_settings
from cli.models import _nothing_new
from core.config import load_model_configs
from core.outcome import NO_NEW_DATA
from core.settings import PROJECT_ROOT, load_settings
from tasks.export import export_snapshot
from tasks.watermark import has_new_rows
from tests.fixtures.home import LEAKY

SMALL = {"n_clients": 4, "n_services": 2, "seed": 5, "today": date(2026, 3, 18)}
CFGS = {cfg.name: cfg for cfg in load_model_configs(PROJECT_ROOT / "configs")}
LIMITS = CFGS["limit_optimiser"].dataset


def test_the_check_agrees_with_the_export_at_every_step(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    seed_source(url, weeks=1, **SMALL)
    store = LocalStore(tmp_path / "store")

    def check_then_export(accept: bool | None) -> bool:
        """The check's answer; the export that follows must agree with it."""
        pending = has_new_rows(url, store, LIMITS)
        info = export_snapshot(url, store, LIMITS)
        assert (info is not None) == pending
        if info is not None and accept is not None:
            record_validation(store, LIMITS.name, info.snapshot_id, {"success": accept})
        return pending

    assert check_then_export(accept=None)  # first run: every row is new
    assert check_then_export(accept=False)  # still new: a pending snapshot moves no watermark
    assert check_then_export(accept=True)  # a rejected one neither; this one is accepted
    assert not check_then_export(accept=None)  # nothing past the accepted watermark
    seed_source(url, append_weeks=1, **SMALL)
    assert check_then_export(accept=True)  # the appended week
    assert not check_then_export(accept=None)


def test_a_source_that_cannot_answer_is_an_error_not_no_new_rows(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    empty = f"sqlite:///{tmp_path / 'empty.db'}"  # no tables: the table is missing
    with pytest.raises(sa.exc.OperationalError, match="no such table"):
        has_new_rows(empty, store, LIMITS)
    unreachable = f"sqlite:///{tmp_path / 'no-such-dir' / 'source.db'}"
    with pytest.raises(sa.exc.OperationalError, match="unable to open database"):
        has_new_rows(unreachable, store, LIMITS)


def test_the_command_runs_the_flow_unless_it_knows_no_model_has_new_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in LEAKY:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    settings = load_settings()
    cfgs = list(CFGS.values())
    # A missing table: None, so the flow runs and its export reports the error as it always did.
    assert _nothing_new(settings, cfgs) is None
    seed_source(settings.source_url, weeks=1, **SMALL)
    assert _nothing_new(settings, cfgs) is None  # every row is new
    store = store_from_settings(settings)
    for cfg in CFGS.values():
        info = export_snapshot(settings.source_url, store, cfg.dataset)
        assert info is not None
        record_validation(store, cfg.dataset.name, info.snapshot_id, {"success": True})
    idle = _nothing_new(settings, cfgs)
    assert idle is not None
    assert idle["headline"] == "3 model(s): 3 skipped"
    assert [(r["model"], r["status"], r["note"]) for r in idle["rows"]] == [
        (name, "skipped", NO_NEW_DATA) for name in sorted(CFGS)
    ]
    seed_source(settings.source_url, append_weeks=1, **SMALL)
    assert _nothing_new(settings, [CFGS["limit_optimiser"]]) is None

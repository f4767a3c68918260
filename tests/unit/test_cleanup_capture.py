"""Cleanup expires captured requests on a local store after the platform's retention.

On S3 the bucket's lifecycle rule expires ``capture/`` after
``store.retention.captured_requests_days``; a local store has no lifecycle, so cleanup plans
(a dry run shows it) and deletes each hourly capture folder whose hour ended that long ago.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.registry import Registry
from adapters.store import LocalStore, store_from_settings
from core.cleanup_plan import expired_captures, plan_cleanup, plan_rows
from core.config import RetentionPolicy
from serving.capture import Captured, CaptureWriter
from serving.experiment_routing import CaptureRoute

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def key(model: str, at: datetime, name: str = "part.jsonl") -> str:
    return f"capture/{model}/{model}/champ/{at:%Y/%m/%d/%H}/{name}"


def test_an_hour_of_capture_expires_once_it_ended_the_retention_ago() -> None:
    old = NOW - timedelta(days=90, hours=1)  # ended exactly 90 days ago
    young = NOW - timedelta(days=90)  # ends in an hour
    keys = [
        key("m", old, "a.jsonl"),
        key("m", old, "b.jsonl"),
        key("m", young),
        "models/m/v1/manifest.json",
        "capture/m/not/an/hour.jsonl",
    ]
    plan = expired_captures(keys, NOW, 90)
    assert [(p.kind, p.name, p.action, p.details["files"]) for p in plan] == [
        ("capture", key("m", old).rsplit("/", 1)[0] + "/", "delete", 2)
    ]
    assert "90-day retention" in plan[0].reason


def test_a_dry_run_shows_expired_capture_and_applying_deletes_only_it(
    mlops_home: object,
) -> None:
    from core.settings import load_settings
    from tasks.cleanup import apply_plan, take_inventory

    settings = load_settings()
    store = store_from_settings(settings)
    assert isinstance(store, LocalStore)
    route = CaptureRoute(store.url("capture/m"), "m", columns=("x",))
    now = datetime.now(UTC)
    writer = CaptureWriter()
    for at in (now - timedelta(days=40), now):
        writer.record(
            Captured(
                route, "champ", "v1", "champion", "e", "id", "application/json",
                b'{"instances": [{"x": 1}]}', b"{}", "application/json", at.timestamp(),
            )
        )  # fmt: skip
    assert asyncio.run(writer.flush()) == 2
    registry = Registry.from_settings(settings)

    inventory = take_inventory.fn(store, registry, ["m"], None, False)
    plan = plan_cleanup(inventory, RetentionPolicy(), capture_days=30)
    rows = [r for r in plan_rows(plan) if r["kind"] == "capture"]
    assert [(r["action"], r["model"]) for r in rows] == [("delete", "m")]
    assert f"{now - timedelta(days=40):%Y/%m/%d/%H}" in rows[0]["name"]

    done = apply_plan.fn(store, registry, plan, None)
    assert [d["outcome"] for d in done if d["kind"] == "capture"] == ["deleted 1 files"]
    left = store.list("capture")
    assert len(left) == 1 and f"{now:%Y/%m/%d/%H}" in left[0]
    assert not Path(store.url(rows[0]["name"])).exists()

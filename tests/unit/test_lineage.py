"""Lineage's stored form is the one older versions were written in, and reads back whole."""

from __future__ import annotations

from core.lineage import ENDPOINT_TAG_KEYS, Lineage

# A manifest's lineage as the store held it before the typed record existed.
STORED = {
    "snapshot_id": "s3",
    "snapshots": "s1,s2,s3",
    "data_sha256": "d" * 64,
    "config_hash": "c" * 64,
    "code_version": "abc123",
    "flow_run_id": "run-1",
    "holdout": "2026-11-23T00:00:00..2026-11-29T23:00:00",
    "reason": "scheduled",
    "mlflow_run_id": "mlrun",
    "mlflow_experiment_id": "7",
    "mlflow_model_uri": "models:/m-1",
    "model_contents_sha256": "e" * 64,
}


def test_a_stored_lineage_reads_back_typed_and_writes_back_identical() -> None:
    lineage = Lineage.from_dict(STORED)
    assert lineage.snapshot_ids == ("s1", "s2", "s3")
    assert lineage.holdout_start == "2026-11-23T00:00:00"
    assert lineage.holdout_end == "2026-11-29T23:00:00"
    assert lineage.mlflow_run_id == "mlrun"
    assert lineage.to_dict() == STORED


def test_keys_it_does_not_name_are_kept_and_missing_ones_get_defaults() -> None:
    lineage = Lineage.from_dict({"snapshot_id": "s9", "future_key": "x"})
    assert lineage.snapshot_ids == ("s9",)
    assert lineage.holdout_start is None and lineage.mlflow_run_id is None
    assert lineage.to_dict()["future_key"] == "x"
    assert "mlflow_run_id" not in lineage.to_dict()


def test_training_and_packaging_fill_the_later_fields_and_tags_skip_unset_ones() -> None:
    fresh = Lineage(snapshot_id="s3", code_version="abc123", flow_run_id="run-1")
    assert fresh.tags(ENDPOINT_TAG_KEYS) == {
        "snapshot_id": "s3",
        "code_version": "abc123",
        "flow_run_id": "run-1",
    }
    done = fresh.trained("mlrun", "7", "models:/m-1").packaged("e" * 64)
    assert done.to_dict()["model_contents_sha256"] == "e" * 64
    assert done.tags(ENDPOINT_TAG_KEYS)["mlflow_run_id"] == "mlrun"

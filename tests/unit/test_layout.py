"""The store's key layout: every key spelled exactly as stores written before hold them."""

from __future__ import annotations

import pytest

from adapters import layout
from adapters.layout import PublishError, version_number

# --- version names -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "number"), [("v1", 1), ("v12", 12), ("v100000", 100000)])
def test_version_number_parses(name: str, number: int) -> None:
    assert version_number(name) == number


@pytest.mark.parametrize("name", ["1", "v", "v0", "v01", "V1", "v-1", "v1.0", "v1/", " v1", ""])
def test_version_number_rejects_other_spellings(name: str) -> None:
    # One spelling per number, or "v01" and "v1" could name two folders of the same version.
    with pytest.raises(ValueError):
        version_number(name)


@pytest.mark.parametrize(("name", "number"), [("v1", 1), ("v12", 12), ("v100000", 100000)])
def test_version_name_is_the_inverse_of_version_number(name: str, number: int) -> None:
    assert layout.version_name(number) == name


# --- keys ---------------------------------------------------------------------------------------
# Literal strings on purpose: a store written before must read the same after any change here.


def test_model_keys_are_spelled_as_stores_hold_them() -> None:
    m = "abuse_detector"
    assert layout.model_prefix(m) == "models/abuse_detector"
    assert layout.version_prefix(m, "v3") == "models/abuse_detector/v3"
    assert (
        layout.version_file_key(m, "v3", "model.tar.gz") == "models/abuse_detector/v3/model.tar.gz"
    )
    assert (
        layout.version_file_key(m, "v3", "model/w.json") == "models/abuse_detector/v3/model/w.json"
    )
    assert layout.claim_key(m, "v3") == "models/abuse_detector/v3/claim.json"
    assert layout.version_manifest_key(m, "v3") == "models/abuse_detector/v3/manifest.json"
    assert layout.latest_key(m) == "models/abuse_detector/latest.json"
    assert layout.promotions_prefix(m) == "models/abuse_detector/promotions"
    assert layout.promotion_key(m, 7) == "models/abuse_detector/promotions/000007.json"
    assert layout.promotion_key(m, 1234567) == "models/abuse_detector/promotions/1234567.json"
    files = (layout.MODEL_TARBALL, layout.METRICS, layout.SCHEMA, layout.UNPACKED)
    assert files == ("model.tar.gz", "metrics.json", "schema.json", "model")


def test_snapshot_keys_are_spelled_as_stores_hold_them() -> None:
    d, s = "client_limits", "20260316T120000Z-ab12cd34"
    assert layout.snapshot_prefix(d) == "snapshots/client_limits"
    assert layout.snapshot_prefix(d, s) == f"snapshots/client_limits/{s}"
    assert layout.snapshot_part_name(0) == "part-00000.parquet"
    assert layout.snapshot_part_name(12) == "part-00012.parquet"
    assert layout.snapshot_file_key(d, s, "part-00000.parquet") == (
        f"snapshots/client_limits/{s}/part-00000.parquet"
    )
    assert layout.snapshot_manifest_key(d, s) == f"snapshots/client_limits/{s}/manifest.json"
    assert layout.snapshot_validation_key(d, s) == f"snapshots/client_limits/{s}/validation.json"


@pytest.mark.parametrize("model", ["", "a/b", "../x", ".m", "-m"])
def test_keys_of_an_invalid_model_name_are_refused(model: str) -> None:
    # A key function never spells a key outside the layout.
    with pytest.raises(PublishError):
        layout.model_prefix(model)
    with pytest.raises(PublishError):
        layout.claim_key(model, "v1")


def test_keys_of_an_invalid_version_name_are_refused() -> None:
    with pytest.raises(ValueError):
        layout.version_prefix("m", "latest")
    with pytest.raises(ValueError):
        layout.version_manifest_key("m", "v01")


# --- keys read back -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("models/m/v1/manifest.json", ("m", "v1", "manifest.json")),
        ("models/m/v12/model/weights.json", ("m", "v12", "model/weights.json")),
        ("models/m/latest.json", None),
        ("models/m/promotions/000001.json", None),
        ("models/m/vnext/x", None),
        ("models/m/v01/x", None),
        ("models/m/v7", None),  # a file named like a version is not a version's file
        ("snapshots/m/v1/manifest.json", None),
    ],
)
def test_parse_version_key(key: str, parsed: tuple[str, str, str] | None) -> None:
    assert layout.parse_version_key(key) == parsed


def test_promotion_seq_reads_the_record_number() -> None:
    assert layout.promotion_seq("models/m/promotions/000042.json") == 42
    assert layout.promotion_seq("models/m/promotions/notes.json") is None
    assert layout.promotion_seq("models/m/promotions/42.json") is None


def test_model_names_of_keys() -> None:
    keys = ["models/a/v1/claim.json", "models/b/latest.json", "models/c", "snapshots/d/x/y"]
    assert layout.model_names(keys) == {"a", "b"}


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("snapshots/d/s1/manifest.json", ("d", "s1", "manifest.json")),
        ("snapshots/d/s1/part-00000.parquet", ("d", "s1", "part-00000.parquet")),
        ("snapshots/d/manifest.json", None),
        ("models/d/s1/manifest.json", None),
    ],
)
def test_parse_snapshot_key(key: str, parsed: tuple[str, str, str] | None) -> None:
    assert layout.parse_snapshot_key(key) == parsed


# --- documents ----------------------------------------------------------------------------------


def test_documents_are_stable_bytes() -> None:
    # Pointers and the serving container compare documents by sha256.
    assert layout.document_bytes({"b": 1, "a": [1, 2]}) == layout.document_bytes(
        {"a": [1, 2], "b": 1}
    )
    assert layout.document_bytes({"a": 1}) == b'{\n  "a": 1\n}\n'

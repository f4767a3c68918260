"""Lineage: where a model version came from (data, config, code, runs), as one typed record.

The record is stored in each version's manifest (``lineage``) and, in part, as MLflow tags and
endpoint tags. Its stored form is a flat mapping of strings, unchanged since the first store
(lists joined with commas, the holdout as ``start..end``), so old versions read back: that
form is written by :meth:`Lineage.to_dict` and parsed by :meth:`Lineage.from_dict` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

TAG_KEYS = ("snapshot_id", "data_sha256", "config_hash", "code_version", "flow_run_id", "reason")
"""What a registered MLflow version carries as tags (with its store version and manifest hash)."""

ENDPOINT_TAG_KEYS = ("snapshot_id", "config_hash", "code_version", "flow_run_id", "mlflow_run_id")
"""What endpoint resources are tagged with (SageMaker allows 50 tags; keep them few)."""

SHOWN_KEYS = ("snapshot_id", "code_version", "flow_run_id", "mlflow_run_id")
"""What ``mlops status`` prints of a champion's lineage."""

_SET_LATER = ("mlflow_run_id", "mlflow_experiment_id", "mlflow_model_uri", "model_contents_sha256")
"""Fields filled once trained and published; left out of the stored form while unset."""


@dataclass(frozen=True)
class Lineage:
    """Where one trained model came from.

    Attributes:
        snapshot_id: the newest snapshot in the training window.
        snapshot_ids: every snapshot the training window read, oldest first.
        data_sha256: one sha256 over those snapshots' hashes.
        config_hash: sha256 of the model's config.
        code_version: ``git describe`` of the code, or the package version.
        flow_run_id: the Prefect flow run that trained it (``none`` outside a flow).
        holdout_start: first event time of the fresh holdout (ISO 8601).
        holdout_end: last event time of the holdout (ISO 8601).
        reason: why the run happened (schedule, a person, a drift alert).
        mlflow_run_id: the MLflow run of the training, once trained.
        mlflow_experiment_id: its experiment.
        mlflow_model_uri: the model logged in that run.
        model_contents_sha256: sha256 of the model directory's ``contents.json``, once published.
        extra: keys a newer or older writer stored that this record does not name; kept.
    """

    snapshot_id: str
    snapshot_ids: tuple[str, ...] = ()
    data_sha256: str = ""
    config_hash: str = ""
    code_version: str = ""
    flow_run_id: str = "none"
    holdout_start: str | None = None
    holdout_end: str | None = None
    reason: str = ""
    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    mlflow_model_uri: str | None = None
    model_contents_sha256: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def trained(self, run_id: str, experiment_id: str, model_uri: str) -> Lineage:
        """This lineage with the MLflow run that trained the model."""
        return replace(
            self,
            mlflow_run_id=run_id,
            mlflow_experiment_id=experiment_id,
            mlflow_model_uri=model_uri,
        )

    def packaged(self, contents_sha256: str) -> Lineage:
        """This lineage with the sha256 of the model directory's ``contents.json``."""
        return replace(self, model_contents_sha256=contents_sha256)

    def to_dict(self) -> dict[str, str]:
        """The stored form (manifest ``lineage``): flat strings, unset fields left out."""
        out: dict[str, str] = {
            "snapshot_id": self.snapshot_id,
            "snapshots": ",".join(self.snapshot_ids),
            "data_sha256": self.data_sha256,
            "config_hash": self.config_hash,
            "code_version": self.code_version,
            "flow_run_id": self.flow_run_id,
            "holdout": f"{self.holdout_start or ''}..{self.holdout_end or ''}",
            "reason": self.reason,
        }
        for name in _SET_LATER:
            if (value := getattr(self, name)) is not None:
                out[name] = value
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Lineage:
        """Read the stored form back (a manifest's ``lineage``); missing keys get defaults."""
        raw = {str(k): str(v) for k, v in stored.items() if v is not None}
        snapshots = tuple(s for s in raw.pop("snapshots", "").split(",") if s)
        snapshot_id = raw.pop("snapshot_id", "")
        if not snapshots and snapshot_id:
            snapshots = (snapshot_id,)
        start, _, end = raw.pop("holdout", "").partition("..")
        named = {f.name for f in fields(cls)} - {"snapshot_ids", "holdout_start", "holdout_end"}
        known = {k: raw.pop(k) for k in list(raw) if k in named and k != "extra"}
        return cls(
            snapshot_id=snapshot_id,
            snapshot_ids=snapshots,
            holdout_start=start or None,
            holdout_end=end or None,
            extra=raw,
            **known,
        )

    def tags(self, keys: tuple[str, ...]) -> dict[str, str]:
        """The stored fields named by ``keys`` that are set, as tags."""
        stored = self.to_dict()
        return {k: stored[k] for k in keys if stored.get(k)}

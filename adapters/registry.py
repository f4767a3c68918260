"""MLflow adapter: experiments, training runs, logged models, registered versions and aliases.

One experiment per model (``intelli-rate/<model>``), one run per training, one registered
model version per published store version, tagged with its lineage. Promotion moves aliases
(``challenger``, ``champion``); deprecated stages are never used.

A :class:`Registry` holds the tracking URI (``MLFLOW_TRACKING_URI``, default a SQLite file
under ``$MLOPS_HOME``); a flow builds one and passes it to the tasks. This is the only module
that imports MLflow: families describe how they are logged (:class:`~core.families.MlflowModel`)
and this module does the logging. Nothing is configured at import time.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.families import MlflowModel
    from core.settings import Settings

EXPERIMENT_PREFIX = "intelli-rate"
CHAMPION = "champion"
CHALLENGER = "challenger"


def experiment_name(model: str) -> str:
    """The MLflow experiment of ``model``."""
    return f"{EXPERIMENT_PREFIX}/{model}"


def _not_found(exc: Exception) -> bool:
    """Whether MLflow said the model or version does not exist (not an outage)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


@dataclass(frozen=True)
class Registry:
    """The MLflow tracking server and model registry at ``tracking_uri``.

    Attributes:
        tracking_uri: where runs and registered models live (also the registry URI).
        artifact_root: where a new experiment keeps its artifacts with an embedded (SQLite)
            store; ``None`` lets a tracking server use its own root.
    """

    tracking_uri: str
    artifact_root: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry the settings name (``MLFLOW_TRACKING_URI``)."""
        return cls(settings.tracking_uri, settings.mlflow_artifact_root)

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # --- training runs ---------------------------------------------------------------------

    def ensure_experiment(self, model: str) -> str:
        """Return the experiment id of ``model``, creating it on first use.

        With the embedded SQLite store, artifacts go under ``artifact_root`` (``$MLOPS_HOME``)
        so that nothing lands in the working directory.
        """
        client = self._client()
        name = experiment_name(model)
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        root = self.artifact_root
        location = f"{root.rstrip('/')}/{model}" if root else None
        try:
            return str(
                client.create_experiment(name, artifact_location=location, tags={"model": model})
            )
        except Exception:  # created concurrently by another run
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    @contextmanager
    def training_run(
        self, experiment_id: str, run_name: str, tags: dict[str, str]
    ) -> Iterator[str]:
        """Start an MLflow run (the active one inside the block) and yield its id.

        The run ends when the block does, as failed if the block raised.
        """
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            yield str(run.info.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log parameters to the active run."""
        import mlflow

        mlflow.log_params(params)

    def set_tag(self, key: str, value: str) -> None:
        """Set one tag on the active run."""
        import mlflow

        mlflow.set_tag(key, value)

    def log_snapshots(self, snapshots: list[dict[str, Any]]) -> None:
        """Record the run's input snapshots as MLflow datasets (``mlflow.log_inputs``).

        Each dict has ``dataset``, ``snapshot_id``, ``sha256``, ``uri`` and ``rows``. The
        dataset's name is ``<dataset>/<snapshot_id>`` and its source the store URI; its digest
        is the snapshot's sha256, cut to the 36 characters MLflow stores, and the full sha256
        is the input's ``sha256`` tag.
        """
        import mlflow
        from mlflow.data.meta_dataset import MetaDataset

        for snap in snapshots:
            dataset = MetaDataset(  # type: ignore[abstract]  # profile is optional at runtime
                source=_dataset_source(str(snap["uri"])),
                name=f"{snap['dataset']}/{snap['snapshot_id']}",
                digest=str(snap["sha256"])[:36],
            )
            tags = {"sha256": str(snap["sha256"]), "rows": str(snap["rows"])}
            mlflow.log_input(dataset, context="training", tags=tags)

    def log_summary(
        self, params: dict[str, str], metrics: dict[str, float], tables: dict[str, Any]
    ) -> None:
        """Log what training decided to the active run: params, metrics, ``<name>.json`` tables."""
        import mlflow
        import pandas as pd

        if params:
            mlflow.log_params(params)
        clean = {k: float(v) for k, v in metrics.items() if v == v}  # drop NaN
        if clean:
            mlflow.log_metrics(clean)
        for name, rows in tables.items():
            if rows:
                mlflow.log_table(pd.DataFrame(rows), f"{name}.json")

    def log_evaluation(
        self, prefix: str, metrics: dict[str, float], figures: dict[str, Any] | None = None
    ) -> None:
        """Log metrics (as ``{prefix}{name}``) in one batch and figures to the active run."""
        import mlflow

        clean = {f"{prefix}{k}": float(v) for k, v in metrics.items() if v == v}  # drop NaN
        mlflow.log_metrics(clean)
        for name, fig in (figures or {}).items():
            mlflow.log_figure(fig, f"plots/{prefix}{name}")

    def log_model(self, spec: MlflowModel, name: str = "model") -> str:
        """Log a family's model to the active run with the flavour it names; return its URI.

        ``pyfunc`` models are a loader module (the family's own) with the model directory as
        data and the family's modules shipped as code, so loading needs the pinned libraries,
        not this project.
        """
        import mlflow

        kwargs: dict[str, Any] = {
            "name": name,
            "input_example": spec.input_example,
            "pip_requirements": list(spec.pip_requirements),
            "metadata": dict(spec.metadata),
            **spec.options,
        }
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            # MLflow hints that integer columns cannot carry missing values: none may, here
            # (the families refuse nulls), and int64 counts are the schema on purpose.
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            if spec.output_example is not None:
                kwargs["signature"] = _signature(spec)
            if spec.flavour == "pyfunc":
                kwargs |= _pyfunc_files(spec, Path(tmp))
                info = mlflow.pyfunc.log_model(**kwargs)
            else:
                flavour = getattr(mlflow, spec.flavour)
                info = flavour.log_model(spec.model, **kwargs)
        return str(info.model_uri)

    # --- finished runs ---------------------------------------------------------------------

    def log_dict(self, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
        """Attach a JSON document to a (possibly finished) run."""
        self._client().log_dict(run_id, data, artifact_file)

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set tags on a (possibly finished) run."""
        client = self._client()
        for key, value in tags.items():
            client.set_tag(run_id, key, value)

    def log_metrics_to_run(self, run_id: str, metrics: dict[str, float]) -> None:
        """Log metrics to a (possibly finished) run in one batch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v == v]
        self._client().log_batch(run_id, metrics=batch)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """Where a person finds the run: a link on a tracking server, the UI route otherwise."""
        route = f"#/experiments/{experiment_id}/runs/{run_id}"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/{route}"
        return f"mlflow ui --backend-store-uri {self.tracking_uri} -> {route}"

    # --- registered versions and aliases ---------------------------------------------------

    def register_version(
        self, model: str, model_uri: str, run_id: str, tags: dict[str, str], description: str = ""
    ) -> str:
        """Create a registered model version from a logged model; return its version number.

        Idempotent per store version: if a version already carries the same ``store_version``
        tag (a retried task), that version is returned instead of a duplicate.
        """
        client = self._client()
        try:
            client.create_registered_model(model, tags={"project": EXPERIMENT_PREFIX})
        except Exception as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise
        store_version = tags.get("store_version")
        if store_version:
            for mv in client.search_model_versions(f"name='{model}'"):
                if mv.tags.get("store_version") == store_version and mv.run_id == run_id:
                    return str(mv.version)
        mv = client.create_model_version(
            name=model, source=model_uri, run_id=run_id, tags=tags, description=description
        )
        return str(mv.version)

    def set_alias(self, model: str, alias: str, version: str) -> None:
        """Point ``alias`` of ``model`` at ``version``."""
        self._client().set_registered_model_alias(model, alias, version)

    def get_alias(self, model: str, alias: str) -> dict[str, Any] | None:
        """The version an alias points at, with its tags; ``None`` if unset or no such model."""
        try:
            mv = self._client().get_model_version_by_alias(model, alias)
        except Exception:
            return None
        return {
            "version": str(mv.version),
            "run_id": mv.run_id,
            "source": mv.source,
            "tags": dict(mv.tags),
            "aliases": list(getattr(mv, "aliases", []) or []),
        }

    def version_for_store_version(self, model: str, store_version: str) -> str | None:
        """The registered version tagged with ``store_version`` (newest if several), or None."""
        try:
            found = self._client().search_model_versions(
                f"name='{model}' and tags.store_version='{store_version}'"
            )
        except Exception as exc:  # no such registered model yet; an outage is raised
            if _not_found(exc):
                return None
            raise
        versions = sorted((int(mv.version) for mv in found), reverse=True)
        return str(versions[0]) if versions else None

    def list_versions(self, model: str) -> list[dict[str, Any]]:
        """Every registered version of ``model`` with its tags and aliases, oldest first."""
        client = self._client()
        try:
            found = client.search_model_versions(f"name='{model}'")
        except Exception:
            return []
        if not found:
            # Never registered (a model not promoted yet): no aliases to read either, and
            # get_registered_model would raise.
            return []
        # search_model_versions leaves aliases empty; the registered model holds the alias map.
        by_version: dict[str, list[str]] = {}
        for alias, version in (client.get_registered_model(model).aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        rows = [
            {
                "version": str(mv.version),
                "tags": dict(mv.tags),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "run_id": mv.run_id,
            }
            for mv in found
        ]
        return sorted(rows, key=lambda r: int(r["version"]))

    def delete_version(self, model: str, version: str) -> None:
        """Delete one registered version (never one holding an alias; the caller checks)."""
        self._client().delete_model_version(model, version)


# The request types of ``Family.input_columns`` (and schema.json) as MLflow column types. A
# timestamp travels as an ISO 8601 string, as in the JSON request and schema.json's example:
# MLflow 3's schema enforcement refuses to turn strings into its ``datetime`` type, so a
# ``datetime`` column would refuse the documented request; the family parses the string.
_COLUMN_TYPES = {"float64": "double", "int64": "long", "string": "string", "timestamp": "string"}


def _signature(spec: MlflowModel) -> Any:
    """Inputs as ``spec.input_schema`` (schema.json's), outputs inferred from the example answer.

    A loader-module pyfunc is not run at logging time, so the schema is stated here.
    """
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema

    inferred = infer_signature(spec.input_example, spec.output_example)
    if spec.input_schema is None:
        return inferred
    inputs = Schema(
        [ColSpec(_COLUMN_TYPES[kind], name) for name, kind in spec.input_schema.items()]
    )
    return ModelSignature(inputs=inputs, outputs=inferred.outputs)


def _dataset_source(uri: str) -> Any:
    """The MLflow dataset source of a store URI: S3 or a local path (``file`` otherwise)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    try:
        with warnings.catch_warnings():
            # A local path matches MLflow's local source twice (two registered resolvers).
            warnings.filterwarnings("ignore", message="The specified dataset source can be")
            return resolve_dataset_source(uri)
    except Exception:  # a scheme MLflow has no source for: keep the URI as a reference
        return HTTPDatasetSource(uri)


def _pyfunc_files(spec: MlflowModel, tmp: Path) -> dict[str, Any]:
    """``log_model`` arguments of a loader-module pyfunc: the saved model and the code."""
    data = tmp / "model"
    data.mkdir()
    spec.save(data)
    return {
        "loader_module": spec.loader_module,
        "data_path": str(data),
        "code_paths": ship_code(spec.code_modules, tmp / "code"),
    }


def ship_code(modules: Sequence[str], code: Path) -> list[str]:
    """Copy ``modules`` (dotted names) under ``code``, keeping their package path.

    Returns MLflow's ``code_paths``: one directory per top-level package.
    """
    for module in modules:
        source = Path(__import__(module, fromlist=["_"]).__file__ or "")
        dest = code.joinpath(*module.split(".")).with_suffix(".py")
        if source.name == "__init__.py":
            dest = dest.with_suffix("") / "__init__.py"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    return [str(code / name) for name in sorted({m.split(".")[0] for m in modules})]

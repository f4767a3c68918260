"""MLflow adapter: experiments, training runs, registered model versions and aliases.

One experiment per model (``intelli-rate/<model>``), one run per training, one registered
model version per published store version, tagged with its lineage. Promotion moves aliases
(``challenger``, ``champion``); deprecated stages are never used.

The tracking URI comes from settings (``MLFLOW_TRACKING_URI``, default a SQLite file under
``$MLOPS_HOME``) and is passed to every call; nothing is configured at import time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EXPERIMENT_PREFIX = "intelli-rate"
CHAMPION = "champion"
CHALLENGER = "challenger"


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def experiment_name(model: str) -> str:
    """The MLflow experiment of ``model``."""
    return f"{EXPERIMENT_PREFIX}/{model}"


def ensure_experiment(tracking_uri: str, model: str, artifact_root: str | None = None) -> str:
    """Return the experiment id of ``model``, creating it on first use.

    With the embedded SQLite store, artifacts go under ``artifact_root`` (``$MLOPS_HOME``) so
    that nothing lands in the working directory.
    """
    client = _client(tracking_uri)
    name = experiment_name(model)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = f"{artifact_root.rstrip('/')}/{model}" if artifact_root else None
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
    tracking_uri: str, experiment_id: str, run_name: str, tags: dict[str, str]
) -> Iterator[Any]:
    """Start an MLflow run (the active run inside the block) and end it, failed on error."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        yield run


def log_evaluation(
    prefix: str, metrics: dict[str, float], figures: dict[str, Any] | None = None
) -> None:
    """Log metrics (as ``{prefix}{name}``) in one batch and figures to the active run."""
    import mlflow

    clean = {f"{prefix}{k}": float(v) for k, v in metrics.items() if v == v}  # drop NaN
    mlflow.log_metrics(clean)
    for name, fig in (figures or {}).items():
        mlflow.log_figure(fig, f"plots/{prefix}{name}")


def log_dict(run_id: str, tracking_uri: str, data: dict[str, Any], artifact_file: str) -> None:
    """Attach a JSON document to a (possibly finished) run."""
    _client(tracking_uri).log_dict(run_id, data, artifact_file)


def set_run_tags(run_id: str, tracking_uri: str, tags: dict[str, str]) -> None:
    """Set tags on a (possibly finished) run."""
    client = _client(tracking_uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def register_version(
    tracking_uri: str,
    model: str,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    description: str = "",
) -> str:
    """Create a registered model version from a logged model; return its version number.

    Idempotent per store version: if a version already carries the same ``store_version`` tag
    (a retried task), that version is returned instead of a duplicate.
    """
    client = _client(tracking_uri)
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


def set_alias(tracking_uri: str, model: str, alias: str, version: str) -> None:
    """Point ``alias`` of ``model`` at ``version``."""
    _client(tracking_uri).set_registered_model_alias(model, alias, version)


def get_alias(tracking_uri: str, model: str, alias: str) -> dict[str, Any] | None:
    """The version an alias points at, with its tags; ``None`` if unset or no such model."""
    client = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(model, alias)
    except Exception:
        return None
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "tags": dict(mv.tags),
        "aliases": list(getattr(mv, "aliases", []) or []),
    }


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where a person finds the run: a link on a tracking server, the UI route otherwise."""
    route = f"#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{route}"
    return f"mlflow ui --backend-store-uri {tracking_uri} -> {route}"


def log_metrics_to_run(run_id: str, tracking_uri: str, metrics: dict[str, float]) -> None:
    """Log metrics to a (possibly finished) run in one batch."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v == v]
    _client(tracking_uri).log_batch(run_id, metrics=batch)


def _not_found(exc: Exception) -> bool:
    """Whether MLflow said the model or version does not exist (not an outage)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def version_for_store_version(tracking_uri: str, model: str, store_version: str) -> str | None:
    """The registered version tagged with ``store_version`` (newest if several), or None."""
    client = _client(tracking_uri)
    try:
        found = client.search_model_versions(
            f"name='{model}' and tags.store_version='{store_version}'"
        )
    except Exception as exc:  # no such registered model yet; an outage is raised, not hidden
        if _not_found(exc):
            return None
        raise
    versions = sorted((int(mv.version) for mv in found), reverse=True)
    return str(versions[0]) if versions else None


def list_versions(tracking_uri: str, model: str) -> list[dict[str, Any]]:
    """Every registered version of ``model`` with its tags and aliases, oldest first."""
    client = _client(tracking_uri)
    try:
        found = client.search_model_versions(f"name='{model}'")
    except Exception:
        return []
    if not found:
        # Never registered (a model that has not been promoted yet): no aliases to read either,
        # and get_registered_model would raise.
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


def delete_version(tracking_uri: str, model: str, version: str) -> None:
    """Delete one registered version (never one holding an alias; the caller checks)."""
    _client(tracking_uri).delete_model_version(model, version)

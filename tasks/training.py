"""Train and evaluate: the training window, the challenger's MLflow run, the champion re-scored.

Plain helpers first (no Prefect), then the Prefect tasks that the retrain flow calls. Every
task can also be called from a notebook as ``task.fn(...)`` or directly outside a flow.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters.git import code_version
from adapters.layout import MODEL_TARBALL, IntegrityError, snapshot_prefix
from adapters.package import extract_tarball
from adapters.pointer import read_latest, recorded_manifest_sha256
from adapters.prefect_api import current_flow_run_id
from adapters.registry import Registry
from adapters.snapshots import list_snapshots, read_snapshots
from adapters.store import Store
from adapters.training.sagemaker_job import SageMakerTrainer, TrainingJobFailed
from adapters.versions import verify_version
from core.config import ModelConfig, RunnerConfig
from core.families import Evaluation, Family, TrainingSummary, get_family
from core.lineage import Lineage
from tasks import retry_unless_tampered
from tasks.runners import runner_map

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The training window split in time: everything before the holdout, and the holdout."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    snapshot_ids: list[str]
    newest_snapshot: str
    data_sha256: str
    holdout_start: str
    holdout_end: str
    snapshots: list[SnapshotRef] = field(default_factory=list)


@dataclass
class Challenger:
    """A freshly trained model, its MLflow run and its holdout metrics."""

    model: str
    family: str
    run_id: str
    experiment_id: str
    model_uri: str
    metrics: dict[str, float]
    backtest: dict[str, float]
    model_dir: Path
    schema: dict[str, Any]
    train_rows: int
    holdout_rows: int
    summary: TrainingSummary = field(default_factory=TrainingSummary)


@dataclass
class ChampionScore:
    """The current champion re-scored on the challenger's holdout (or why it could not be)."""

    version: str | None
    metrics: dict[str, float] | None
    note: str
    latest: dict[str, Any] | None = field(default=None)


def scratch_dir(work_dir: Path, prefix: str) -> Path:
    """A fresh scratch directory under ``work_dir`` (``$MLOPS_HOME/work``)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=work_dir))


def split_window(
    frame: pd.DataFrame, cfg: ModelConfig
) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    """Split by event time: the newest ``holdout_days`` whole days are the holdout.

    Returns:
        ``(train, holdout, holdout_start, holdout_end)``; train covers ``training_days`` before.

    Raises:
        ValueError: the window is empty or either side of the split has no rows.
    """
    col = cfg.dataset.event_time
    if frame.empty:
        raise ValueError(f"{cfg.name}: no rows to train on")
    times = pd.to_datetime(frame[col])
    end = times.max().floor("D") + timedelta(days=1)
    cutoff = end - timedelta(days=cfg.split.holdout_days)
    start = cutoff - timedelta(days=cfg.split.training_days)
    train = frame[(times >= start) & (times < cutoff)].reset_index(drop=True)
    holdout = frame[times >= cutoff].reset_index(drop=True)
    if train.empty or holdout.empty:
        raise ValueError(
            f"{cfg.name}: split at {cutoff} leaves train={len(train)} "
            f"and holdout={len(holdout)} rows; "
            f"need more than {cfg.split.holdout_days} days of data"
        )
    return train, holdout, cutoff.isoformat(), times.max().isoformat()


def combined_hash(hashes: list[str]) -> str:
    """One sha256 over the snapshots' hashes, in order (lineage of the training data)."""
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


@dataclass(frozen=True)
class SnapshotRef:
    """One snapshot a training read: what MLflow records as the run's input dataset."""

    dataset: str
    snapshot_id: str
    sha256: str
    uri: str
    rows: int


@dataclass
class WindowData:
    """The rows of the training window (train and holdout, not yet split) and their lineage."""

    frame: pd.DataFrame
    snapshot_ids: list[str]
    newest_snapshot: str
    data_sha256: str
    snapshots: list[SnapshotRef] = field(default_factory=list)


def _ends(manifest: dict[str, Any]) -> pd.Timestamp:
    return pd.Timestamp(manifest["event_time"]["max"])


def _newest_up_to(event_time: dict[str, Any], latest: pd.Timestamp) -> pd.Timestamp | None:
    """The newest event time up to ``latest`` a snapshot surely holds (its min or its max)."""
    for bound in (event_time.get("max"), event_time.get("min")):
        if bound is not None and pd.Timestamp(bound) <= latest:
            return pd.Timestamp(bound)
    return None


def _horizon(cfg: ModelConfig, newest: pd.Timestamp) -> pd.Timestamp:
    """The first event time of the window whose newest row is ``newest``."""
    end = newest.floor("D") + timedelta(days=1)
    return end - timedelta(days=cfg.split.holdout_days + cfg.split.training_days)


@task(name="load-training-window", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_training_window(
    store: Store, cfg: ModelConfig, new_snapshot: str | None, started: datetime | None = None
) -> WindowData:
    """Read the accepted snapshots in the training window, plus the new one.

    The new snapshot is included before it is validated: validation runs on exactly this frame
    so that duplicates across snapshots are caught too. Rows without an event time stay in so
    that validation can report them, and so do rows from the future: the window ends at the
    newest event time no later than ``started`` (the run's start, default now) plus
    ``dataset.future_tolerance_hours``, so a row dated years ahead cannot move it.
    """
    manifests = [
        m
        for m in list_snapshots(store, cfg.dataset.name)
        if m["status"] == "accepted" or m["snapshot_id"] == new_snapshot
    ]
    if not manifests:
        raise ValueError(f"{cfg.name}: no snapshots of {cfg.dataset.name}; run an export first")
    latest = pd.Timestamp(cfg.dataset.latest_event_time(started or datetime.now(UTC)))
    # The window ends at the newest row not from the future. The manifests bound it from below
    # (a snapshot whose max is past ``latest`` has rows from its min on): read from there.
    bounds = [_newest_up_to(m["event_time"], latest) for m in manifests]
    floor = max((b for b in bounds if b is not None), default=latest)
    read = [m for m in manifests if _ends(m) >= _horizon(cfg, floor)]
    frame = read_snapshots(store, cfg.dataset, [m["snapshot_id"] for m in read])
    times = pd.to_datetime(frame[cfg.dataset.event_time])
    present = times[times <= latest]
    horizon = _horizon(cfg, present.max() if len(present) else floor)
    used = [m for m in read if _ends(m) >= horizon]
    frame = frame[(times >= horizon) | times.isna()].reset_index(drop=True)
    return WindowData(
        frame=frame,
        snapshot_ids=[m["snapshot_id"] for m in used],
        newest_snapshot=new_snapshot or used[-1]["snapshot_id"],
        data_sha256=combined_hash([m["sha256"] for m in used]),
        snapshots=[
            SnapshotRef(
                dataset=cfg.dataset.name,
                snapshot_id=str(m["snapshot_id"]),
                sha256=str(m["sha256"]),
                uri=store.url(snapshot_prefix(cfg.dataset.name, str(m["snapshot_id"]))),
                rows=int(m.get("rows", 0)),
            )
            for m in used
        ],
    )


@task(name="split-holdout", cache_policy=NO_CACHE)
def split_holdout(cfg: ModelConfig, window: WindowData) -> TrainingData:
    """Split the validated window in time: the newest ``holdout_days`` are the fresh holdout."""
    train, holdout, start, end = split_window(window.frame, cfg)
    return TrainingData(
        train=train,
        holdout=holdout,
        snapshot_ids=window.snapshot_ids,
        newest_snapshot=window.newest_snapshot,
        data_sha256=window.data_sha256,
        holdout_start=start,
        holdout_end=end,
        snapshots=window.snapshots,
    )


def _close(evaluation: Evaluation) -> None:
    from matplotlib.figure import Figure

    for fig in evaluation.figures.values():
        if isinstance(fig, Figure):
            fig.clear()


@task(name="describe-lineage", cache_policy=NO_CACHE)
def describe_lineage(cfg: ModelConfig, data: TrainingData, reason: str) -> Lineage:
    """Lineage of a training: snapshots and data hash, config hash, code version, flow run."""
    return Lineage(
        snapshot_id=data.newest_snapshot,
        snapshot_ids=tuple(data.snapshot_ids),
        data_sha256=data.data_sha256,
        config_hash=cfg.config_hash(),
        code_version=code_version(),
        flow_run_id=current_flow_run_id() or "none",
        holdout_start=data.holdout_start,
        holdout_end=data.holdout_end,
        reason=reason,
    )


def fit(
    family: Family,
    cfg: ModelConfig,
    data: TrainingData,
    params: Any,
    trainer: SageMakerTrainer | None,
    work_dir: Path,
    runner: RunnerConfig | None = None,
) -> tuple[Any, Path | None, str | None]:
    """Train where ``cfg.training.target`` says: in this process, or as a training job.

    In this process, a family whose ``train`` takes a ``mapper`` (independent parts: a
    forecaster's services) gets one that runs the parts on ``runner``
    (:func:`tasks.runners.runner_map`); without a runner, the builtin ``map``.

    Returns:
        ``(model, model files, job name)``: files and job name only from a training job,
        whose files are published as they came back (the job ran the same family code).

    Raises:
        ValueError: the target is ``sagemaker`` and no trainer was given.
    """
    if cfg.training.target == "local":
        fan_out = {}
        if runner is not None and "mapper" in inspect.signature(family.train).parameters:
            fan_out["mapper"] = runner_map(runner)
        return family.train(data.train, params, cfg.seed, **fan_out), None, None
    if trainer is None:
        raise ValueError(
            f"{cfg.name}: training.target is {cfg.training.target} but no trainer was given "
            "(adapters.training.open_trainer builds it from settings)"
        )
    say = _run_logger()
    say.info("%s: training as a SageMaker training job (%s)", cfg.name, cfg.training.instance_type)
    try:
        job = trainer.train(cfg, data.train, work_dir)
    except TrainingJobFailed as exc:  # the job's own log, then its reason as the run's failure
        for line in exc.logs:
            say.info("[%s] %s", exc.job_name, line)
        raise
    for line in job.logs:
        say.info("[%s] %s", job.job_name, line)
    return family.load(job.model_dir), job.model_dir, job.job_name


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a run (the UI shows it), this module's outside one."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


@task(name="train-challenger", cache_policy=NO_CACHE)
def train_challenger(
    registry: Registry,
    cfg: ModelConfig,
    data: TrainingData,
    lineage: Lineage,
    work_dir: Path,
    trainer: SageMakerTrainer | None = None,
    runner: RunnerConfig | None = None,
) -> Challenger:
    """Fit the family on the training window and score it on the holdout, in one MLflow run.

    Logs the input snapshots (``log_input``: name, store URI, sha256), params, what training
    decided (:meth:`Family.summary`: a forecaster's candidates), holdout metrics, backtest
    metrics, plots and the model; the model's files go to a new scratch directory under
    ``work_dir``. With ``training.target: sagemaker`` the fit runs as a SageMaker training job
    (``trainer``, see :func:`fit`); everything after it is the same. In this process a
    forecaster's services fan out over ``runner`` (see :func:`fit`).
    """
    family = get_family(cfg.family)
    params = family.Params.model_validate(cfg.params)
    experiment_id = registry.ensure_experiment(cfg.name)
    tags = {
        "model": cfg.name,
        "family": cfg.family,
        **{f"lineage.{k}": v for k, v in lineage.to_dict().items()},
    }
    with registry.training_run(experiment_id, f"{cfg.name}-train", tags) as run_id:
        registry.log_snapshots([s.__dict__ for s in data.snapshots])
        registry.log_params(
            {
                **params.model_dump(),
                "seed": cfg.seed,
                "train_rows": len(data.train),
                "holdout_rows": len(data.holdout),
                "holdout_start": data.holdout_start,
            }
        )
        model, trained_dir, job = fit(family, cfg, data, params, trainer, work_dir, runner)
        if job:
            registry.set_tag("training.job", job)
        summary = family.summary(model)
        registry.log_summary(summary.params, summary.metrics, summary.tables)
        evaluation = family.evaluate(model, data.holdout, data.train)
        registry.log_evaluation("", evaluation.metrics, evaluation.figures)
        _close(evaluation)
        try:
            backtest = family.backtest(data.train, params, cfg.seed)
        except ValueError as exc:  # diagnostics only: too little history must not block training
            log.warning("%s: backtest skipped: %s", cfg.name, exc)
            registry.set_tag("backtest.skipped", str(exc)[:500])
            backtest = {}
        if backtest:
            registry.log_evaluation("", backtest)
        example = family.example_request(data.holdout)
        model_uri = registry.log_model(family.mlflow_model(model, pd.DataFrame(example)))
        model_dir = scratch_dir(work_dir, f"{cfg.name}-model-")
        if trained_dir is None:
            family.save(model, model_dir)
        else:
            shutil.copytree(trained_dir, model_dir, dirs_exist_ok=True)
        schema = {
            "model": cfg.name,
            "family": cfg.family,
            "input": family.input_columns(),
            "example_request": example,
        }
        registry.log_dict(run_id, schema, "schema.json")
    return Challenger(
        model=cfg.name,
        family=cfg.family,
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=model_uri,
        metrics=evaluation.metrics,
        backtest=backtest,
        model_dir=model_dir,
        schema=schema,
        train_rows=len(data.train),
        holdout_rows=len(data.holdout),
        summary=summary,
    )


def load_published_model(
    store: Store,
    cfg: ModelConfig,
    version: str,
    dest: Path,
    expected_manifest_sha256: str | None = None,
) -> Any:
    """Download a published version, check every sha256, unpack and load it.

    ``expected_manifest_sha256`` (what ``latest.json`` recorded) refuses a rewritten version.
    """
    verify_version(
        store, cfg.name, version, dest, expected_manifest_sha256=expected_manifest_sha256
    )
    unpacked = extract_tarball(dest / MODEL_TARBALL, dest / "model")
    return get_family(cfg.family).load(unpacked)


@task(
    name="score-champion",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_tampered,
    cache_policy=NO_CACHE,
)
def score_champion(
    store: Store, cfg: ModelConfig, data: TrainingData, work_dir: Path
) -> ChampionScore:
    """Re-score the current champion (what ``latest.json`` points at) on the new holdout.

    No champion yet gives ``metrics=None`` and the gate applies the floors only. A champion
    that cannot be loaded or scored also gives ``metrics=None``, with the reason as the note:
    the gate then rejects the challenger unless ``gate.unscored_champion`` is ``floors``.

    Raises:
        IntegrityError: the champion's manifest is not the one recorded when it was promoted.
    """
    latest = read_latest(store, cfg.name)
    if latest is None:
        return ChampionScore(None, None, "no champion yet: floors only")
    version = str(latest["version"])
    # The hash recorded at promotion, not whatever manifest the store holds now: a champion
    # rewritten in the store fails the run (IntegrityError is not swallowed below), naming it.
    recorded = recorded_manifest_sha256(store, cfg.name, version)
    scratch = scratch_dir(work_dir, f"{cfg.name}-champion-")
    try:
        model = load_published_model(store, cfg, version, scratch, recorded)
        evaluation = get_family(cfg.family).evaluate(model, data.holdout, data.train)
        _close(evaluation)
    except IntegrityError:
        raise
    except Exception as exc:  # a champion that cannot be re-scored must not block a fix
        log.warning("%s: champion %s could not be re-scored: %s", cfg.name, version, exc)
        return ChampionScore(
            version, None, f"champion {version} could not be re-scored: {exc}", latest
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ChampionScore(
        version, evaluation.metrics, f"champion {version} re-scored on the new holdout", latest
    )


def metrics_json(challenger: Challenger, champion: ChampionScore, decision: dict[str, Any]) -> str:
    """The ``metrics.json`` published with a version."""
    return json.dumps(
        {
            "holdout": challenger.metrics,
            "backtest": challenger.backtest,
            **challenger.summary.tables,
            "champion": {
                "version": champion.version,
                "metrics": champion.metrics,
                "note": champion.note,
            },
            "gate": decision,
        },
        indent=2,
        sort_keys=True,
        default=str,
    )

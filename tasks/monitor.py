"""The monitor's Prefect tasks: measure drift against the champion's data, ask for a retrain.

They find the champion, read the rows it was trained on and the recent rows, measure, assess,
report, publish the results as Prometheus metrics, and ask for a retrain when the policy
says so.

The statistics and the policy are pure functions in :mod:`core.drift`; the SQL that reads the
recent rows is in :mod:`adapters.source`, and the events and deployment runs go through
:mod:`adapters.prefect_api`. :mod:`flows.monitor` wires these tasks together.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters.prefect_api import current_flow_run_id, emit_event, publish_markdown, run_deployment
from adapters.store import Store
from core.config import ModelConfig, MonitorPolicy
from core.drift import (
    Champion,
    FeatureDrift,
    Finding,
    age_days,
    assess,
    coerce_frame,
    compare_columns,
    findings_markdown,
    monitored_columns,
)
from core.lineage import Lineage


@task(name="find-champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def find_champion(store: Store, cfg: ModelConfig) -> Champion | None:
    """Read ``latest.json`` and the champion's manifest; None when nothing was promoted yet."""
    from adapters.pointer import read_latest
    from adapters.versions import read_version_manifest

    latest = read_latest(store, cfg.name)
    if latest is None:
        return None
    version = str(latest["version"])
    lineage = Lineage.from_dict(
        read_version_manifest(store, cfg.name, version).get("lineage") or {}
    )
    start = None
    if lineage.holdout_start:
        start = pd.Timestamp(lineage.holdout_start) - timedelta(days=cfg.split.training_days)
    return Champion(
        model=cfg.name,
        version=version,
        promoted_at=latest.get("promoted_at"),
        snapshot_ids=list(lineage.snapshot_ids),
        training_start=start.isoformat() if start is not None else None,
    )


@task(name="load-champion-data", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_reference(store: Store, cfg: ModelConfig, champion: Champion) -> pd.DataFrame:
    """The rows the champion was trained and evaluated on (its lineage's snapshots)."""
    from adapters.snapshots import read_snapshots

    frame = read_snapshots(store, cfg.dataset, champion.snapshot_ids)
    if champion.training_start:
        times = pd.to_datetime(frame[cfg.dataset.event_time])
        frame = frame[times >= pd.Timestamp(champion.training_start)].reset_index(drop=True)
    return frame


@task(name="load-recent-data", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_recent(source_url: str, cfg: ModelConfig, days: int) -> pd.DataFrame:
    """The newest ``days`` of source rows (by event time), read from the source database.

    Read from the source, not the snapshots: drift should be seen before the next export.
    """
    from adapters.source import recent_rows

    return coerce_frame(recent_rows(source_url, cfg.dataset, days), cfg.dataset.columns)


@task(name="compare-distributions", cache_policy=NO_CACHE)
def compare_distributions(
    cfg: ModelConfig, reference: pd.DataFrame, recent: pd.DataFrame, policy: MonitorPolicy
) -> list[FeatureDrift]:
    """PSI and KS of every monitored column (see :func:`compare_columns`)."""
    if reference.empty or recent.empty:
        return []
    return compare_columns(reference, recent, monitored_columns(cfg), policy)


@task(name="score-live", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def score_live(
    store: Store,
    cfg: ModelConfig,
    champion: Champion,
    recent: pd.DataFrame,
    reference: pd.DataFrame,
    work_dir: Path,
) -> tuple[dict[str, float], str | None]:
    """The champion's metrics on the recent labelled rows, with its family's ``evaluate``.

    Returns:
        ``(metrics, note)``: empty metrics and a note saying why when the recent rows cannot be
        scored (no labels, one class only, a champion that does not load).
    """
    from core.families import get_family
    from tasks.training import load_published_model, scratch_dir

    if recent.empty:
        return {}, "no recent rows to score"
    scratch = scratch_dir(work_dir, f"{cfg.name}-monitor-")
    try:
        # Baselines (the forecaster's seasonal naive) need history strictly before the rows.
        col = cfg.dataset.event_time
        history = reference[reference[col] < recent[col].min()].reset_index(drop=True)
        model = load_published_model(store, cfg, champion.version, scratch)
        evaluation = get_family(cfg.family).evaluate(model, recent, history)
        for fig in evaluation.figures.values():
            fig.clear()
    except Exception as exc:  # a check that cannot run is reported, never fatal to the monitor
        return {}, f"live error not measured: {exc}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dict(evaluation.metrics), None


@task(name="score-reported-outcomes", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def score_feedback(
    store: Store,
    cfg: ModelConfig,
    champion: Champion,
    live: tuple[dict[str, float], str | None],
    days: int,
) -> tuple[dict[str, float], str | None]:
    """Add the champion's error on outcomes reported by inference id to its live metrics.

    Beside the source table's rows (:func:`score_live`): the router's captured answers of the
    last ``days`` joined to the outcomes reported for them (``POST /feedback/{model}``,
    ``mlops feedback import``), as ``feedback_<metric>`` and ``feedback_labelled``.
    """
    from datetime import UTC, datetime

    from adapters.capture import read_captures
    from adapters.feedback import read_outcomes
    from adapters.layout import capture_prefix
    from core.families import get_family
    from core.feedback import feedback_metrics

    metrics, note = live
    reported = read_outcomes(store, cfg.name)
    if reported.frame.empty:
        return live
    since = datetime.now(UTC) - timedelta(days=days)
    captured = read_captures(store, store.url(capture_prefix(cfg.name)), None, since)
    family = get_family(cfg.family)
    extra = feedback_metrics(captured.frame, reported.frame, family, champion.version)
    return {**metrics, **extra}, note


@task(name="assess-model", cache_policy=NO_CACHE)
def assess_model(
    cfg: ModelConfig,
    policy: MonitorPolicy,
    champion: Champion,
    reference: pd.DataFrame,
    recent: pd.DataFrame,
    drift: list[FeatureDrift],
    live: tuple[dict[str, float], str | None],
) -> Finding:
    """Turn the measurements into a :class:`Finding` (see :func:`assess`)."""
    metrics, note = live
    notes = [note] if note else []
    if recent.empty:
        notes.append(f"no rows in the last {policy.recent_days} days of {cfg.dataset.table}")
    return assess(
        cfg,
        policy,
        champion.version,
        age_days(champion.promoted_at),
        drift,
        metrics,
        notes,
        reference_rows=len(reference),
        recent_rows=len(recent),
    )


@task(name="report-findings", cache_policy=NO_CACHE)
def report_findings(findings: list[Finding], request: dict[str, Any] | None) -> str:
    """Publish the findings as a Markdown artifact (``monitor-report``); return the Markdown."""
    text = findings_markdown(findings, request)
    wanted = [f.model for f in findings if f.triggered]
    headline = f"retrain wanted: {', '.join(wanted)}" if wanted else "no threshold crossed"
    return publish_markdown("monitor-report", text, headline)


@task(name="publish-monitor-metrics", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_monitor_metrics(findings: list[Finding], policy: MonitorPolicy) -> list[str]:
    """Publish the findings as Prometheus metrics where the policy says; return where.

    A textfile for node_exporter (``monitor.textfile``) and/or a Pushgateway
    (``monitor.pushgateway_url``); nothing when neither is set. See :mod:`adapters.prometheus`.
    """
    from adapters.prometheus import monitor_registry, push, write_textfile

    registry = monitor_registry(findings)
    where = []
    if policy.textfile is not None:
        where.append(str(write_textfile(policy.textfile, registry)))
    if policy.pushgateway_url:
        where.append(push(policy.pushgateway_url, registry))
    return where


@task(name="emit-threshold-events", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def emit_threshold_events(
    project_tag: str, findings: list[Finding], request: dict[str, Any] | None
) -> list[str]:
    """Emit ``{project_tag}.model.threshold-crossed`` per triggered model; return the event ids.

    Automations can match the event name or the resource ``{project_tag}.model.<name>``.
    """
    related = {}
    if request and request.get("flow_run_id"):
        related["retrain-run"] = str(request["flow_run_id"])
    ids = []
    for f in findings:
        if not f.triggered:
            continue
        event_id = emit_event(
            f"{project_tag}.model.threshold-crossed",
            resource_id=f"{project_tag}.model.{f.model}",
            resource_name=f.model,
            payload={
                "reasons": f.reasons,
                "drifted": f.drifted,
                "champion_version": f.champion_version,
                "live_metrics": f.live_metrics,
            },
            related_flow_runs=related,
        )
        if event_id is not None:
            ids.append(event_id)
    return ids


@task(name="request-retrain", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def request_retrain(deployment: str, models: list[str], reason: str) -> dict[str, Any]:
    """Start a run of the retrain deployment for ``models`` and return without waiting.

    Idempotent per monitor run: a retried task finds the run it already created. Not forced:
    when the drifted data is already in a snapshot, a forced retrain would train on the same
    data again (and publish a new version of the same model every day); unforced, the run says
    "no new data" and the next week's data retrains.

    Returns:
        ``requested`` True with the flow run's id and name; or ``requested`` False with a note
        when the API has no such deployment (the embedded, ephemeral API never has one).
    """
    monitor_run = current_flow_run_id()
    run = run_deployment(
        deployment,
        parameters={"models": models, "reason": reason},
        tags=["triggered-by-monitor"],
        idempotency_key=f"monitor-{monitor_run}-{deployment}" if monitor_run else None,
    )
    if run is None:
        return {
            "requested": False,
            "deployment": deployment,
            "note": (
                f"deployment {deployment!r} is not registered on this Prefect API (the embedded "
                "API has none; see docs/deployments.md). To retrain here: mlops retrain "
                + " ".join(f"--model {m}" for m in models)
                + f' --reason "{reason}"'
            ),
        }
    return {
        "requested": True,
        "deployment": deployment,
        "flow_run_id": run.id,
        "flow_run_name": run.name,
    }

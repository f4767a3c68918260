"""Monitoring: recent data against the champion's training data, live error, champion age.

For each model the monitor compares the newest ``recent_days`` of source rows with the rows the
current champion was trained and evaluated on (the snapshots its manifest's lineage names), one
numeric column at a time, with two measures that answer different questions:

* the **population stability index** (PSI) is an effect size: how far the shares of rows per
  bin (deciles of the reference) moved. 0.1-0.2 is a moderate shift, above 0.2 a large one.
* the **two-sample Kolmogorov-Smirnov test** says whether the shift is more than sampling noise.

A column counts as drifted only when both agree (PSI at or above ``psi_threshold`` *and* a KS
p-value below ``ks_p_value``): with hundreds of thousands of rows the KS test flags shifts too
small to matter, and on a few rows the PSI is noisy.

Where the recent rows carry labels (the abuse incidents, the limit that served a client, the
actual traffic), the champion is scored on them with its family's own ``evaluate`` and held to
the absolute floors of its gate. The champion's age is held to ``max_champion_age_days``.

Pure functions first (numpy and pandas, callable anywhere without a Prefect run or API), then
the Prefect tasks of :mod:`flows.monitor`.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from core.config import ModelConfig, MonitorPolicy
from core.settings import Settings

MAX_ROWS = 200_000
"""Rows per side kept for the comparison; a seeded random sample above that (KS is O(n log n),
and PSI on deciles is stable long before this)."""

PSI_BINS = 10
PSI_FLOOR = 1e-4
"""Smallest share a bin may have in the PSI: an empty bin would make ``ln(0)`` infinite."""

MAX_REASON_CHARS = 480
"""The reason travels as a run parameter into lineage and MLflow tags: keep it a sentence."""


# --- pure statistics ------------------------------------------------------------------------


def _clean(values: Any) -> np.ndarray:
    """``values`` as a float array without NaN or infinities."""
    array = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype="float64")
    return array[np.isfinite(array)]


def psi(reference: Any, current: Any, bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``reference``.

    Bins are the ``bins``-quantiles of the reference (so each holds about the same share of it),
    open at both ends so every current value lands in one. A column with at most ``bins``
    distinct reference values (a flag, a small count) is compared value by value instead,
    with any value the reference never had in a bin of its own.

    Returns:
        ``sum((c - r) * ln(c / r))`` over the bins' shares; 0 for identical distributions.

    Raises:
        ValueError: either side has no finite values, or ``bins < 2``.
    """
    if bins < 2:
        raise ValueError("bins must be >= 2")
    ref, cur = _clean(reference), _clean(current)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("psi needs at least one finite value on each side")
    distinct = np.unique(ref)
    if distinct.size <= bins:
        # Discrete: one bin per reference value, plus one for values the reference lacks.
        ref_idx = np.searchsorted(distinct, ref)
        pos = np.searchsorted(distinct, cur).clip(max=distinct.size - 1)
        cur_idx = np.where(distinct[pos] == cur, pos, distinct.size)
        n_bins = distinct.size + 1
    else:
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
        ref_idx = np.searchsorted(edges, ref, side="right")
        cur_idx = np.searchsorted(edges, cur, side="right")
        n_bins = edges.size + 1
    r = np.bincount(ref_idx, minlength=n_bins) / ref.size
    c = np.bincount(cur_idx, minlength=n_bins) / cur.size
    r, c = np.clip(r, PSI_FLOOR, None), np.clip(c, PSI_FLOOR, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution (the limit of sqrt(n) * D)."""
    if lam < 0.2:
        return 1.0  # the alternating series converges slowly here, and the value is 1.0000
    k = np.arange(1, 101)
    terms = 2.0 * (-1.0) ** (k - 1) * np.exp(-2.0 * (k * lam) ** 2)
    return float(min(1.0, max(0.0, terms.sum())))


@dataclass(frozen=True)
class KsResult:
    """A two-sample Kolmogorov-Smirnov test.

    Attributes:
        statistic: the largest distance between the two empirical CDFs, in [0, 1].
        p_value: probability of a distance at least this large if both samples came from one
            distribution (asymptotic, with Stephens' small-sample correction).
    """

    statistic: float
    p_value: float


def ks_2samp(reference: Any, current: Any) -> KsResult:
    """Two-sided two-sample Kolmogorov-Smirnov test (NaN and infinities dropped).

    Raises:
        ValueError: either side has no finite values.
    """
    ref, cur = np.sort(_clean(reference)), np.sort(_clean(current))
    if ref.size == 0 or cur.size == 0:
        raise ValueError("ks_2samp needs at least one finite value on each side")
    points = np.concatenate([ref, cur])
    cdf_ref = np.searchsorted(ref, points, side="right") / ref.size
    cdf_cur = np.searchsorted(cur, points, side="right") / cur.size
    d = float(np.max(np.abs(cdf_ref - cdf_cur)))
    en = math.sqrt(ref.size * cur.size / (ref.size + cur.size))
    return KsResult(statistic=d, p_value=_kolmogorov_sf((en + 0.12 + 0.11 / en) * d))


@dataclass(frozen=True)
class FeatureDrift:
    """One column compared between the reference and the recent rows."""

    feature: str
    psi: float
    ks_statistic: float
    ks_p_value: float
    drifted: bool
    reference_mean: float
    recent_mean: float


def _sample(values: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    if values.size <= max_rows:
        return values
    return np.random.default_rng(seed).choice(values, size=max_rows, replace=False)


def compare_columns(
    reference: pd.DataFrame,
    recent: pd.DataFrame,
    columns: list[str],
    policy: MonitorPolicy,
    max_rows: int = MAX_ROWS,
) -> list[FeatureDrift]:
    """PSI and KS per column; a column drifted when both cross the policy's thresholds.

    Columns with no finite values on either side are left out (nothing to compare).
    """
    out = []
    for i, col in enumerate(columns):
        ref = _sample(_clean(reference[col]), max_rows, seed=i)
        cur = _sample(_clean(recent[col]), max_rows, seed=i + 1)
        if ref.size == 0 or cur.size == 0:
            continue
        index = psi(ref, cur)
        ks = ks_2samp(ref, cur)
        out.append(
            FeatureDrift(
                feature=col,
                psi=index,
                ks_statistic=ks.statistic,
                ks_p_value=ks.p_value,
                drifted=index >= policy.psi_threshold and ks.p_value < policy.ks_p_value,
                reference_mean=float(ref.mean()),
                recent_mean=float(cur.mean()),
            )
        )
    return out


def monitored_columns(cfg: ModelConfig) -> list[str]:
    """The numeric columns of a model's dataset, apart from the ingestion watermark.

    Labels are included on purpose: a change in the share of abuse incidents or in the limits
    that served clients is a shift the model should be retrained for, too.
    """
    skip = {cfg.dataset.watermark, cfg.dataset.event_time, *cfg.dataset.key_columns}
    return [
        col
        for col, kind in cfg.dataset.columns.items()
        if kind in ("int64", "float64") and col not in skip
    ]


def floor_breaches(cfg: ModelConfig, metrics: dict[str, float]) -> list[str]:
    """Gate floors the live metrics break, as sentences (``mape 0.31 above floor 0.25``)."""
    out = []
    for name, rule in cfg.gate.metrics.items():
        value = metrics.get(name)
        if rule.floor is None or value is None or not math.isfinite(value):
            continue
        if rule.direction == "higher" and value < rule.floor:
            out.append(f"live {name} {value:.3f} below floor {rule.floor:g}")
        elif rule.direction == "lower" and value > rule.floor:
            out.append(f"live {name} {value:.3f} above floor {rule.floor:g}")
    return out


@dataclass
class Finding:
    """What the monitor found for one model, and whether it asks for a retrain.

    Attributes:
        model: model name.
        champion_version: ``vN`` of the champion, None when nothing was promoted yet.
        champion_age_days: days since ``latest.json`` moved.
        reference_rows: rows of the champion's training window compared.
        recent_rows: recent source rows compared.
        features: every compared column.
        live_metrics: the champion's metrics on the recent labelled rows.
        reasons: why a retrain is wanted; empty when none is.
        notes: what could not be checked, and why.
    """

    model: str
    champion_version: str | None = None
    champion_age_days: float | None = None
    reference_rows: int = 0
    recent_rows: int = 0
    features: list[FeatureDrift] = field(default_factory=list)
    live_metrics: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> list[str]:
        """Drifted columns, largest PSI first."""
        return [f.feature for f in sorted(self.features, key=lambda f: -f.psi) if f.drifted]

    @property
    def triggered(self) -> bool:
        """Whether this model needs a retrain."""
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (flow result, CLI ``--json``, event payload)."""
        out = asdict(self)
        out["drifted"] = self.drifted
        out["triggered"] = self.triggered
        return out


def assess(
    cfg: ModelConfig,
    policy: MonitorPolicy,
    champion_version: str | None,
    champion_age_days: float | None,
    features: list[FeatureDrift],
    live_metrics: dict[str, float],
    notes: list[str],
    reference_rows: int = 0,
    recent_rows: int = 0,
) -> Finding:
    """Apply the policy: drift in enough columns, a live floor broken, or an old champion."""
    finding = Finding(
        model=cfg.name,
        champion_version=champion_version,
        champion_age_days=champion_age_days,
        reference_rows=reference_rows,
        recent_rows=recent_rows,
        features=features,
        live_metrics=live_metrics,
        notes=list(notes),
    )
    drifted = finding.drifted
    if len(drifted) >= policy.min_drifted_features:
        finding.reasons.append(f"drift in {', '.join(drifted)}")
    finding.reasons += floor_breaches(cfg, live_metrics)
    if champion_age_days is not None and champion_age_days > policy.max_champion_age_days:
        finding.reasons.append(
            f"champion {champion_version} is {champion_age_days:.0f} days old "
            f"(policy: {policy.max_champion_age_days})"
        )
    return finding


def trigger_reason(findings: list[Finding]) -> str:
    """One line for the retrain's ``reason`` parameter, naming each model and why."""
    parts = [f"{f.model}: {'; '.join(f.reasons)}" for f in findings if f.triggered]
    text = "monitor: " + " | ".join(parts)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def findings_markdown(findings: list[Finding], request: dict[str, Any] | None) -> str:
    """The monitor's report: per model the verdict, then per column PSI and KS."""
    lines = ["# Monitor", ""]
    if not any(f.triggered for f in findings):
        lines.append("No threshold crossed: no retrain requested.")
    elif request is None:
        lines.append("Retrain wanted; report only (no retrain deployment given).")
    elif request.get("requested"):
        lines.append(
            f"Retrain requested: deployment `{request['deployment']}`, "
            f"flow run `{request['flow_run_name']}` ({request['flow_run_id']})."
        )
    else:
        lines.append(f"Retrain wanted but not requested: {request.get('note')}")
    for f in findings:
        verdict = "**retrain**: " + "; ".join(f.reasons) if f.triggered else "ok"
        lines += [
            "",
            f"## `{f.model}`: {verdict}",
            "",
            f"Champion {f.champion_version or '-'}"
            + (f", {f.champion_age_days:.1f} days old" if f.champion_age_days is not None else "")
            + f"; {f.reference_rows} reference rows, {f.recent_rows} recent rows.",
        ]
        if f.live_metrics:
            live = ", ".join(f"{k}={v:.4f}" for k, v in sorted(f.live_metrics.items()))
            lines.append(f"Live metrics on recent labels: {live}.")
        lines += [f"- {n}" for n in f.notes]
        if f.features:
            lines += [
                "",
                "| column | PSI | KS statistic | KS p-value | ref. mean | recent mean | drift |",
                "|---|---|---|---|---|---|---|",
            ]
            for d in sorted(f.features, key=lambda d: -d.psi):
                lines.append(
                    f"| {d.feature} | {d.psi:.3f} | {d.ks_statistic:.3f} | {d.ks_p_value:.2g} "
                    f"| {d.reference_mean:.4g} | {d.recent_mean:.4g} "
                    f"| {'**yes**' if d.drifted else 'no'} |"
                )
    return "\n".join(lines)


def age_days(promoted_at: str | None, now: datetime | None = None) -> float | None:
    """Days since an ISO timestamp (``latest.json``'s ``promoted_at``); None when unknown."""
    if not promoted_at:
        return None
    then = pd.Timestamp(promoted_at)
    if then.tzinfo is None:
        then = then.tz_localize("UTC")
    return (pd.Timestamp(now or datetime.now(UTC)) - then).total_seconds() / 86_400


def coerce_frame(rows: list[tuple[Any, ...]], columns: Mapping[str, str]) -> pd.DataFrame:
    """Rows from the source database as a frame typed like a snapshot read back.

    Drivers differ (SQLite returns timestamps as text); the families' ``check_columns`` needs
    the types right, so each column is converted by its declared kind.
    """
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    for name, kind in columns.items():
        if kind == "timestamp":
            frame[name] = pd.to_datetime(frame[name]).astype("datetime64[us]")
        elif kind in ("int64", "float64"):
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
        elif kind == "string":
            frame[name] = frame[name].astype("str")
        elif kind == "bool":
            frame[name] = frame[name].astype("bool")
    return frame


# --- Prefect tasks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Champion:
    """The current champion: its version, when it was promoted, and what it was trained on."""

    model: str
    version: str
    promoted_at: str | None
    snapshot_ids: list[str]
    training_start: str | None


@task(name="find-champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def find_champion(settings: Settings, cfg: ModelConfig) -> Champion | None:
    """Read ``latest.json`` and the champion's manifest; None when nothing was promoted yet."""
    from adapters.pointer import read_latest
    from adapters.versions import read_version_manifest
    from tasks.training import store_of

    store = store_of(settings)
    latest = read_latest(store, cfg.name)
    if latest is None:
        return None
    version = str(latest["version"])
    lineage = read_version_manifest(store, cfg.name, version).get("lineage") or {}
    snapshots = [s for s in str(lineage.get("snapshots") or "").split(",") if s]
    if not snapshots and lineage.get("snapshot_id"):
        snapshots = [str(lineage["snapshot_id"])]
    holdout_start = str(lineage.get("holdout") or "").split("..")[0] or None
    start = None
    if holdout_start:
        start = (pd.Timestamp(holdout_start) - timedelta(days=cfg.split.training_days)).isoformat()
    return Champion(
        model=cfg.name,
        version=version,
        promoted_at=latest.get("promoted_at"),
        snapshot_ids=snapshots,
        training_start=start,
    )


@task(name="load-champion-data", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_reference(settings: Settings, cfg: ModelConfig, champion: Champion) -> pd.DataFrame:
    """The rows the champion was trained and evaluated on (its lineage's snapshots)."""
    from adapters.snapshots import read_snapshots
    from tasks.training import store_of

    frame = read_snapshots(store_of(settings), cfg.dataset, champion.snapshot_ids)
    if champion.training_start:
        times = pd.to_datetime(frame[cfg.dataset.event_time])
        frame = frame[times >= pd.Timestamp(champion.training_start)].reset_index(drop=True)
    return frame


@task(name="load-recent-data", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_recent(settings: Settings, cfg: ModelConfig, days: int) -> pd.DataFrame:
    """The newest ``days`` of source rows (by event time), read from the source database.

    Read from the source, not the snapshots: drift should be seen before the next export.
    """
    import sqlalchemy as sa

    ds = cfg.dataset
    engine = sa.create_engine(settings.source_url)
    try:
        with engine.connect() as conn:
            latest = conn.execute(sa.text(f"SELECT max({ds.event_time}) FROM {ds.table}")).scalar()
            if latest is None:
                return coerce_frame([], ds.columns)
            since = pd.Timestamp(latest).to_pydatetime() - timedelta(days=days)
            sql = f"{ds.query} WHERE {ds.event_time} > :since ORDER BY {ds.watermark}"
            rows = [tuple(r) for r in conn.execute(sa.text(sql), {"since": since})]
    finally:
        engine.dispose()
    return coerce_frame(rows, ds.columns)


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
    settings: Settings,
    cfg: ModelConfig,
    champion: Champion,
    recent: pd.DataFrame,
    reference: pd.DataFrame,
) -> tuple[dict[str, float], str | None]:
    """The champion's metrics on the recent labelled rows, with its family's ``evaluate``.

    Returns:
        ``(metrics, note)``: empty metrics and a note saying why when the recent rows cannot be
        scored (no labels, one class only, a champion that does not load).
    """
    from core.families import get_family
    from tasks.training import load_published_model, workdir

    if recent.empty:
        return {}, "no recent rows to score"
    scratch = workdir(settings, f"{cfg.name}-monitor-")
    try:
        # Baselines (the forecaster's seasonal naive) need history strictly before the rows.
        col = cfg.dataset.event_time
        history = reference[reference[col] < recent[col].min()].reset_index(drop=True)
        model = load_published_model(settings, cfg, champion.version, scratch)
        evaluation = get_family(cfg.family).evaluate(model, recent, history)
        for fig in evaluation.figures.values():
            fig.clear()
    except Exception as exc:  # a check that cannot run is reported, never fatal to the monitor
        return {}, f"live error not measured: {exc}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dict(evaluation.metrics), None


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


def no_champion(cfg: ModelConfig) -> Finding:
    """The finding for a model that was never promoted: nothing to compare, no retrain asked.

    The weekly retrain already trains it; a daily trigger would only repeat that.
    """
    return Finding(model=cfg.name, notes=["no champion yet: nothing to compare"])


@task(name="report-findings", cache_policy=NO_CACHE)
def report_findings(findings: list[Finding], request: dict[str, Any] | None) -> str:
    """Publish the findings as a Markdown artifact (``monitor-report``); return the Markdown."""
    from tasks.report import publish_markdown

    text = findings_markdown(findings, request)
    wanted = [f.model for f in findings if f.triggered]
    headline = f"retrain wanted: {', '.join(wanted)}" if wanted else "no threshold crossed"
    return publish_markdown("monitor-report", text, headline)


@task(name="emit-threshold-events", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def emit_threshold_events(
    project_tag: str, findings: list[Finding], request: dict[str, Any] | None
) -> list[str]:
    """Emit ``{project_tag}.model.threshold-crossed`` per triggered model; return the event ids.

    Automations can match the event name or the resource ``{project_tag}.model.<name>``.
    """
    from prefect.events import emit_event

    related = []
    if request and request.get("flow_run_id"):
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{request['flow_run_id']}",
                "prefect.resource.role": "retrain-run",
            }
        )
    ids = []
    for f in findings:
        if not f.triggered:
            continue
        event = emit_event(
            event=f"{project_tag}.model.threshold-crossed",
            resource={
                "prefect.resource.id": f"{project_tag}.model.{f.model}",
                "prefect.resource.name": f.model,
            },
            related=related,
            payload={
                "reasons": f.reasons,
                "drifted": f.drifted,
                "champion_version": f.champion_version,
                "live_metrics": f.live_metrics,
            },
        )
        if event is not None:
            ids.append(str(event.id))
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
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.runtime import flow_run

    try:
        run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync here, never a coroutine
            deployment,
            parameters={"models": models, "reason": reason},
            timeout=0,
            as_subflow=False,
            tags=["triggered-by-monitor"],
            idempotency_key=f"monitor-{flow_run.id}-{deployment}" if flow_run.id else None,
        )
    except ObjectNotFound:
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
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
    }

"""Online experiments: start, look, stop. The decision itself is :func:`core.experiment.decide`.

Every change of traffic is bracketed by the record: it says ``starting`` before the endpoint
is asked to split and ``running`` after, ``stopping`` before the challenger is removed and
``stopped`` after. A crash between the two leaves the record in the first state and the
endpoint as it was or as it became; :func:`experiment_status` compares the two and says which
(``mlops experiment status``), and ``mlops experiment stop`` finishes either way (the target's
``stop_experiment`` is idempotent).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from adapters.capture import read_captures
from adapters.experiments import begin_experiment, read_experiment, save_experiment
from adapters.feedback import read_outcomes
from adapters.layout import IntegrityError, PublishError, timestamp
from adapters.pointer import read_latest
from adapters.prefect_api import emit_event, publish_markdown, publish_table
from adapters.registry import Registry
from adapters.store import Store
from core.config import ModelConfig
from core.endpoint import EndpointTarget, RolloutFailed, TrafficPlan, VersionToServe
from core.experiment import (
    Experiment,
    ExperimentError,
    Observations,
    decide,
    new_experiment,
)
from core.families import get_family
from core.observations import observe
from core.secrets import scrub
from tasks.rollout import _log, registered_version, resolve_version

EVENT = "intelli-rate.experiment.evaluated"


def _now() -> datetime:
    return datetime.now(UTC)


@task(name="start-experiment", cache_policy=NO_CACHE)
def start_experiment(
    store: Store,
    registry: Registry,
    cfg: ModelConfig,
    target: EndpointTarget,
    challenger: str,
    **overrides: Any,
) -> Experiment:
    """Check everything, record the experiment, then split the endpoint's traffic.

    Both versions are verified as a rollout verifies the version it deploys: the manifest's
    sha256 against the store's records (:func:`tasks.rollout.resolve_version`) and against the
    MLflow tag recorded at publication (:func:`tasks.rollout.registered_version`), the record
    a writer of the store cannot change.

    Args:
        store: the model store.
        registry: the MLflow registry holding each version's ``manifest_sha256`` tag.
        cfg: the model's config (its ``experiment:`` defaults).
        target: the endpoint target.
        challenger: ``vN``, a published version.
        **overrides: ``mode``, ``share_percent``, ``metric``, ``min_days``, ``max_days``,
            ``min_samples``, ``max_samples`` (None: the config's).

    Returns:
        The record, ``running``; or ``failed`` (with the endpoint's reason) when the endpoint
        refused the split and serves the champion alone again.

    Raises:
        ExperimentError: the challenger is not published, or was changed in the store after
            it was (the message names the version and both hashes), nothing serves, the model
            is in an experiment already, or a bad mode, share or metric; nothing was changed.
    """
    family = get_family(cfg.family)
    latest = read_latest(store, cfg.name)
    if latest is None:
        raise ExperimentError(f"{cfg.name}: no champion yet; an experiment needs one serving")
    try:
        wanted = resolve_version.fn(store, cfg, challenger)
    except IntegrityError as exc:
        raise ExperimentError(f"{cfg.name} {challenger} may not serve: {exc}") from exc
    except (PublishError, ValueError) as exc:
        raise ExperimentError(f"{cfg.name} {challenger} is not a published version: {exc}") from exc
    exp = new_experiment(
        model=cfg.name,
        family_metrics=family.experiment_metrics,
        policy=cfg.experiment,
        champion=str(latest["version"]),
        challenger=challenger,
        started_at=timestamp(_now()),
        **{k: v for k, v in overrides.items() if v is not None},
    )
    current = read_experiment(store, cfg.name)
    if current is not None and current.active:  # checked again, atomically, when recorded
        raise ExperimentError(
            f"{cfg.name} is already in experiment {current.id} ({current.state}); stop it "
            f"first: mlops experiment stop {cfg.name}"
        )
    champion = resolve_version.fn(store, cfg, exp.champion)
    for version in (champion, wanted):  # before the endpoint is asked anything
        _check_registered(registry, cfg, version)
    serving = target.describe(cfg.name)
    if serving is None or serving.version != exp.champion:
        raise ExperimentError(
            f"{cfg.name}: the endpoint serves {serving.version if serving else 'nothing'}, not "
            f"the champion {exp.champion}; roll out first (mlops rollout {cfg.name})"
        )
    begin_experiment(store, exp)
    allow = cfg.experiment.allow_target_variant
    plan = TrafficPlan(cfg.name, exp.mode, champion, wanted, exp.share_percent, exp.id, allow)
    try:
        target.start_experiment(plan, _log)
    except RolloutFailed as exc:
        failed = exp.with_state(
            "failed", decision={"verdict": "failed", "reason": str(exc), "at": timestamp(_now())}
        )
        return save_experiment(store, failed, expected=exp)
    return save_experiment(store, exp.with_state("running"), expected=exp)


def _check_registered(registry: Registry, cfg: ModelConfig, version: VersionToServe) -> None:
    """The rollout's MLflow check of ``version``; its refusal as an :class:`ExperimentError`."""
    try:
        registered_version.fn(registry, cfg, version)
    except PublishError as exc:  # IntegrityError included: the message has both hashes
        raise ExperimentError(f"{cfg.name} {version.version} may not serve: {exc}") from exc


@task(name="stop-experiment", cache_policy=NO_CACHE)
def stop_experiment(
    store: Store, target: EndpointTarget, model: str, reason: str, verdict: str = "stop"
) -> Experiment | None:
    """Champion back to 100 %, record ended; a no-op for a model without an active experiment.

    Args:
        store: the model store.
        target: the endpoint target.
        model: model name.
        reason: why, recorded in the decision.
        verdict: ``stop``, or ``promote`` after the rollout made the challenger the champion.
    """
    exp = read_experiment(store, model)
    if exp is None or not exp.active:
        return exp
    stopping = exp
    if exp.state != "stopping":
        stopping = save_experiment(store, exp.with_state("stopping"), expected=exp)
    target.stop_experiment(model, _log)
    decision = {"verdict": verdict, "reason": reason, "at": timestamp(_now())}
    ended = stopping.with_state(
        "promoted" if verdict == "promote" else "stopped", decision=decision
    )
    return save_experiment(store, ended, expected=stopping)


@task(name="gather-observations", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def gather_observations(
    store: Store, source_url: str, cfg: ModelConfig, target: EndpointTarget, exp: Experiment
) -> Observations:
    """The experiment's captured answers joined to their late labels, per arm.

    Labels come from the source table (on the dataset's key) and from the outcomes reported
    by inference id (``POST /feedback/{model}``, ``mlops feedback import``), which win where
    both label one answer.
    """
    from adapters.source.read import label_rows

    family = get_family(cfg.family)
    started = datetime.fromisoformat(exp.started_at.replace("Z", "+00:00"))
    captured = read_captures(store, target.capture_prefix(cfg.name), exp.id, started)
    since = started.replace(tzinfo=None) - (_label_lookback(cfg))
    labels = label_rows(source_url, cfg.dataset, str(family.label_column), since)
    key_types = {k: cfg.dataset.columns[k] for k in cfg.dataset.key_columns}
    reported = read_outcomes(store, cfg.name)  # outcomes reported by inference id
    skipped = {**captured.reasons, **reported.skipped}
    obs = observe(exp, captured.frame, labels, family, key_types, skipped, reported.frame)
    if obs.skipped:
        _log(f"{exp.id}: {skipped_line(obs.skipped)}")
    return obs


def skipped_line(skipped: dict[str, int]) -> str:
    """``3 captured record(s) skipped: not a capture record (2), ...`` (log and artifact)."""
    reasons = "; ".join(f"{why} ({n})" for why, n in sorted(skipped.items()))
    return f"{sum(skipped.values())} captured record(s) skipped: {reasons}"


def _label_lookback(cfg: ModelConfig) -> Any:
    """Requests may ask about windows before the start (an hour's traffic, a day's limits)."""
    from datetime import timedelta

    return timedelta(days=max(2, cfg.split.holdout_days))


@task(name="evaluate-experiment", cache_policy=NO_CACHE)
def evaluate_experiment(
    store: Store, exp: Experiment, obs: Observations, now: datetime | None = None
) -> tuple[Experiment, dict[str, Any]]:
    """One look (:func:`core.experiment.decide`), appended to the record (compare-and-set)."""
    updated, look = decide(exp, obs, now or _now())
    return save_experiment(store, updated, expected=exp), look


FAILED = "failed: "


def look_outcome(state: State) -> str | None:
    """A model's outcome from its evaluation subflow's final state (None: nothing to look at).

    A failed (or crashed) subflow becomes ``failed: <why>``, its secrets scrubbed.
    """
    if state.is_completed():
        result = state.result()
        return None if result is None else str(result)
    error = state.result(raise_on_failure=False)
    why = str(error) if isinstance(error, BaseException) else state.message or state.name
    return FAILED + scrub(why or "failed")


@task(name="summarise-looks", cache_policy=NO_CACHE)
def summarise_looks(outcomes: dict[str, str]) -> list[str]:
    """A table artifact of every model's outcome; returns ``model: why`` of those that failed."""
    rows = [{"model": model, "outcome": outcome} for model, outcome in outcomes.items()]
    failed = [f"{m}: {o.removeprefix(FAILED)}" for m, o in outcomes.items() if o.startswith(FAILED)]
    title = f"{len(outcomes)} experiment(s) evaluated, {len(failed)} failed"
    publish_table("experiment-evaluate", rows, title)
    return failed


def _fmt(summary: dict[str, Any]) -> str:
    if summary.get("mean") is None:
        return "-"
    ci = summary.get("ci")
    return f"{summary['mean']:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")


def look_markdown(exp: Experiment, look: dict[str, Any]) -> str:
    """The look as a markdown table per arm, then the guardrails (the artifact and the CLI)."""
    diff = look.get("difference_ci")
    lines = [
        f"# Experiment {exp.id}: {exp.mode}, {exp.challenger} vs {exp.champion} "
        f"({exp.share_percent:g} %)",
        "",
        f"**{look['verdict']}**: {look['reason']}",
        "",
        *([skipped_line(look["skipped"]), ""] if look.get("skipped") else []),
        f"| arm | version | requests | labelled | {exp.metric} (95 % CI) |",
        "|---|---|---|---|---|",
        f"| champion | {exp.champion} | {look['requests']['champion']} | "
        f"{look['labelled']['champion']} | {_fmt(look['champion'])} |",
        f"| challenger | {exp.challenger} | {look['requests']['challenger']} | "
        f"{look['labelled']['challenger']} | {_fmt(look['challenger'])} |",
        "",
        f"difference (challenger - champion): "
        f"{'-' if look['difference'] is None else format(look['difference'], '.4g')}"
        + (f", always-valid CI [{diff[0]:.4g}, {diff[1]:.4g}]" if diff else "")
        + f"; always-valid p = {look['p_value']:.4g} (alpha {exp.alpha}); "
        f"planned n per arm: {look['planned_n'] or 'after the first labels'}; "
        f"day {look['days']:.1f} of {exp.min_days}-{exp.max_days}",
        "",
        "| guardrail | champion | challenger | margin | p (non-inferior) | state |",
        "|---|---|---|---|---|---|",
    ]
    for g in look["guardrails"]:
        state = "BREACHED" if g["breached"] else ("ok" if g["non_inferior"] else "not yet shown")
        state = state if g.get("measured", True) else "not measured"
        lines.append(
            f"| {g['metric']} | {_fmt(g.get('champion', {}))} | {_fmt(g.get('challenger', {}))} "
            f"| {g.get('margin', 0):.4g} | {g.get('p_non_inferior', 1.0):.4g} | {state} |"
        )
    return "\n".join(lines)


@task(name="report-experiment", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def report_experiment(project_tag: str, exp: Experiment, look: dict[str, Any]) -> str:
    """Publish the look as a Prefect artifact and emit one event (automations may act on it)."""
    markdown = publish_markdown(
        f"experiment-{exp.model}", look_markdown(exp, look), f"{exp.id}: {look['verdict']}"
    )
    emit_event(
        EVENT,
        resource_id=f"{project_tag}.experiment.{exp.id}",
        resource_name=exp.id,
        payload={
            "model": exp.model,
            "verdict": look["verdict"],
            "reason": look["reason"],
            "p_value": look["p_value"],
            "champion": exp.champion,
            "challenger": exp.challenger,
        },
    )
    return markdown


def experiment_status(store: Store, target: EndpointTarget | None, model: str) -> dict[str, Any]:
    """The record and what the endpoint does, and whether they agree (a crash shows here)."""
    exp = read_experiment(store, model)
    traffic = target.traffic(model) if target is not None else None
    split = bool(traffic and traffic.get("experiment_id"))
    note = ""
    if exp is not None and exp.state == "starting":
        note = (
            "interrupted while starting: the endpoint "
            + ("splits traffic" if split else "serves the champion alone")
            + f"; run `mlops experiment stop {model}` to clean up"
        )
    elif exp is not None and exp.state in ("stopping", "promoting"):
        note = (
            f"interrupted while {exp.state}: the endpoint "
            + ("still splits traffic" if split else "serves one version")
            + f"; run `mlops experiment stop {model}` to finish"
        )
    elif exp is not None and exp.state == "running" and not split and target is not None:
        note = "recorded as running, but the endpoint does not split traffic"
    elif (exp is None or not exp.active) and split:
        note = "the endpoint splits traffic but no experiment is active"
    return {"experiment": exp, "traffic": traffic, "note": note}

"""Online experiments: start, stop, and the daily look that decides.

``experiment`` (the ``experiment/evaluate`` deployment, daily) looks at every model with a
running experiment, each in its own subflow, so that one model's failure stops no other's
look: captured answers joined to late labels (records that cannot be read are skipped and
counted), the sequential test and the guardrails (:func:`core.experiment.decide`), a Prefect
artifact and an event, and a table artifact of every model's outcome. A decision acts
through the existing paths: ``promote`` runs the rollout subflow (endpoint, smoke test,
``latest.json``, history, ``champion`` alias, its state message for notifications) and then
ends the split; ``stop`` ends the split with the champion at 100 %.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State

from adapters.experiments import read_experiment
from adapters.registry import Registry
from adapters.store import store_from_settings
from core.config import load_model_configs, load_platform_config
from core.experiment import ExperimentError
from core.settings import load_settings
from flows.rollout import rollout
from tasks.experiment import (
    evaluate_experiment,
    gather_observations,
    look_outcome,
    report_experiment,
    skipped_line,
    start_experiment,
    stop_experiment,
    summarise_looks,
)
from tasks.rollout import target_for


@flow(name="experiment-start", flow_run_name="experiment-start-{model}-{challenger}")
def start(model: str, challenger: str, **overrides: Any) -> State:
    """Start an experiment of ``challenger`` against ``model``'s champion (see the CLI)."""
    settings = load_settings()
    (cfg,) = load_model_configs(settings.config_dir, [model])
    target = target_for(settings, load_platform_config(settings.config_dir), cfg)
    if target is None:
        raise ExperimentError(f"{model}: no endpoint is configured; nothing to split")
    store, registry = store_from_settings(settings), Registry.from_settings(settings)
    exp = start_experiment(store, registry, cfg, target, challenger, **overrides)
    if exp.state == "failed":
        return Failed(message=f"{exp.id}: {exp.decision}; the champion serves alone")
    share = f"{exp.share_percent:g} %"
    return Completed(message=f"{exp.id} running: {exp.mode}, {share} to {challenger}")


@flow(name="experiment-stop", flow_run_name="experiment-stop-{model}")
def stop(model: str, reason: str = "stopped by hand") -> State:
    """End ``model``'s experiment; the champion takes 100 % again."""
    settings = load_settings()
    (cfg,) = load_model_configs(settings.config_dir, [model])
    target = target_for(settings, load_platform_config(settings.config_dir), cfg)
    store = store_from_settings(settings)
    if target is None:
        raise ExperimentError(f"{model}: no endpoint is configured")
    exp = stop_experiment(store, target, model, reason)
    if exp is None:
        return Completed(message=f"{model}: no experiment")
    return Completed(message=f"{exp.id} {exp.state}: {reason}")


@flow(name="experiment-evaluate-model", flow_run_name="experiment-evaluate-{model}")
def evaluate_model(model: str) -> str | None:
    """One model's look and the action it decides; None when it has no running experiment."""
    settings = load_settings()
    platform = load_platform_config(settings.config_dir)
    (cfg,) = load_model_configs(settings.config_dir, [model])
    store = store_from_settings(settings)
    exp = read_experiment(store, cfg.name)
    target = target_for(settings, platform, cfg)
    if exp is None or exp.state != "running" or target is None:
        return None
    obs = gather_observations(store, settings.source_url, cfg, target, exp)
    exp, look = evaluate_experiment(store, exp, obs)
    report_experiment(platform.project_tag, exp, look)
    verdict = look["verdict"]
    if verdict == "promote":
        state = rollout(
            cfg.name, exp.challenger, reason=f"experiment {exp.id}: {look['reason']}",
            return_state=True,
        )  # fmt: skip
        if not state.is_completed():  # the champion still serves; the split stays to retry
            return f"promotion failed: {state.message}"
        stop_experiment(store, target, cfg.name, look["reason"], verdict="promote")
    elif verdict == "stop":
        stop_experiment(store, target, cfg.name, look["reason"])
    skipped = f"; {skipped_line(obs.skipped)}" if obs.skipped else ""
    return f"{verdict}: {look['reason']}{skipped}"


@flow(name="experiment", flow_run_name="experiment-evaluate")
def experiment(models: list[str] | None = None) -> State:
    """Look at every running experiment (or those of ``models``) and act on its decision.

    Each model is its own subflow: one model's failure is its line in the result (and fails
    the run, after every other model was looked at), never another model's missing decision.
    The result maps each model with a running experiment (or a failure) to its outcome.
    """
    settings = load_settings()
    outcomes: dict[str, str] = {}
    for cfg in load_model_configs(settings.config_dir, models or None):
        outcome = look_outcome(evaluate_model(cfg.name, return_state=True))
        if outcome is not None:
            outcomes[cfg.name] = outcome
    failed = summarise_looks(outcomes)
    if failed:
        return Failed(message=f"failed: {'; '.join(failed)} (the others were evaluated)",
                      data=outcomes)  # fmt: skip
    return Completed(message=f"{len(outcomes)} experiment(s) evaluated", data=outcomes)

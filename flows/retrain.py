"""Weekly retrain: export, validate, train, evaluate, gate, publish, register, roll out.

Each model runs as its own subflow, so one model failing (bad data, a crash) or being rejected
by its gate does not stop the others; the parent ends with one summary of all of them. The
models are independent, so each subflow is a task submitted to the task runner that
``runner:`` in ``configs/platform.yaml`` names (threads, a process pool, or a Dask cluster):
they run at once, and a forecaster's services fan out over the same kind of runner.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from adapters.registry import Registry
from adapters.store import store_from_settings
from adapters.training import open_trainer
from core.config import load_model_configs, load_platform_config
from core.outcome import NO_NEW_DATA, ModelOutcome
from core.settings import load_settings
from flows.rollout import rollout
from tasks.export import export_new_data
from tasks.promotion import decide_promotion, publish_model, register_model
from tasks.report import outcome, outcome_of, summarise_run
from tasks.runners import running, settle
from tasks.training import (
    describe_lineage,
    load_training_window,
    score_champion,
    split_holdout,
    train_challenger,
)
from tasks.validate import validate_data


@flow(name="retrain-model", flow_run_name="retrain-{model}")
def retrain_model(model: str, force: bool = False, reason: str = "scheduled") -> ModelOutcome:
    """Run the whole path for one model; return its outcome.

    The family's independent parts (a forecaster's services) run on the ``runner:`` of
    ``platform.yaml``, the same kind of runner the parent runs the models on.
    """
    started = datetime.now(UTC)  # no row may be dated after it (plus the dataset's tolerance)
    settings = load_settings()
    (cfg,) = load_model_configs(settings.config_dir, [model])
    runner = load_platform_config(settings.config_dir).runner
    store, registry, work = (
        store_from_settings(settings),
        Registry.from_settings(settings),
        settings.work_dir,
    )

    snapshot = export_new_data(
        settings.source_url, store, cfg, settings.export_chunk_rows, settings.part_rows
    )
    if snapshot is None and not force:
        return outcome(model, "skipped", note=NO_NEW_DATA)
    new_id = snapshot.snapshot_id if snapshot else None
    window = load_training_window(store, cfg, new_id, started)
    validate_data(store, cfg, window, new_id, started)
    data = split_holdout(cfg, window)

    lineage = describe_lineage(cfg, data, reason)
    trainer = open_trainer(settings, cfg, store)  # None: train in this process
    challenger = train_challenger(registry, cfg, data, lineage, work, trainer, runner)
    champion = score_champion(store, cfg, data, work)
    decision = decide_promotion(registry, cfg, challenger, champion)
    if not decision.promote:
        return outcome(model, "rejected", champion.note, challenger, champion, decision)

    published = publish_model(store, cfg, challenger, champion, decision, lineage, work)
    registered = register_model(registry, cfg, challenger, published)
    rolled = rollout(model, published.version, reason=reason, return_state=True)
    if not rolled.is_completed():
        note = f"published, not promoted: {rolled.message}"
        return outcome(model, "failed", note, challenger, champion, decision, published, registered)
    note = rolled.message or ""
    return outcome(model, "promoted", note, challenger, champion, decision, published, registered)


@task(name="run-model", task_run_name="run-{model}", cache_policy=NO_CACHE)
def run_model(model: str, force: bool, reason: str) -> ModelOutcome:
    """One model's subflow as a task, so the parent's task runner can run the models at once."""
    return outcome_of(model, retrain_model(model, force, reason, return_state=True))


def outcome_of_task(model: str, state: State) -> ModelOutcome:
    """The outcome a model's task returned; a task that crashed (a lost worker) is ``failed``."""
    if state.is_completed():
        result = state.result()
        if isinstance(result, ModelOutcome):
            return result
    return outcome_of(model, state)


@flow(name="retrain")
def retrain(
    models: list[str] | None = None, force: bool = False, reason: str = "scheduled"
) -> State:
    """Retrain every configured model (or ``models``); fail the run if any model failed.

    Args:
        models: model names from ``configs/models``; all of them when empty.
        force: retrain even when no new data arrived since the last snapshot.
        reason: why this run happens (schedule, a person, a drift alert); kept in lineage.
    """
    settings = load_settings()
    cfgs = load_model_configs(settings.config_dir, models or None)
    runner = load_platform_config(settings.config_dir).runner
    # Create the tracking store and each experiment here, once: the models' processes (process
    # pool, Dask workers) would otherwise race to create MLflow's SQLite schema and fail.
    registry = Registry.from_settings(settings)
    for cfg in cfgs:
        registry.ensure_experiment(cfg.name)
    outcomes: dict[str, ModelOutcome] = {}
    with running(runner) as pool:
        futures = {
            pool.submit(run_model, {"model": cfg.name, "force": force, "reason": reason}): cfg.name
            for cfg in cfgs
        }
        for future in settle(list(futures)):
            name = futures[future]
            outcomes[name] = outcome_of_task(name, future.state)
    summary = summarise_run(cfgs, [outcomes[cfg.name] for cfg in cfgs])
    failed = [o for o in summary["models"] if o["status"] == "failed"]
    if failed:
        # The state message is what notifications carry: name the model and the reason.
        why = "; ".join(f"{o['model']}: {o.get('note') or 'failed'}" for o in failed)
        return Failed(message=f"failed: {why} (see the summary artifact)", data=summary)
    return Completed(message=summary["headline"], data=summary)

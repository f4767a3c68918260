"""Weekly retrain: export, validate, train, evaluate, gate, publish, register, roll out.

Each model runs as its own subflow, so one model failing (bad data, a crash) or being rejected
by its gate does not stop the others; the parent ends with one summary of all of them.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, Failed, State

from adapters.registry import Registry
from adapters.store import store_from_settings
from adapters.training import open_trainer
from core.config import load_model_configs
from core.outcome import NO_NEW_DATA, ModelOutcome
from core.settings import load_settings
from flows.rollout import rollout
from tasks.export import export_new_data
from tasks.promotion import decide_promotion, publish_model, register_model
from tasks.report import outcome, outcome_of, summarise_run
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
    """Run the whole path for one model; return its outcome."""
    settings = load_settings()
    (cfg,) = load_model_configs(settings.config_dir, [model])
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
    window = load_training_window(store, cfg, new_id)
    validate_data(store, cfg, window, new_id)
    data = split_holdout(cfg, window)

    lineage = describe_lineage(cfg, data, reason)
    trainer = open_trainer(settings, cfg, store)  # None: train in this process
    challenger = train_challenger(registry, cfg, data, lineage, work, trainer)
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
    states = {
        cfg.name: retrain_model(cfg.name, force=force, reason=reason, return_state=True)
        for cfg in cfgs
    }
    summary = summarise_run(cfgs, [outcome_of(name, state) for name, state in states.items()])
    failed = [o for o in summary["models"] if o["status"] == "failed"]
    if failed:
        # The state message is what notifications carry: name the model and the reason.
        why = "; ".join(f"{o['model']}: {o.get('note') or 'failed'}" for o in failed)
        return Failed(message=f"failed: {why} (see the summary artifact)", data=summary)
    return Completed(message=summary["headline"], data=summary)

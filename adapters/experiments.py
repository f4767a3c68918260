"""The experiment record in the store, beside the promotion history: one per model at a time.

``models/{model}/experiment.json`` holds the model's current (or last) experiment. It is
swapped with the same compare-and-set the pointer uses (:func:`adapters.pointer._write_latest`:
``If-None-Match: *`` when absent, ``If-Match`` on the ETag read otherwise; a lock on a local
store), so two starts racing for one model cannot both win, and an update never overwrites a
change it did not read. An ended experiment is also written once to
``models/{model}/experiments/{id}.json``, the history a later experiment does not overwrite.
"""

from __future__ import annotations

import json

from adapters import layout
from adapters.store import KeyNotFound, PreconditionFailed, Store, create_once
from core.experiment import Experiment, ExperimentError


def read_experiment(store: Store, model: str) -> Experiment | None:
    """The model's current or last experiment; None when it never had one."""
    try:
        return Experiment.from_dict(json.loads(store.get_bytes(layout.experiment_key(model))))
    except KeyNotFound:
        return None


def ended_experiments(store: Store, model: str) -> list[Experiment]:
    """Every ended experiment of ``model``, oldest first."""
    prefix = layout.experiment_key(model).rsplit("/", 1)[0] + f"/{layout.EXPERIMENTS}/"
    found = [Experiment.from_dict(json.loads(store.get_bytes(k))) for k in store.list(prefix)]
    return sorted(found, key=lambda e: e.started_at)


def begin_experiment(store: Store, exp: Experiment) -> Experiment:
    """Record ``exp`` as the model's experiment, unless one is active.

    Raises:
        ExperimentError: the model is already in an (active) experiment, or another start won
            the race; the store is unchanged.
    """
    key = layout.experiment_key(exp.model)
    try:
        raw, etag = store.get_tagged(key)
        current: Experiment | None = Experiment.from_dict(json.loads(raw))
    except KeyNotFound:
        current, etag = None, None
    if current is not None and current.active:
        raise ExperimentError(
            f"{exp.model} is already in experiment {current.id} ({current.state}, "
            f"{current.champion} vs {current.challenger}); stop it first: "
            f"mlops experiment stop {exp.model}"
        )
    body = layout.document_bytes(exp.to_dict())
    try:
        if etag is None:
            store.put_bytes(key, body, if_none_match=True)
        else:
            store.put_bytes(key, body, if_match=etag)
    except PreconditionFailed:
        raise ExperimentError(
            f"{exp.model}: another experiment was started at the same moment; see "
            f"mlops experiment status {exp.model}"
        ) from None
    return exp


def save_experiment(store: Store, exp: Experiment, *, expected: Experiment) -> Experiment:
    """Replace the record ``expected`` (as read) with ``exp``; archive it once it ended.

    Raises:
        ExperimentError: the record changed since ``expected`` was read (another evaluation or
            a stop); nothing was written.
    """
    key = layout.experiment_key(exp.model)
    try:
        raw, etag = store.get_tagged(key)
    except KeyNotFound:
        raise ExperimentError(f"{exp.model}: no experiment recorded") from None
    if json.loads(raw) != json.loads(layout.document_bytes(expected.to_dict())):
        raise ExperimentError(
            f"{exp.model}: experiment {expected.id} changed while this step ran; nothing written"
        )
    try:
        store.put_bytes(key, layout.document_bytes(exp.to_dict()), if_match=etag)
    except PreconditionFailed:
        raise ExperimentError(
            f"{exp.model}: experiment {expected.id} changed while this step ran; nothing written"
        ) from None
    if not exp.active:
        create_once(
            store,
            layout.ended_experiment_key(exp.model, exp.id),
            layout.document_bytes(exp.to_dict()),
        )
    return exp


def experiment_line(store: Store, model: str) -> str | None:
    """One line for ``mlops status``: the model's experiment and its last look; None if never."""
    exp = read_experiment(store, model)
    if exp is None:
        return None
    line = f"{exp.id} {exp.state}: {exp.mode} {exp.challenger} vs {exp.champion}"
    if exp.looks:
        last = exp.looks[-1]
        line += f", p={last['p_value']:.3g}, {last['verdict']} ({last['reason']})"
    if exp.decision:
        line += f"; ended: {exp.decision.get('verdict')}: {exp.decision.get('reason')}"
    return line

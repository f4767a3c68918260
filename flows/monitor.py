"""Daily monitor: recent data against each champion's training data, live error, champion age.

When a model crosses a threshold, one run of the retrain deployment is requested for the models
that need it, with a reason naming them and why, and an event is emitted per model. Every
model's results are published as Prometheus metrics too (textfile or Pushgateway, by config).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from adapters.store import store_from_settings
from core.config import load_model_configs, load_platform_config
from core.drift import no_champion, trigger_reason
from core.settings import load_settings
from tasks.monitor import (
    assess_model,
    compare_distributions,
    emit_threshold_events,
    find_champion,
    load_recent,
    load_reference,
    publish_monitor_metrics,
    report_findings,
    request_retrain,
    score_feedback,
    score_live,
)


@flow(name="monitor")
def monitor(
    models: list[str] | None = None, retrain_deployment: str | None = "retrain/weekly"
) -> dict[str, Any]:
    """Check every configured model (or ``models``); request a retrain where one is needed.

    Args:
        models: model names from ``configs/models``; all of them when empty.
        retrain_deployment: the deployment to run when a threshold is crossed, as
            ``flow/deployment``; empty to report only.
    """
    settings = load_settings()
    platform = load_platform_config(settings.config_dir)
    policy = platform.monitor
    store = store_from_settings(settings)
    findings = []
    for cfg in load_model_configs(settings.config_dir, models or None):
        champion = find_champion(store, cfg)
        if champion is None:
            findings.append(no_champion(cfg))
            continue
        reference = load_reference(store, cfg, champion)
        recent = load_recent(settings.source_url, cfg, policy.recent_days)
        drift = compare_distributions(cfg, reference, recent, policy)
        live = score_live(store, cfg, champion, recent, reference, settings.work_dir)
        live = score_feedback(store, cfg, champion, live, policy.recent_days)
        findings.append(assess_model(cfg, policy, champion, reference, recent, drift, live))

    wanted = [f.model for f in findings if f.triggered]
    reason = trigger_reason(findings) if wanted else None
    request = None
    if reason and retrain_deployment:
        request = request_retrain(retrain_deployment, wanted, reason)
    if wanted:
        emit_threshold_events(platform.project_tag, findings, request)
    report_findings(findings, request)
    published = publish_monitor_metrics(findings, policy)
    return {
        "findings": [f.to_dict() for f in findings],
        "triggered": wanted,
        "reason": reason,
        "request": request,
        "metrics": published,
    }

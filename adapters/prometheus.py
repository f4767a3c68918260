"""The monitor's results as Prometheus metrics: a textfile for node_exporter, or a Pushgateway.

The monitor runs once a day and exits, so nothing could scrape it: its results go where a
Prometheus server reads batch results, as the Prometheus documentation advises for batch
jobs. Either or both, chosen in ``configs/platform.yaml`` (``monitor.textfile``,
``monitor.pushgateway_url``)::

    mlops_monitor_feature_psi{model,feature}              population stability index
    mlops_monitor_feature_ks_statistic{model,feature}     two-sample KS statistic
    mlops_monitor_feature_drifted{model,feature}          1 when the column counts as drifted
    mlops_monitor_drifted_features{model}                 drifted columns
    mlops_monitor_live_metric{model,metric}               the champion on recent labelled rows
    mlops_monitor_champion_age_days{model}                days since latest.json moved
    mlops_monitor_retrain_wanted{model}                   1 when the monitor asked for a retrain
    mlops_monitor_last_run_timestamp_seconds              when the monitor ran

The alert rules (:mod:`core.alert_rules`) read these. Writes use the client library: the
textfile is written to a temporary file and renamed (the collector never reads half a file),
and the push replaces the job's previous group (PUT), so a model that left the configs leaves
the gateway too.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from core.drift import Finding

JOB = "mlops-monitor"
"""The Pushgateway job (a grouping key) the monitor pushes under."""


def monitor_registry(findings: list[Finding], now: float | None = None) -> CollectorRegistry:
    """A registry holding the monitor's findings as gauges (names in the module docstring)."""
    registry = CollectorRegistry()
    per_feature = ("model", "feature")
    psi = Gauge("mlops_monitor_feature_psi", "Population stability index.", per_feature,
                registry=registry)  # fmt: skip
    ks = Gauge("mlops_monitor_feature_ks_statistic", "Two-sample KS statistic.", per_feature,
               registry=registry)  # fmt: skip
    drifted = Gauge(
        "mlops_monitor_feature_drifted", "1 when the column counts as drifted.", per_feature,
        registry=registry,
    )  # fmt: skip
    count = Gauge("mlops_monitor_drifted_features", "Drifted columns.", ("model",),
                  registry=registry)  # fmt: skip
    live = Gauge(
        "mlops_monitor_live_metric", "The champion's metric on recent labelled rows.",
        ("model", "metric"), registry=registry,
    )  # fmt: skip
    age = Gauge("mlops_monitor_champion_age_days", "Days since latest.json moved.", ("model",),
                registry=registry)  # fmt: skip
    wanted = Gauge(
        "mlops_monitor_retrain_wanted", "1 when the monitor asked for a retrain.", ("model",),
        registry=registry,
    )  # fmt: skip
    ran = Gauge("mlops_monitor_last_run_timestamp_seconds", "When the monitor ran (Unix time).",
                registry=registry)  # fmt: skip
    for finding in findings:
        model = finding.model
        for feature in finding.features:
            psi.labels(model, feature.feature).set(feature.psi)
            ks.labels(model, feature.feature).set(feature.ks_statistic)
            drifted.labels(model, feature.feature).set(int(feature.drifted))
        count.labels(model).set(len(finding.drifted))
        for metric, value in finding.live_metrics.items():
            live.labels(model, metric).set(value)
        if finding.champion_age_days is not None:
            age.labels(model).set(finding.champion_age_days)
        wanted.labels(model).set(int(finding.triggered))
    ran.set(time.time() if now is None else now)
    return registry


def write_textfile(path: Path, registry: CollectorRegistry) -> Path:
    """Write ``registry`` to ``path`` for node_exporter's textfile collector; return the path.

    The name must end in ``.prom`` (the collector reads nothing else): anything else is refused
    before writing, as a file the collector never reads would look like a silent success.
    """
    path = Path(path).expanduser()
    if path.suffix != ".prom":
        raise ValueError(f"{path}: node_exporter's textfile collector reads only *.prom files")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path


def push(url: str, registry: CollectorRegistry, timeout: float = 10.0) -> str:
    """Replace the monitor's group on the Pushgateway at ``url``; return the group's URL."""
    push_to_gateway(url, job=JOB, registry=registry, timeout=timeout)
    return f"{url.rstrip('/')}/metrics/job/{JOB}"

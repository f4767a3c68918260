"""What a SageMaker endpoint did lately, from its CloudWatch metrics (``mlops status``).

One ``GetMetricData`` call per endpoint reads, per production variant, the ``Invocations`` and
``Invocation5XXErrors`` sums and the ``ModelLatency`` p99 over the window (one period spanning
it). CloudWatch computes the percentile; nothing is estimated here. With several variants the
counts add up and the p99 shown is the largest variant's (a percentile of the whole cannot be
rebuilt from per-variant percentiles; the worst one is what "is it healthy" asks about).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.endpoints.sagemaker.alarms import NAMESPACE, dimensions
from core.endpoint import Health

WINDOW_SECONDS = 300
"""SageMaker publishes its endpoint metrics each minute, a minute or two late: the last five
minutes always hold data, where the last minute is often still empty."""

_QUERIES = (("Invocations", "Sum"), ("Invocation5XXErrors", "Sum"), ("ModelLatency", "p99"))


def _queries(endpoint: str, variants: list[str], window: int) -> list[dict[str, Any]]:
    return [
        {
            "Id": f"m{i}v{j}",
            "MetricStat": {
                "Metric": {
                    "Namespace": NAMESPACE,
                    "MetricName": metric,
                    "Dimensions": dimensions(endpoint, variant),
                },
                "Period": window,
                "Stat": stat,
            },
        }
        for j, variant in enumerate(variants)
        for i, (metric, stat) in enumerate(_QUERIES)
    ]


def read_health(
    cloudwatch: Any,
    endpoint: str,
    variants: list[str],
    *,
    window_seconds: int = WINDOW_SECONDS,
    now: datetime | None = None,
) -> Health:
    """The endpoint's request rate, 5xx share and p99 latency over the last ``window_seconds``.

    Args:
        cloudwatch: boto3 ``cloudwatch`` client.
        endpoint: the endpoint's name.
        variants: its production variants.
        window_seconds: the span read (a multiple of 60, as CloudWatch periods are).
        now: the end of the window (UTC); the current time when None.
    """
    end = (now or datetime.now(UTC)).replace(microsecond=0)
    start = end - timedelta(seconds=window_seconds)
    answer = cloudwatch.get_metric_data(
        MetricDataQueries=_queries(endpoint, variants, window_seconds),
        StartTime=start,
        EndTime=end,
    )
    values: dict[str, list[float]] = {
        r["Id"]: [float(v) for v in r.get("Values", []) if v is not None]
        for r in answer.get("MetricDataResults", [])
    }
    invocations = errors = 0.0
    p99: float | None = None
    for j in range(len(variants)):
        invocations += sum(values.get(f"m0v{j}", []))
        errors += sum(values.get(f"m1v{j}", []))
        latencies = values.get(f"m2v{j}", [])
        if latencies:
            # ModelLatency is in microseconds.
            worst = max(latencies) / 1000.0
            p99 = worst if p99 is None else max(p99, worst)
    return Health(
        source="cloudwatch",
        window_seconds=float(window_seconds),
        requests_per_second=invocations / window_seconds,
        error_rate=errors / invocations if invocations else None,
        p99_ms=p99 if invocations else None,
    )

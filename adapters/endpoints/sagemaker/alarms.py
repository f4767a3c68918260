"""The CloudWatch alarms that watch each SageMaker endpoint and roll a bad update back.

Per production variant, two alarms on SageMaker's own endpoint metrics (namespace
``AWS/SageMaker``, dimensions ``EndpointName`` and ``VariantName``):

- ``{endpoint}-{variant}-p99-latency``: ``ModelLatency`` (microseconds) at ``p99``, above
  ``p99_latency_ms`` for ``evaluation_periods`` periods;
- ``{endpoint}-{variant}-5xx-rate``: ``Invocation5XXErrors`` averaged, at or above
  ``error_rate``. SageMaker emits 1 for each invocation answered 5xx and 0 otherwise, so the
  average over a period *is* the share of failed invocations: a rate without metric math.

Missing data (no traffic) is not breaching: an idle endpoint is not a failing one. Both alarms
are put with ``PutMetricAlarm`` on every rollout, which creates or overwrites them, so a changed
threshold in the model config reaches CloudWatch with the next rollout; their tags are set with
``TagResource`` because ``PutMetricAlarm`` ignores tags when the alarm exists already. They are
named in the ``AutoRollbackConfiguration`` of every blue/green update, beside the alarms the
user names, and deleted with their endpoint. Only alarms tagged with the project are ever
listed or deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.endpoints.sagemaker.names import TAG_MODEL, TAG_PROJECT, tag_dict, tag_list

if TYPE_CHECKING:
    from core.config import AlarmConfig

NAMESPACE = "AWS/SageMaker"
TAG_ENDPOINT = "endpoint"
TAG_VARIANT = "variant"
KINDS = ("p99-latency", "5xx-rate")
"""The project's alarms per variant, as the end of their names."""


def alarm_name(endpoint: str, variant: str, kind: str) -> str:
    """``{endpoint}-{variant}-{kind}``: the same endpoint and variant always get the same name.

    The endpoint name (at most 63 characters) starts with the project prefix, so listing by
    prefix finds every alarm of the project; CloudWatch allows 255 characters.
    """
    return f"{endpoint}-{variant}-{kind}"


def dimensions(endpoint: str, variant: str) -> list[dict[str, str]]:
    """The dimensions SageMaker publishes its per-variant endpoint metrics under."""
    return [
        {"Name": "EndpointName", "Value": endpoint},
        {"Name": "VariantName", "Value": variant},
    ]


def alarm_requests(
    endpoint: str, variants: list[str], config: AlarmConfig, tags: dict[str, str]
) -> list[dict[str, Any]]:
    """The ``PutMetricAlarm`` requests for ``endpoint``'s variants (empty when switched off).

    Args:
        endpoint: the endpoint's name.
        variants: its production variants' names.
        config: thresholds and periods from the model config.
        tags: tags of every alarm (the project, model and lineage; endpoint and variant added).
    """
    if not config.create:
        return []
    window = f"{config.evaluation_periods} x {config.period_seconds}s"
    requests: list[dict[str, Any]] = []
    for variant in variants:
        common = {
            "Namespace": NAMESPACE,
            "Dimensions": dimensions(endpoint, variant),
            "Period": config.period_seconds,
            "EvaluationPeriods": config.evaluation_periods,
            "DatapointsToAlarm": config.evaluation_periods,
            "TreatMissingData": "notBreaching",
            "ActionsEnabled": False,  # SageMaker watches the state; nothing else is triggered
            "Tags": tag_list({**tags, TAG_ENDPOINT: endpoint, TAG_VARIANT: variant}),
        }
        requests.append(
            {
                **common,
                "AlarmName": alarm_name(endpoint, variant, "p99-latency"),
                "AlarmDescription": (
                    f"p99 ModelLatency of {endpoint}/{variant} above {config.p99_latency_ms:g} ms "
                    f"for {window}: rolls a blue/green update back"
                ),
                "MetricName": "ModelLatency",
                "ExtendedStatistic": "p99",
                # ModelLatency is published in microseconds.
                "Threshold": config.p99_latency_ms * 1000.0,
                "ComparisonOperator": "GreaterThanThreshold",
                # Few invocations make a poor p99: judge it anyway, a slow model is slow.
                "EvaluateLowSampleCountPercentile": "evaluate",
            }
        )
        requests.append(
            {
                **common,
                "AlarmName": alarm_name(endpoint, variant, "5xx-rate"),
                "AlarmDescription": (
                    f"{config.error_rate:.1%} or more of {endpoint}/{variant}'s invocations "
                    f"answered 5xx for {window}: rolls a blue/green update back"
                ),
                "MetricName": "Invocation5XXErrors",
                "Statistic": "Average",
                "Threshold": config.error_rate,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            }
        )
    return requests


@dataclass(frozen=True)
class ProjectAlarm:
    """One alarm of the project, as listed from CloudWatch."""

    name: str
    endpoint: str
    model: str
    state: str


class EndpointAlarms:
    """Put, list and delete the project's alarms through a boto3 ``cloudwatch`` client.

    Args:
        cloudwatch: boto3 ``cloudwatch`` client (built by the target, standard retries).
        project_tag: the project's tag; its alarms carry it and start with ``{project_tag}-``.
    """

    def __init__(self, cloudwatch: Any, project_tag: str) -> None:
        self.cw = cloudwatch
        self.project_tag = project_tag

    def put(self, requests: list[dict[str, Any]]) -> list[str]:
        """Create or update every alarm of ``requests``; return their names."""
        names = [r["AlarmName"] for r in requests]
        if not requests:
            return names
        for request in requests:
            self.cw.put_metric_alarm(**request)
        found = self.cw.describe_alarms(AlarmNames=names, AlarmTypes=["MetricAlarm"])
        arns = {a["AlarmName"]: a["AlarmArn"] for a in found.get("MetricAlarms", [])}
        for request in requests:
            # PutMetricAlarm ignores Tags on an existing alarm: set them explicitly.
            self.cw.tag_resource(ResourceARN=arns[request["AlarmName"]], Tags=request["Tags"])
        return names

    def listed(self) -> list[ProjectAlarm]:
        """Every alarm tagged with the project (the name prefix alone could be another's)."""
        found: list[ProjectAlarm] = []
        pages = self.cw.get_paginator("describe_alarms").paginate(
            AlarmNamePrefix=f"{self.project_tag}-", AlarmTypes=["MetricAlarm"]
        )
        for page in pages:
            for alarm in page.get("MetricAlarms", []):
                tags = tag_dict(
                    self.cw.list_tags_for_resource(ResourceARN=alarm["AlarmArn"]).get("Tags", [])
                )
                if tags.get(TAG_PROJECT) != self.project_tag or not tags.get(TAG_ENDPOINT):
                    continue
                found.append(
                    ProjectAlarm(
                        name=alarm["AlarmName"],
                        endpoint=tags[TAG_ENDPOINT],
                        model=tags.get(TAG_MODEL, ""),
                        state=str(alarm.get("StateValue", "")),
                    )
                )
        return found

    def of_endpoint(self, endpoint: str) -> list[str]:
        """Names of the project's alarms that watch ``endpoint``."""
        return [a.name for a in self.listed() if a.endpoint == endpoint]

    def existing(self, names: list[str]) -> list[str]:
        """Which of ``names`` exist (one call for up to 100 names, no tags read)."""
        found = self.cw.describe_alarms(AlarmNames=names[:100], AlarmTypes=["MetricAlarm"])
        return [a["AlarmName"] for a in found.get("MetricAlarms", [])]

    def delete(self, names: list[str]) -> None:
        """Delete the named alarms.

        Names come from :meth:`listed`: CloudWatch deletes none of a call naming an alarm that
        does not exist.
        """
        for start in range(0, len(names), 100):  # DeleteAlarms takes 100 names a call
            self.cw.delete_alarms(AlarmNames=names[start : start + 100])

"""What the project has on SageMaker, for the cleanup plan, and deleting it.

Only resources carrying the project's tag are listed or deleted: the name prefix alone is not
enough (``intelli-rate-`` is also the prefix of a project tagged ``intelli-rate-staging``). A
config or model is in use while a live endpoint references it, as its current config or as the
one an update in flight moves to; that is checked against SageMaker at delete time. The
project's CloudWatch alarms (:mod:`.alarms`) are in use while the endpoint they watch lives:
they go with it (deleting an endpoint deletes its alarms), and cleanup deletes those left when an
endpoint went some other way.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from adapters.endpoints.sagemaker.alarms import EndpointAlarms
from adapters.endpoints.sagemaker.api import (
    Live,
    SageMakerApi,
    endpoint_configs,
    not_found,
)
from adapters.endpoints.sagemaker.names import (
    TAG_MODEL,
    TAG_PROJECT,
    TAG_VERSION,
    VARIANT,
    endpoint_cost,
    endpoint_name,
    name_prefix,
)
from core.endpoint import Progress, Resource

if TYPE_CHECKING:
    from core.config import PlatformConfig

# Listings of what endpoints reference: (resource kind, list call, noun in SageMaker's answers).
_LISTINGS = (
    ("endpoint-config", "list_endpoint_configs", "EndpointConfig"),
    ("model", "list_models", "Model"),
)


def owner(name: str, tags: dict[str, str], prefix: str) -> tuple[str, str | None]:
    """Model and version of a resource: from its tags, else from its name."""
    model = tags.get(TAG_MODEL)
    if not model:
        rest = name[len(prefix) :]
        match = re.match(r"^(.*?)(?:-(v\d+)-[0-9a-f]+)?$", rest)
        model = (match.group(1) if match else rest).replace("-", "_")
    return model, tags.get(TAG_VERSION)


class Inventory:
    """List, delete and remove the project's endpoints, endpoint configs and models.

    Args:
        api: the SageMaker client, with its polling.
        cloudwatch: boto3 ``cloudwatch`` client (idle days, alarms).
        platform: project tag, pricing, retention.
    """

    def __init__(self, api: SageMakerApi, cloudwatch: Any, platform: PlatformConfig) -> None:
        self.api = api
        self.sm = api.sm
        self.cloudwatch = cloudwatch
        self.alarms = EndpointAlarms(cloudwatch, platform.project_tag)
        self.platform = platform
        self.prefix = name_prefix(platform.project_tag)

    def _ours(self, tags: dict[str, str]) -> bool:
        return tags.get(TAG_PROJECT) == self.platform.project_tag

    def _live(self) -> Live:
        return self.api.live(self.prefix)

    # --- listing ---------------------------------------------------------------------------------

    def resources(self) -> list[Resource]:
        """Every endpoint, endpoint config and model of this project, ``in_use`` filled in.

        Endpoints are always in use; their details carry the status, monthly cost and idle days
        (from CloudWatch ``Invocations``).
        """
        live = self._live()
        used = {"endpoint-config": live.configs, "model": live.models}
        found = self._endpoints(live)
        for kind, call, noun in _LISTINGS:
            for summary in self.api.paginate(call, f"{noun}s", NameContains=self.prefix):
                name = summary[f"{noun}Name"]
                if not name.startswith(self.prefix):
                    continue
                tags = self.api.list_tags(summary[f"{noun}Arn"])
                if not self._ours(tags):
                    continue
                model, version = owner(name, tags, self.prefix)
                created = {"created": summary["CreationTime"].isoformat()}
                found.append(Resource(kind, name, model, version, name in used[kind], created))
        return found + self._alarms(live)

    def _alarms(self, live: Live) -> list[Resource]:
        """The project's alarms; in use while the endpoint they watch lives."""
        return [
            # No version: an alarm watches the endpoint, whichever version it serves.
            Resource(
                "alarm",
                alarm.name,
                alarm.model,
                None,
                _watches_live(alarm.endpoint, live),
                {"endpoint": alarm.endpoint, "state": alarm.state},
            )
            for alarm in self.alarms.listed()
        ]

    def _endpoints(self, live: Live) -> list[Resource]:
        now = datetime.now(UTC)
        found: list[Resource] = []
        for name, desc in sorted(live.endpoints.items()):
            config = live.config_descriptions.get(desc.get("EndpointConfigName", ""))
            tags = self.api.list_tags(desc["EndpointArn"])
            if not self._ours(tags):
                continue
            model, _ = owner(name, tags, self.prefix)
            version = self.api.config_version(config)
            created = desc["CreationTime"]
            variants = [v["VariantName"] for v in desc.get("ProductionVariants", [])]
            details = {
                "status": desc["EndpointStatus"],
                "config": desc.get("EndpointConfigName"),
                "created": created.isoformat(),
                "idle_days": self._idle_days(name, created, variants, now),
                "monthly_cost_usd": endpoint_cost(desc, config, self.platform),
            }
            found.append(Resource("endpoint", name, model, version, True, details))
        return found

    def _idle_days(
        self, name: str, created: datetime, variants: list[str], now: datetime
    ) -> int | None:
        """Days since the endpoint's last invocation, looking back ``retention.idle_days``.

        No invocation in the window: the window (or the endpoint's age, when younger), i.e. "at
        least this many days". None when CloudWatch cannot be read.
        """
        window = self.platform.retention.idle_days
        age = max(0, (now - created).days)
        last: datetime | None = None
        try:
            for variant in variants or [VARIANT]:
                stats = self.cloudwatch.get_metric_statistics(
                    Namespace="AWS/SageMaker",
                    MetricName="Invocations",
                    Dimensions=[
                        {"Name": "EndpointName", "Value": name},
                        {"Name": "VariantName", "Value": variant},
                    ],
                    StartTime=now - timedelta(days=window),
                    EndTime=now,
                    Period=86400,
                    Statistics=["Sum"],
                )
                for point in stats.get("Datapoints", []):
                    if point.get("Sum", 0) > 0 and (last is None or point["Timestamp"] > last):
                        last = point["Timestamp"]
        except Exception:
            return None
        if last is None:
            return min(window, age)
        return max(0, (now - last).days)

    # --- deleting --------------------------------------------------------------------------------

    def delete(self, resource: Resource) -> None:
        """Delete one resource of this project.

        Configs and models a live endpoint references are refused, checked against SageMaker
        now rather than the (possibly stale) ``resource.in_use``. An endpoint is deleted when
        asked: cleanup asks only for endpoints of models no longer configured.

        Raises:
            ValueError: the resource is in use, or is not this project's.
        """
        if not resource.name.startswith(self.prefix):
            raise ValueError(f"{resource.name} is not a {self.platform.project_tag} resource")
        if resource.kind == "endpoint":
            self.api.release_scaling(resource.name, lambda _message: None)
            self.sm.delete_endpoint(EndpointName=resource.name)
            self.alarms.delete(self.alarms.of_endpoint(resource.name))
            return
        live = self._live()
        if resource.kind == "alarm":
            self._delete_alarm(resource.name, live)
            return
        if resource.kind == "endpoint-config":
            if resource.name in live.configs:
                raise ValueError(f"endpoint config {resource.name} is in use by a live endpoint")
            self.sm.delete_endpoint_config(EndpointConfigName=resource.name)
        elif resource.kind == "model":
            if resource.name in live.models:
                raise ValueError(f"model {resource.name} is in use by a live endpoint")
            self.sm.delete_model(ModelName=resource.name)
        else:
            raise ValueError(f"unknown resource kind {resource.kind!r}")

    def _delete_alarm(self, name: str, live: Live) -> None:
        """Delete one of the project's alarms, unless the endpoint it watches lives."""
        alarm = next((a for a in self.alarms.listed() if a.name == name), None)
        if alarm is None:
            raise ValueError(f"alarm {name} is not a {self.platform.project_tag} alarm")
        if _watches_live(alarm.endpoint, live):
            raise ValueError(f"alarm {name} is in use: it watches live endpoint {alarm.endpoint}")
        self.alarms.delete([name])

    def remove(self, model: str, timeout: float, progress: Progress) -> None:
        """Delete the model's endpoint and the configs and models it used, unless still in use.

        Args:
            model: the model whose endpoint goes.
            timeout: longest wait for the endpoint to be gone.
            progress: where to report each step.
        """
        name = endpoint_name(self.platform.project_tag, model)
        desc = self.api.describe_endpoint(name)
        if desc is None:
            return
        configs = {c: self.api.describe_config(c) for c in endpoint_configs(desc)}
        self.api.delete_endpoint_and_wait(name, timeout, progress)
        alarms = self.alarms.of_endpoint(name)
        if alarms:
            self.alarms.delete(alarms)
            progress(f"deleted alarms {', '.join(alarms)}")
        live = self._live()
        for config_name, config in configs.items():
            if config is None or config_name in live.configs:
                continue
            self.sm.delete_endpoint_config(EndpointConfigName=config_name)
            for production in config.get("ProductionVariants", []):
                if production["ModelName"] not in live.models:
                    self._delete_model_if_there(production["ModelName"])

    def _delete_model_if_there(self, name: str) -> None:
        try:
            self.sm.delete_model(ModelName=name)
        except Exception as exc:
            if not not_found(exc):
                raise


def _watches_live(endpoint: str, live: Live) -> bool:
    """Whether ``endpoint`` exists and is not on its way out (its alarms are then in use)."""
    desc = live.endpoints.get(endpoint)
    return desc is not None and desc.get("EndpointStatus") != "Deleting"

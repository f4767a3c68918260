"""Experiments on SageMaker: the challenger as a second variant of the model's one endpoint.

SageMaker's own mechanisms, so the console, CloudWatch and Data Capture show the experiment:

- ``ab``: an endpoint config with two production variants, the champion's (its existing
  ``AllTraffic`` variant, weight ``100 - share``) and ``Challenger`` (weight ``share``); a
  variant answers weight / sum of weights, and InvokeEndpoint's ``TargetVariant`` can name one.
  SageMaker has no switch for that and its capture does not record it, so the project's
  ``experiment.allow_target_variant`` cannot be enforced here: the start says so
  (:data:`TARGET_VARIANT_LIMIT`), and ``docs/sagemaker.md`` names the limit.
- ``shadow``: one production variant and one ``ShadowProductionVariants`` entry, ``Shadow``;
  SageMaker copies ``shadow weight / production weight`` of the requests to it and discards
  its answers. So the production variant keeps weight 1 and the shadow gets ``share / 100``.
- Data capture on, every request (``InitialSamplingPercentage`` 100), input and output, under
  the champion config's destination (``{store}/datacapture/{model}`` by default): SageMaker
  writes ``{destination}/{endpoint}/{variant}/yyyy/mm/dd/hh/*.jsonl``, the layout the local
  router writes too.

The challenger's variant gets the same two CloudWatch alarms as every production variant
(:mod:`.alarms`: p99 latency, 5xx rate, thresholds from the challenger's config), put before
the update and deleted when the experiment stops or fails. They can roll nothing back: the
experiment's update adds a variant, and SageMaker's deployment guardrails need the new config
to keep the old one's variant names, so they are there to be seen (console, ``mlops status``
reads the same metrics) while the experiment's own statistics decide.

The challenger's variant does not autoscale (:mod:`.autoscaling`): it runs its config's
``instance_count`` for the experiment's length. Its share of traffic is fixed by weight, a fleet
that changes size under the comparison would move its latency for reasons that are not the
model's, and a variant never registered needs no deregistering before the update that removes it
(SageMaker refuses to remove a registered variant). The champion's ``AllTraffic`` keeps its
registration: the experiment's config keeps its name and instance type, which SageMaker allows.

The endpoint moves to the experiment's config with ``UpdateEndpoint`` (SageMaker keeps the
champion serving until the new fleet is healthy, and rolls back by itself when it is not). The
config is tagged with the experiment's id and mode and the config it replaced, so
:meth:`SageMakerExperiments.stop` needs nothing but the endpoint: it first moves all traffic to
the champion with ``UpdateEndpointWeightsAndCapacities`` (in place, seconds), then updates the
endpoint back to the champion's one-variant config (recreated if cleanup removed it) and
deletes the experiment's config and the challenger's model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.endpoints.plan import check_plan
from adapters.endpoints.sagemaker.alarms import KINDS, EndpointAlarms, alarm_name, alarm_requests
from adapters.endpoints.sagemaker.api import (
    SageMakerApi,
    StillSettling,
    already_exists,
    described,
    not_found,
)
from adapters.endpoints.sagemaker.names import (
    TAG_VERSION,
    _digest,
    endpoint_name,
    name_prefix,
    resource_name,
    resource_tags,
    tag_list,
)
from core.endpoint import Progress, RolloutFailed, TrafficPlan

if TYPE_CHECKING:
    from adapters.endpoints.sagemaker.target import SageMakerTarget

CHALLENGER = "Challenger"
SHADOW = "Shadow"
TAG_EXPERIMENT = "experiment"
TAG_MODE = "experiment-mode"
TAG_PREVIOUS = "experiment-previous-config"
_CAPTURE_OPTIONS = {
    "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
    "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
}


TARGET_VARIANT_LIMIT = (
    "{name}: SageMaker cannot refuse InvokeEndpoint's TargetVariant, and Data Capture does not "
    "record it: a caller allowed to invoke the endpoint can pick {variant}, unseen by the "
    "analysis; keep InvokeEndpoint to trusted callers (docs/sagemaker.md)"
)
"""What an A/B start on SageMaker says when the experiment does not allow named variants."""


class SageMakerExperiments:
    """Start, stop and describe experiments on a :class:`SageMakerTarget`'s endpoints."""

    def __init__(self, target: SageMakerTarget) -> None:
        self.target = target
        self.api: SageMakerApi = target._api()
        self.sm = target.sm
        self.tag = target.platform.project_tag
        self.alarms = EndpointAlarms(target.cloudwatch, self.tag)

    def _timeout(self, fallback: float) -> float:
        return fallback if self.target.timeout_seconds is None else self.target.timeout_seconds

    def _current(self, model: str) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, str]]:
        """The endpoint's name, description, config and config tags.

        Raises:
            RolloutFailed: (``prepare``) no endpoint, or not ``InService``.
        """
        name = endpoint_name(self.tag, model)
        desc = self.api.describe_endpoint(name)
        if desc is None:
            raise RolloutFailed("prepare", f"{model} has no SageMaker endpoint ({name})")
        if desc["EndpointStatus"] != "InService":
            raise RolloutFailed("prepare", f"{name} is {desc['EndpointStatus']}, not InService")
        config = self.api.describe_config(desc["EndpointConfigName"]) or {}
        tags = self.api.list_tags(config["EndpointConfigArn"]) if config else {}
        return name, desc, config, tags

    # --- start ----------------------------------------------------------------------------------

    def start(self, plan: TrafficPlan, progress: Progress) -> None:
        """Move the endpoint to a config serving champion and challenger (module docstring).

        Raises:
            RolloutFailed: the endpoint serves the champion's config as before, and the
                experiment's config and the challenger's model are deleted.
        """
        check_plan(plan)
        if plan.challenger.endpoint.serverless is not None:
            raise RolloutFailed(
                "prepare", "experiments need data capture, which serverless endpoints lack"
            )
        name, _desc, config, tags = self._current(plan.model)
        if tags.get(TAG_EXPERIMENT) or len(config.get("ProductionVariants", [])) != 1:
            raise RolloutFailed(
                "prepare", f"{plan.model} already runs experiment {tags.get(TAG_EXPERIMENT, '?')}"
            )
        serving = self.api.config_version(config)
        if serving != plan.champion.version:
            raise RolloutFailed(
                "prepare", f"{name} serves {serving}, not the champion {plan.champion.version}"
            )
        definition = self.target._definition(plan.challenger, self.target._role())
        request = self._config_request(plan, config, definition.variant)
        created: list[tuple[str, str]] = []
        try:
            if self._create(lambda: self.sm.create_model(**definition.model_request())):
                created.append(("model", definition.names.model))
            if self._create(lambda: self.sm.create_endpoint_config(**request)):
                created.append(("endpoint-config", request["EndpointConfigName"]))
            second = CHALLENGER if plan.mode == "ab" else SHADOW
            thresholds = plan.challenger.endpoint.deployment.alarms
            puts = alarm_requests(name, [second], thresholds, definition.tags)
            created += [("alarm", alarm) for alarm in self.alarms.put(puts)]
            self.sm.update_endpoint(
                EndpointName=name, EndpointConfigName=request["EndpointConfigName"]
            )
        except RolloutFailed:
            raise
        except Exception as exc:
            raise self._fail("update", f"{name}: {described(exc)}", created, progress) from exc
        progress(
            f"{name}: moving to {request['EndpointConfigName']} ({plan.mode}, "
            f"{plan.challenger.version} at {plan.share_percent:g} %)"
        )
        self._settle(name, request["EndpointConfigName"], created, progress, plan)
        progress(
            f"{plan.model}: experiment {plan.experiment_id} runs on {name}; capture to "
            f"{request['DataCaptureConfig']['DestinationS3Uri']}"
        )
        if plan.mode == "ab" and not plan.allow_target_variant:
            progress(TARGET_VARIANT_LIMIT.format(name=name, variant=CHALLENGER))

    def _config_request(
        self, plan: TrafficPlan, config: dict[str, Any], challenger: dict[str, Any]
    ) -> dict[str, Any]:
        """CreateEndpointConfig's arguments for ``plan`` beside ``config``'s one variant."""
        champion = dict(config["ProductionVariants"][0])
        champion.pop("VariantStatus", None)
        request: dict[str, Any] = {}
        if plan.mode == "ab":
            champion["InitialVariantWeight"] = 100.0 - plan.share_percent
            second = {**challenger, "VariantName": CHALLENGER}
            second["InitialVariantWeight"] = plan.share_percent
            request["ProductionVariants"] = [champion, second]
        else:
            champion["InitialVariantWeight"] = 1.0
            shadow = {**challenger, "VariantName": SHADOW}
            shadow["InitialVariantWeight"] = plan.share_percent / 100.0
            request["ProductionVariants"] = [champion]
            request["ShadowProductionVariants"] = [shadow]
        old_capture = config.get("DataCaptureConfig") or {}
        capture = {
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": old_capture.get("DestinationS3Uri")
            or self.default_capture(plan.model),
            **_CAPTURE_OPTIONS,
        }
        if self.target.kms_key_id:
            capture["KmsKeyId"] = self.target.kms_key_id
        request["DataCaptureConfig"] = capture
        request["EndpointConfigName"] = resource_name(
            self.tag,
            plan.model,
            f"{plan.challenger.version}-{plan.mode}",
            _digest(plan.experiment_id, request),
        )
        tags = {
            **resource_tags(plan.champion, self.tag),
            TAG_EXPERIMENT: plan.experiment_id,
            TAG_MODE: plan.mode,
            TAG_PREVIOUS: config["EndpointConfigName"],
        }
        request["Tags"] = tag_list(tags)
        return request

    def _create(self, create: Any) -> bool:
        """Create a resource; False when it exists already (a retried start reuses it)."""
        try:
            create()
            return True
        except Exception as exc:
            if already_exists(exc):
                return False
            raise

    def _settle(
        self,
        name: str,
        config_name: str,
        created: list[tuple[str, str]],
        progress: Progress,
        plan: TrafficPlan,
    ) -> None:
        timeout = self._timeout(float(plan.challenger.endpoint.timeout_seconds))
        try:
            desc = self.api.wait(name, timeout, progress)
        except StillSettling as exc:
            raise self._fail(
                "wait",
                f"{name} still {exc.status} after {exc.elapsed:.0f}s; SageMaker rolls back by "
                "itself",
                created,
                progress,
            ) from exc
        if desc["EndpointStatus"] != "InService" or desc["EndpointConfigName"] != config_name:
            why = desc.get("FailureReason") or "no reason given"
            raise self._fail(
                "update",
                f"{name} ended {desc['EndpointStatus']} on {desc['EndpointConfigName']}: {why}",
                created,
                progress,
            )

    def _fail(
        self, step: str, reason: str, created: list[tuple[str, str]], progress: Progress
    ) -> RolloutFailed:
        """Delete what this start created unless an endpoint uses it; the error to raise."""
        live = self.api.live(name_prefix(self.tag))
        left = []
        for kind, resource in reversed(created):
            # The challenger's alarms watch a variant the champion's config does not have.
            in_use = {"endpoint-config": live.configs, "model": live.models}.get(kind, set())
            if resource in in_use:
                left.append(resource)
                continue
            self._delete(kind, resource, progress)
        tail = f"; left behind (in use): {', '.join(left)}" if left else ""
        return RolloutFailed(step, f"{reason}; the champion serves 100 %{tail}")

    def _delete(self, kind: str, resource: str, progress: Progress) -> None:
        try:
            if kind == "endpoint-config":
                self.sm.delete_endpoint_config(EndpointConfigName=resource)
            elif kind == "alarm":
                self.alarms.delete([resource])
            else:
                self.sm.delete_model(ModelName=resource)
            progress(f"deleted {kind} {resource}")
        except Exception as exc:
            if not not_found(exc):
                raise

    # --- weights, stop, traffic -----------------------------------------------------------------

    def set_share(self, model: str, share_percent: float, progress: Progress) -> None:
        """Change the challenger's share of an A/B test in place (no new config, no new fleet).

        ``UpdateEndpointWeightsAndCapacities``: SageMaker shifts the weights within seconds.

        Raises:
            RolloutFailed: (``weights``) no A/B test runs, or the endpoint did not settle.
        """
        name, _desc, config, tags = self._current(model)
        names = [v["VariantName"] for v in config.get("ProductionVariants", [])]
        if tags.get(TAG_MODE) != "ab" or CHALLENGER not in names:
            raise RolloutFailed("weights", f"{model} runs no A/B test")
        weights = [
            {
                "VariantName": n,
                "DesiredWeight": share_percent if n == CHALLENGER else 100.0 - share_percent,
            }
            for n in names
        ]
        self.sm.update_endpoint_weights_and_capacities(
            EndpointName=name, DesiredWeightsAndCapacities=weights
        )
        desc = self.api.wait(name, self._timeout(600.0), progress)
        if desc["EndpointStatus"] != "InService":
            raise RolloutFailed("weights", f"{name} ended {desc['EndpointStatus']}")

    def stop(self, model: str, progress: Progress) -> None:
        """Back to the champion's one-variant config; a no-op when no experiment runs."""
        name = endpoint_name(self.tag, model)
        desc = self.api.describe_endpoint(name)
        if desc is None:
            return
        config = self.api.describe_config(desc["EndpointConfigName"]) or {}
        tags = self.api.list_tags(config["EndpointConfigArn"]) if config else {}
        if not tags.get(TAG_EXPERIMENT):
            return
        if tags.get(TAG_MODE) == "ab":
            # All traffic to the champion at once, before the slower config update.
            self.set_share(model, 0.0, progress)
        previous = self._previous_config(model, config, tags, progress)
        self.sm.update_endpoint(EndpointName=name, EndpointConfigName=previous)
        desc = self.api.wait(name, self._timeout(3600.0), progress)
        if desc["EndpointStatus"] != "InService" or desc["EndpointConfigName"] != previous:
            why = desc.get("FailureReason") or "no reason given"
            raise RolloutFailed("stop", f"{name} did not return to {previous}: {why}")
        self.discard(name, config, progress)
        progress(f"{model}: experiment {tags[TAG_EXPERIMENT]} stopped; {previous} serves 100 %")

    def discard_if_experiment(self, endpoint: str, config_name: str, progress: Progress) -> None:
        """:meth:`discard` the config ``config_name`` if it is an experiment's (else nothing).

        A deploy calls it with the config the endpoint left: a promotion during an experiment.
        """
        config = self.api.describe_config(config_name)
        if config and self.api.list_tags(config["EndpointConfigArn"]).get(TAG_EXPERIMENT):
            self.discard(endpoint, config, progress)

    def discard(self, endpoint: str, config: dict[str, Any], progress: Progress) -> None:
        """Delete an experiment's config, challenger model and second variant's alarms.

        The config and model only when no endpoint uses them; the alarms are those on the
        challenger's or shadow's variant of ``endpoint``.

        After :meth:`stop`, and after a deploy that moved the endpoint off the experiment (a
        promotion rolls the challenger out as the champion): nothing would use the config again,
        and the champion's own model stays (its one-variant config is the rollback target).
        """
        challengers = [
            v["ModelName"]
            for v in [
                *config["ProductionVariants"][1:],
                *config.get("ShadowProductionVariants", []),
            ]
        ]
        live = self.api.live(name_prefix(self.tag))
        for kind, resource in [("endpoint-config", config["EndpointConfigName"])] + [
            ("model", m) for m in challengers
        ]:
            if resource not in (live.configs if kind == "endpoint-config" else live.models):
                self._delete(kind, resource, progress)
        # The second variant's alarms: named after this endpoint, so the project's.
        gone = [alarm_name(endpoint, v, k) for v in (CHALLENGER, SHADOW) for k in KINDS]
        for alarm in self.alarms.existing(gone):
            self._delete("alarm", alarm, progress)

    def _previous_config(
        self, model: str, config: dict[str, Any], tags: dict[str, str], progress: Progress
    ) -> str:
        """The champion's one-variant config: the one the experiment replaced, or a new one."""
        previous = tags.get(TAG_PREVIOUS, "")
        if previous and self.api.describe_config(previous) is not None:
            return previous
        champion = {**config["ProductionVariants"][0], "InitialVariantWeight": 1.0}
        champion.pop("VariantStatus", None)
        request: dict[str, Any] = {"ProductionVariants": [champion]}
        if config.get("DataCaptureConfig"):
            request["DataCaptureConfig"] = config["DataCaptureConfig"]
        keep = {k: v for k, v in tags.items() if k not in (TAG_EXPERIMENT, TAG_MODE, TAG_PREVIOUS)}
        request["EndpointConfigName"] = resource_name(
            self.tag, model, keep.get(TAG_VERSION, "v0"), _digest(request)
        )
        request["Tags"] = tag_list(keep)
        if self._create(lambda: self.sm.create_endpoint_config(**request)):
            progress(f"created endpoint config {request['EndpointConfigName']} (champion alone)")
        return str(request["EndpointConfigName"])

    def traffic(self, model: str) -> dict[str, Any] | None:
        """Mode, variants with weights and versions, shadow, experiment id; None if no endpoint."""
        desc = self.api.describe_endpoint(endpoint_name(self.tag, model))
        if desc is None:
            return None
        config = self.api.describe_config(desc["EndpointConfigName"]) or {}
        tags = self.api.list_tags(config["EndpointConfigArn"]) if config else {}
        weights = {v["VariantName"]: v.get("CurrentWeight") for v in desc["ProductionVariants"]}
        production = config.get("ProductionVariants", [])
        variants = [
            {
                "name": v["VariantName"],
                "version": self._version(v["ModelName"]),
                "weight": weights.get(v["VariantName"], v.get("InitialVariantWeight")),
                "arm": "challenger" if v["VariantName"] == CHALLENGER else "champion",
            }
            for v in production
        ]
        shadow = None
        for v in config.get("ShadowProductionVariants", []):
            base = float(production[0].get("InitialVariantWeight", 1.0)) if production else 1.0
            shadow = {
                "name": v["VariantName"],
                "version": self._version(v["ModelName"]),
                "percent": 100.0 * float(v.get("InitialVariantWeight", 1.0)) / base,
            }
        return {
            "mode": tags.get(TAG_MODE),
            "experiment_id": tags.get(TAG_EXPERIMENT),
            "variants": variants,
            "shadow": shadow,
            "capture_prefix": (config.get("DataCaptureConfig") or {}).get("DestinationS3Uri"),
        }

    def _version(self, model_name: str) -> str | None:
        found = self.api.describe_model(model_name)
        return self.api.list_tags(found["ModelArn"]).get(TAG_VERSION) if found else None

    def default_capture(self, model: str) -> str:
        """``{store}/datacapture/{model}``, where a deploy's data capture goes too."""
        return f"{self.target.store_uri}/datacapture/{model}"

    def capture_prefix(self, model: str) -> str:
        """The endpoint config's capture destination, else the default one."""
        desc = self.api.describe_endpoint(endpoint_name(self.tag, model))
        config = self.api.describe_config(desc["EndpointConfigName"]) if desc else None
        destination = ((config or {}).get("DataCaptureConfig") or {}).get("DestinationS3Uri")
        return str(destination or self.default_capture(model))

"""One deploy: create or update the endpoint, wait for the outcome, put things back on failure.

The steps, each safe to repeat (names hash what the resources hold, see
:mod:`adapters.endpoints.sagemaker.names`):

1. wait out anything in flight on the endpoint; a ``Failed`` endpoint is deleted;
2. put the endpoint's CloudWatch alarms (created, or updated to the config's thresholds);
3. stop if the endpoint already serves this deploy's config;
4. create the model and the endpoint config ("already exists" with the same definition is reuse);
5. create the endpoint, or update it blue/green to the new config, the alarms of step 2 and the
   config's own named in its ``AutoRollbackConfiguration``;
6. wait until it settles, and judge: ``InService`` on the new config is success;
7. bring its autoscaling to the config (:mod:`.autoscaling`, which also releases before 5).

Anything else raises :class:`~core.endpoint.RolloutFailed` after putting things back: an
endpoint this attempt created is deleted (with its alarms), an updated one is left on the config
SageMaker rolled it back to, and the config and model made for the attempt are deleted unless an
endpoint still references them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from adapters.endpoints.iam import ecr_image
from adapters.endpoints.sagemaker.alarms import EndpointAlarms, alarm_requests
from adapters.endpoints.sagemaker.api import (
    SETTLING,
    SageMakerApi,
    StillSettling,
    already_exists,
    described,
    error,
    not_found,
)
from adapters.endpoints.sagemaker.autoscaling import KEEP_FLEET_SIZE
from adapters.endpoints.sagemaker.names import (
    TAG_MODEL,
    TAG_PROJECT,
    Definition,
    deployment_config,
    name_prefix,
    rollback_alarms,
    tag_list,
)
from core.endpoint import Progress, RolloutFailed, Serving, VersionToServe

if TYPE_CHECKING:
    from adapters.endpoints.sagemaker.autoscaling import Registration, RolloutScaling
    from adapters.endpoints.sagemaker.names import Names


def check_deployable(target: VersionToServe, serving_image: str | None, progress: Progress) -> None:
    """Refuse, before anything is created, a deploy SageMaker cannot run.

    Raises:
        RolloutFailed: (``prepare``) no serving image, one outside ECR, or model data outside
            S3.
    """
    if not serving_image:
        raise RolloutFailed(
            "prepare",
            "no serving image: build docker/serving.Dockerfile, push it to ECR and set "
            "MLOPS_SERVING_IMAGE",
        )
    if not ecr_image(serving_image):
        raise RolloutFailed(
            "prepare",
            f"serving image {serving_image} is not in ECR: SageMaker pulls only from ECR, and the "
            "execution role may pull only from that repository; push the image to "
            "<account>.dkr.ecr.<region>.amazonaws.com/<repository> and set MLOPS_SERVING_IMAGE",
        )
    if not target.model_data_uri.startswith("s3://"):
        raise RolloutFailed(
            "prepare", f"SageMaker reads models from S3; got {target.model_data_uri}"
        )
    endpoint = target.endpoint
    if endpoint.data_capture_percent and endpoint.serverless is not None:
        progress("data capture is not supported on serverless endpoints: not enabled")


def model_differences(definition: Definition, existing: dict[str, Any]) -> list[str]:
    """Fields in which an existing model differs from the one ``definition`` asks for."""
    found = existing.get("PrimaryContainer", {})
    differs = [k for k, v in definition.container.items() if found.get(k) != v]
    if existing.get("ExecutionRoleArn") != definition.role:
        differs.append("ExecutionRoleArn")
    # Isolation is in the name's hash with the VPC; the VPC is compared too, as SageMaker keeps it.
    if (existing.get("VpcConfig") or None) != definition.vpc:
        differs.append("VpcConfig")
    return differs


def config_differences(definition: Definition, existing: dict[str, Any]) -> list[str]:
    """Fields in which an existing endpoint config differs from the one ``definition`` asks for."""
    found = (existing.get("ProductionVariants") or [{}])[0]
    differs = [k for k, v in definition.variant.items() if found.get(k) != v]
    found_capture = existing.get("DataCaptureConfig") or {}
    for key in ("InitialSamplingPercentage", "DestinationS3Uri"):
        if (definition.data_capture or {}).get(key) != found_capture.get(key):
            differs.append(f"DataCaptureConfig.{key}")
    return differs


def _failure(desc: dict[str, Any], endpoint: str, created: bool, old: str | None) -> str:
    """Why a settled endpoint does not serve the new config (created, or updated from ``old``)."""
    status = desc["EndpointStatus"]
    if created:
        reason = desc.get("FailureReason") or f"ended {status}"
        return f"{endpoint}: {reason}; the new endpoint was deleted"
    now = desc.get("EndpointConfigName")
    why = desc.get("FailureReason") or "no reason given"
    if status == "InService" and now == old:
        return f"{endpoint} rolled back to {old}: {why}"
    return f"{endpoint} ended {status} on {now}: {why}"


class Rollout:
    """One attempt to make the model's endpoint serve ``target`` (see the module docstring).

    Args:
        api: the SageMaker client, with its polling.
        target: the version to serve.
        definition: names and request bodies for ``target``.
        project_tag: tag of the endpoint, when this attempt creates it.
        progress: where to report each step.
        timeout: longest wait for the endpoint to settle.
        alarms: the CloudWatch alarms' client; None puts no alarms (user-named ones still roll
            an update back).
        scaling: the rollout's autoscaling steps (:mod:`.autoscaling`); None: none taken.
    """

    def __init__(
        self,
        api: SageMakerApi,
        target: VersionToServe,
        definition: Definition,
        *,
        project_tag: str,
        progress: Progress,
        timeout: float,
        alarms: EndpointAlarms | None = None,
        scaling: RolloutScaling | None = None,
    ) -> None:
        self.api = api
        self.alarms = alarms
        self.scaling = scaling
        self.own_alarms: list[str] = []
        self.sm = api.sm
        self.target = target
        self.definition = definition
        self.names: Names = definition.names
        self.project_tag = project_tag
        self.progress = progress
        self.timeout = timeout
        self.replaced: str | None = None
        """The config the endpoint was on before this deploy (once :meth:`run` has looked)."""

    def run(self) -> Serving:
        """Create or update the endpoint to serve ``target``; wait until it does.

        Raises:
            RolloutFailed: the endpoint does not serve ``target``. It serves what it served
                before (a new endpoint is deleted), and the config and model made for this
                attempt are deleted unless an endpoint still references them.
        """
        serving = self._run()
        # Once InService, on every rollout (like the alarms): a changed min, max or target
        # reaches Application Auto Scaling without a new version.
        if self.scaling is not None:
            self.scaling.after_serving()
        return serving

    def _run(self) -> Serving:
        names = self.names
        before = self._settled_endpoint()
        self.replaced = before.get("EndpointConfigName") if before else None
        self._put_alarms(new_endpoint=before is None)
        if before is not None and self._serves(before):
            self.progress(f"{names.endpoint} already serves {self.target.version} ({names.config})")
            return self.api.serving(self.target.model, before)
        self._create_model_and_config()
        if before is None:
            before = self._create_endpoint()
            if before is None:
                return self._await(created=True)
            if self._serves(before):
                return self.api.serving(self.target.model, before)
        return self._update_endpoint(before)

    def _put_alarms(self, *, new_endpoint: bool) -> None:
        """Create or update the endpoint's alarms, before anything else is created.

        Put on every rollout, even one that finds its version serving, so a threshold changed in
        the model config reaches CloudWatch without a new version.
        """
        if self.alarms is None:
            return
        config = self.target.endpoint.deployment.alarms
        variants = [str(self.definition.variant["VariantName"])]
        requests = alarm_requests(self.names.endpoint, variants, config, self.definition.tags)
        try:
            self.own_alarms = self.alarms.put(requests)
        except Exception as exc:
            put = [r["AlarmName"] for r in requests]
            if new_endpoint:
                self._delete_alarms(put)
            raise RolloutFailed(
                "alarms",
                f"could not put CloudWatch alarms {', '.join(put)}: {described(exc)}; "
                "no SageMaker resource was changed",
            ) from exc
        if self.own_alarms:
            self.progress(
                f"alarms {', '.join(self.own_alarms)}: p99 latency above "
                f"{config.p99_latency_ms:g} ms or 5xx rate at or above {config.error_rate:.1%} for "
                f"{config.evaluation_periods} x {config.period_seconds}s"
            )

    def _delete_alarms(self, names: list[str]) -> list[str]:
        """Delete alarms of an endpoint that is gone; return what was left, and why."""
        if self.alarms is None or not names:
            return []
        try:
            self.alarms.delete(names)
        except Exception as exc:
            return [f"alarms {', '.join(names)} ({error(exc)[1]})"]
        self.progress(f"deleted alarms {', '.join(names)}")
        return []

    def _serves(self, desc: dict[str, Any]) -> bool:
        return (
            desc["EndpointStatus"] == "InService"
            and desc.get("EndpointConfigName") == self.names.config
        )

    # --- before: what is there ------------------------------------------------------------------

    def _settled_endpoint(self) -> dict[str, Any] | None:
        """The endpoint as it stands once nothing is in flight; None when there is none.

        An update in flight (a crashed earlier run's, say) is waited for, so a retry decides on
        the outcome instead of colliding with it. A ``Failed`` endpoint cannot be updated, and
        serves nothing: it is deleted so the deploy creates it afresh.
        """
        name = self.names.endpoint
        desc = self.api.describe_endpoint(name)
        if desc is None:
            return None
        if desc["EndpointStatus"] in SETTLING:
            self.progress(f"{name} is {desc['EndpointStatus']}: waiting for it before deploying")
            try:
                desc = self.api.wait(name, self.timeout, self.progress)
            except StillSettling as exc:
                raise RolloutFailed(
                    "wait",
                    f"{name} still {exc.status} after {exc.elapsed:.0f}s "
                    "from an earlier operation; nothing was changed",
                ) from exc
        if desc["EndpointStatus"] == "Failed":
            self.progress(
                f"{name} is Failed ({desc.get('FailureReason', 'no reason given')}) and serves "
                "nothing: deleting it to create it again"
            )
            self.api.delete_endpoint_and_wait(name, self.timeout, self.progress)
            return None
        return desc

    # --- creating the model and the endpoint config ---------------------------------------------

    def _create_model_and_config(self) -> None:
        for step, create in (
            ("create-model", self._create_model),
            ("create-endpoint-config", self._create_config),
        ):
            try:
                create()
            except RolloutFailed:
                raise
            except Exception as exc:
                raise self._fail(step, described(exc), delete_endpoint=False) from exc

    def _create_model(self) -> None:
        definition, name = self.definition, self.names.model
        self._create_or_reuse(
            "create-model",
            "model",
            name,
            # A role created moments ago may not be assumable yet: wait for IAM to propagate.
            # Network isolation (names.network): the container needs no network; SageMaker
            # fetches the model and captures data itself, through the VPC when there is one.
            lambda: self.api.while_role_propagates(
                lambda: self.sm.create_model(**definition.model_request())
            ),
            lambda: model_differences(definition, self.api.describe_model(name) or {}),
        )

    def _create_config(self) -> None:
        definition, name = self.definition, self.names.config
        request: dict[str, Any] = {
            "EndpointConfigName": name,
            "ProductionVariants": [definition.variant],
            "Tags": tag_list(definition.tags),
        }
        if definition.data_capture:
            request["DataCaptureConfig"] = definition.data_capture
        self._create_or_reuse(
            "create-endpoint-config",
            "endpoint config",
            name,
            lambda: self.sm.create_endpoint_config(**request),
            lambda: config_differences(definition, self.api.describe_config(name) or {}),
        )

    def _create_or_reuse(
        self,
        step: str,
        kind: str,
        name: str,
        create: Callable[[], Any],
        differences: Callable[[], list[str]],
    ) -> None:
        """Create a resource; one that exists with the same definition is this deploy's own."""
        try:
            create()
            self.progress(f"created {kind} {name}")
            return
        except Exception as exc:
            if not already_exists(exc):
                raise
        differs = differences()
        if differs:
            raise RolloutFailed(
                step,
                f"{kind} {name} exists with a different {', '.join(differs)}; "
                "it was not made by this deploy: delete it or publish a new version",
            )
        self.progress(f"{kind} {name} exists already (same definition), reused")

    # --- the endpoint: create or update, then wait ----------------------------------------------

    def _create_endpoint(self) -> dict[str, Any] | None:
        """Create the endpoint. Returns None, or the settled endpoint another deploy created."""
        names = self.names
        try:
            self.sm.create_endpoint(
                EndpointName=names.endpoint,
                EndpointConfigName=names.config,
                Tags=tag_list({TAG_PROJECT: self.project_tag, TAG_MODEL: self.target.model}),
            )
            self.progress(f"creating endpoint {names.endpoint} on {names.config}")
            return None
        except Exception as exc:
            if not already_exists(exc):
                raise self._fail("create", described(exc), delete_endpoint=False) from exc
        # A lost response or a concurrent deploy: decide on what is there once settled.
        self.progress(f"endpoint {names.endpoint} exists already")
        existing = self._settled_endpoint()
        if existing is None:
            return self._create_endpoint()
        return existing

    def _update_endpoint(self, before: dict[str, Any]) -> Serving:
        strategy = self.target.endpoint.deployment
        old = before.get("EndpointConfigName")
        config = deployment_config(strategy, self.own_alarms)
        limit = config["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"]
        if self.timeout < limit:
            self.progress(
                f"note: the wait ({self.timeout:.0f}s) is shorter than the deployment's own limit "
                f"({limit}s)"
            )
        rollback = rollback_alarms(strategy, self.own_alarms)
        watched = f", rolled back if any alarm fires: {', '.join(rollback)}" if rollback else ""
        released: list[Registration] = []
        if self.scaling is not None:
            try:
                old_config = self.api.describe_config(old) if old else None
                released = self.scaling.release_for_update(old_config, [self.definition.variant])
            except Exception as exc:
                reason = f"cannot deregister {self.names.endpoint} from autoscaling: "
                raise self._fail(
                    "autoscaling",
                    f"{reason}{described(exc)}; {old} still serves",
                    delete_endpoint=False,
                ) from exc
        scaled = self.scaling is not None and self.scaling.config is not None and not released
        try:
            return self._request_update(old, config, watched, KEEP_FLEET_SIZE if scaled else {})
        except RolloutFailed:
            if released and self.scaling is not None:
                self.scaling.put_back(released)  # the old fleet serves on, scaled as before
            raise

    def _request_update(
        self, old: str | None, config: dict[str, Any], watched: str, keep: dict[str, Any]
    ) -> Serving:
        names, strategy = self.names, self.target.endpoint.deployment
        try:
            self.sm.update_endpoint(
                EndpointName=names.endpoint,
                EndpointConfigName=names.config,
                DeploymentConfig=config,
                **keep,
            )
        except Exception as exc:
            raise self._fail(
                "update",
                f"{names.endpoint}: {described(exc)}; {old} still serves",
                delete_endpoint=False,
            ) from exc
        self.progress(
            f"update requested: {names.endpoint} from {old} to {names.config} "
            f"({strategy.type.replace('_', ' ')} blue/green{watched})"
        )
        return self._await(created=False, old=old)

    def _await(self, *, created: bool, old: str | None = None) -> Serving:
        """Wait for the endpoint to settle after this attempt's create, or its update from ``old``.

        One path for both: a created endpoint is this attempt's to delete on failure; an updated
        one stays where SageMaker leaves it (``old`` serves on while SageMaker finishes or rolls
        back).
        """
        names = self.names
        try:
            desc = self.api.wait(names.endpoint, self.timeout, self.progress)
        except StillSettling as exc:
            after = (
                "the new endpoint was deleted"
                if created
                else f"{old} serves until SageMaker completes or rolls back the update (it rolls "
                "back by itself past MaximumExecutionTimeoutInSeconds)"
            )
            raise self._fail(
                "wait",
                f"{names.endpoint} still {exc.status} after {exc.elapsed:.0f}s; {after}",
                delete_endpoint=created,
            ) from exc
        if self._serves(desc):
            self.progress(f"{names.endpoint} serves {self.target.version}")
            return self.api.serving(self.target.model, desc)
        step = "create" if created else "update"
        raise self._fail(
            step, _failure(desc, names.endpoint, created, old), delete_endpoint=created
        )

    # --- putting things back ---------------------------------------------------------------------

    def _fail(self, step: str, reason: str, *, delete_endpoint: bool) -> RolloutFailed:
        """Put things back after a failed attempt and build the error to raise."""
        if delete_endpoint:
            try:
                self.api.delete_endpoint_and_wait(self.names.endpoint, self.timeout, self.progress)
            except Exception as exc:
                reason += f"; could not delete endpoint {self.names.endpoint}: {error(exc)[1]}"
            else:
                left_alarms = self._delete_alarms(self.own_alarms)
                if left_alarms:
                    reason += f"; left behind: {'; '.join(left_alarms)}"
        left = self._discard()
        if left:
            reason += f"; left behind: {'; '.join(left)}"
        return RolloutFailed(step, reason)

    def _discard(self) -> list[str]:
        """Delete the attempt's config and model unless an endpoint references them.

        Returns:
            What was left behind, and why (empty when everything went).
        """
        names = self.names
        try:
            live = self.api.live(name_prefix(self.project_tag))
        except Exception as exc:
            # Without knowing what is in use nothing is safe to delete.
            return [f"{names.config} and {names.model} (cannot list endpoints: {exc})"]
        left: list[str] = []
        for kind, name, in_use, delete in (
            (
                "endpoint config",
                names.config,
                live.configs,
                lambda n: self.sm.delete_endpoint_config(EndpointConfigName=n),
            ),
            ("model", names.model, live.models, lambda n: self.sm.delete_model(ModelName=n)),
        ):
            if name in in_use:
                left.append(f"{kind} {name} (an endpoint references it)")
                continue
            try:
                delete(name)
                self.progress(f"deleted {kind} {name}")
            except Exception as exc:
                if not not_found(exc):
                    left.append(f"{kind} {name} ({error(exc)[1]})")
        return left

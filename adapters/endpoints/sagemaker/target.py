"""The SageMaker endpoint target: the :class:`~core.endpoint.EndpointTarget` on SageMaker.

It holds the clients and settings, and composes the package's parts: names and request bodies
(:mod:`.names`), the deploy (:mod:`.deploy`), the cleanup inventory (:mod:`.inventory`), all on
one reading and polling client (:mod:`.api`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from adapters.endpoints.iam import RoleError, project_role
from adapters.endpoints.sagemaker.alarms import EndpointAlarms
from adapters.endpoints.sagemaker.api import SageMakerApi, invoke
from adapters.endpoints.sagemaker.autoscaling import EndpointScaling, RolloutScaling
from adapters.endpoints.sagemaker.deploy import Rollout, check_deployable
from adapters.endpoints.sagemaker.health import read_health
from adapters.endpoints.sagemaker.inventory import Inventory
from adapters.endpoints.sagemaker.names import (
    VARIANT,
    Definition,
    Names,
    cost_line,
    define,
    endpoint_name,
    monthly_cost,
)
from core.endpoint import (
    Health,
    Progress,
    Resource,
    RolloutFailed,
    Serving,
    TrafficPlan,
    VersionToServe,
)

if TYPE_CHECKING:
    from core.config import EndpointConfig, PlatformConfig
    from core.settings import Settings

REMOVE_TIMEOUT = 1800.0
"""Seconds :meth:`SageMakerTarget.remove` waits for the endpoint to go, without a timeout set."""


class SageMakerTarget:
    """Serve model versions from SageMaker endpoints (see :mod:`adapters.endpoints.sagemaker`).

    Args:
        sagemaker: boto3 ``sagemaker`` client.
        runtime: boto3 ``sagemaker-runtime`` client.
        iam: boto3 ``iam`` client (only used when no role ARN is given).
        cloudwatch: boto3 ``cloudwatch`` client (idle days).
        platform: project tag, pricing, retention.
        store_uri: ``s3://bucket/prefix`` of the model store (role policy, data capture).
        region: the region the clients talk to.
        serving_image: ECR URI of the serving image.
        role_arn: an existing execution role; when None the project's role is ensured.
        kms_key_id: the store's KMS key (role policy, captured data).
        sts: boto3 ``sts`` client: the account id in the role's trust policy (only used when
            no role ARN is given).
        autoscaling: boto3 ``application-autoscaling`` client; needed by a model whose
            ``endpoint.autoscaling`` is set (:mod:`.autoscaling`).
        poll_seconds: pause between status polls.
        timeout_seconds: longest wait for the endpoint to settle; default each model's
            ``endpoint.timeout_seconds``.
        heartbeat_seconds: report "still waiting" this often when the status does not change.
        sleep: pause function (tests pass a fast one).
        clock: monotonic clock.
    """

    kind = "sagemaker"

    def __init__(
        self,
        *,
        sagemaker: Any,
        runtime: Any,
        iam: Any,
        cloudwatch: Any,
        platform: PlatformConfig,
        store_uri: str,
        region: str,
        serving_image: str | None,
        role_arn: str | None = None,
        kms_key_id: str | None = None,
        sts: Any = None,
        autoscaling: Any = None,
        poll_seconds: float = 15.0,
        timeout_seconds: float | None = None,
        heartbeat_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sm = sagemaker
        self.runtime = runtime
        self.iam = iam
        self.cloudwatch = cloudwatch
        self.platform = platform
        self.store_uri = store_uri.rstrip("/")
        self.region = region
        self.serving_image = serving_image
        self.role_arn = role_arn
        self.kms_key_id = kms_key_id
        self.sts = sts
        self.autoscaling = autoscaling
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_settings(
        cls, settings: Settings, platform: PlatformConfig, **options: Any
    ) -> SageMakerTarget:
        """Build the clients from settings: region, ``AWS_ENDPOINT_URL`` and profile.

        Args:
            settings: where AWS is and which image and role to use.
            platform: project tag, pricing, retention.
            **options: passed to the constructor (``poll_seconds``, ``timeout_seconds``...).
        """
        from adapters.aws import aws_clients

        # The read timeout leaves room for SageMaker's 60 s invocation limit.
        clients = aws_clients(
            (
                "sagemaker",
                "sagemaker-runtime",
                "iam",
                "cloudwatch",
                "sts",
                "application-autoscaling",
            ),
            profile=settings.aws_profile,
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            connect_timeout=10,
            read_timeout=70,
        )
        return cls(
            sagemaker=clients["sagemaker"],
            runtime=clients["sagemaker-runtime"],
            iam=clients["iam"],
            cloudwatch=clients["cloudwatch"],
            sts=clients["sts"],
            autoscaling=clients["application-autoscaling"],
            platform=platform,
            store_uri=settings.store,
            region=settings.aws_region,
            serving_image=settings.serving_image,
            role_arn=settings.sagemaker_role_arn,
            kms_key_id=settings.kms_key_id,
            **{"poll_seconds": settings.sagemaker_poll_seconds, **options},
        )

    # --- the parts, built on use so they see the current polling and image settings -----------

    def _api(self) -> SageMakerApi:
        scaling = self._scaling()
        return SageMakerApi(
            self.sm,
            poll_seconds=self.poll_seconds,
            heartbeat_seconds=self.heartbeat_seconds,
            sleep=self._sleep,
            clock=self._clock,
            release_scaling=(
                None
                if scaling is None
                else lambda name: [r.variant for r in scaling.remove_endpoint(name)]
            ),
        )

    def _scaling(self) -> EndpointScaling | None:
        return None if self.autoscaling is None else EndpointScaling(self.autoscaling)

    def _inventory(self) -> Inventory:
        return Inventory(self._api(), self.cloudwatch, self.platform)

    def _definition(self, target: VersionToServe, role: str) -> Definition:
        return define(
            target,
            project_tag=self.platform.project_tag,
            serving_image=self.serving_image,
            role=role,
            store_uri=self.store_uri,
            kms_key_id=self.kms_key_id,
            default_vpc=self.platform.network.vpc,
        )

    def _role(self) -> str:
        """The execution role: the one given, else the project's, created or brought up to date."""
        if not self.role_arn:
            self.role_arn = project_role(
                self.iam,
                self.sts,
                self.platform.project_tag,
                self.store_uri,
                region=self.region,
                serving_image=self.serving_image,
                kms_key_id=self.kms_key_id,
            )
        return self.role_arn

    # --- the EndpointTarget protocol ------------------------------------------------------------

    def names_for(self, target: VersionToServe, role_arn: str | None = None) -> Names:
        """The endpoint, endpoint-config and model names ``target`` deploys to."""
        role = role_arn if role_arn is not None else (self.role_arn or "")
        return self._definition(target, role).names

    def describe(self, model: str) -> Serving | None:
        """What the model's endpoint serves now; None when it has no endpoint.

        The version comes from the tags of the endpoint's current config (or of its model);
        it is None while the endpoint is ``Failed``, ``OutOfService`` or ``Deleting``.
        """
        api = self._api()
        desc = api.describe_endpoint(endpoint_name(self.platform.project_tag, model))
        return None if desc is None else api.serving(model, desc)

    def deploy(self, target: VersionToServe, progress: Progress) -> Serving:
        """Create or update the model's endpoint to serve ``target``; wait until it does.

        A deploy during an experiment (the promotion of its challenger, or any rollout) ends
        it: the endpoint moves to the one-variant config, and the experiment's config goes.

        Raises:
            RolloutFailed: the endpoint does not serve ``target``. It serves what it served
                before (a new endpoint is deleted), and the config and model made for this
                attempt are deleted unless an endpoint still references them.
        """
        from adapters.endpoints.sagemaker.experiment import SageMakerExperiments

        endpoint = target.endpoint
        progress(
            f"{target.model} {target.version} on SageMaker: "
            f"{cost_line(endpoint, self.platform, self.region)}"
        )
        check_deployable(target, self.serving_image, progress)
        scaling = self._scaling()
        if endpoint.autoscaling is not None and scaling is None:
            raise RolloutFailed(
                "prepare",
                "endpoint.autoscaling is set but the target has no application-autoscaling "
                "client (build it with SageMakerTarget.from_settings); nothing was created",
            )
        try:
            role = self._role()
        except RoleError as exc:
            raise RolloutFailed("prepare", str(exc)) from exc
        timeout = self.timeout_seconds
        rollout = Rollout(
            self._api(),
            target,
            self._definition(target, role),
            project_tag=self.platform.project_tag,
            progress=progress,
            timeout=endpoint.timeout_seconds if timeout is None else timeout,
            alarms=EndpointAlarms(self.cloudwatch, self.platform.project_tag),
            scaling=None
            if scaling is None
            else RolloutScaling(
                scaling,
                endpoint_name(self.platform.project_tag, target.model),
                VARIANT,
                endpoint.autoscaling,
                progress,
            ),
        )
        serving = rollout.run()
        if rollout.replaced:
            SageMakerExperiments(self).discard_if_experiment(
                endpoint_name(self.platform.project_tag, target.model), rollout.replaced, progress
            )
        return serving

    def health(self, model: str) -> Health | None:
        """Request rate, 5xx share and p99 latency of the model's endpoint, from CloudWatch.

        Over the last five minutes (SageMaker's metrics arrive a minute or two late). None when
        the model has no endpoint, or CloudWatch cannot be read (status still shows the rest).
        """
        desc = self._api().describe_endpoint(endpoint_name(self.platform.project_tag, model))
        if desc is None:
            return None
        variants = [v["VariantName"] for v in desc.get("ProductionVariants", [])] or [VARIANT]
        try:
            return read_health(self.cloudwatch, desc["EndpointName"], variants)
        except Exception:
            # Status is read-only and must answer: no metrics is "cannot tell", not a crash.
            return None

    def invoke(self, model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Send ``{"instances": records}`` to the model's endpoint; return the parsed answer.

        Raises:
            RolloutFailed: (``smoke-test``) an error answer, a non-2xx status or a body that is
                not a JSON object.
        """
        return invoke(self.runtime, endpoint_name(self.platform.project_tag, model), records)

    def resources(self) -> list[Resource]:
        """Every endpoint, endpoint config and model of this project, ``in_use`` filled in.

        A config or model is in use when a live endpoint references it (its current config, or
        the one an update in flight moves to). Endpoints are always in use; their details carry
        the status, monthly cost and idle days (from CloudWatch ``Invocations``).
        """
        return self._inventory().resources()

    def delete(self, resource: Resource) -> None:
        """Delete one resource of this project (see :meth:`.inventory.Inventory.delete`).

        Raises:
            ValueError: the resource is in use, or is not this project's.
        """
        self._inventory().delete(resource)

    def remove(self, model: str, progress: Progress | None = None) -> None:
        """Delete the model's endpoint and the configs and models it used.

        For a rollout whose endpoint was new and failed after the deploy (the smoke test): the
        model served nothing before, so nothing of it should stay.
        """
        timeout = REMOVE_TIMEOUT if self.timeout_seconds is None else self.timeout_seconds
        self._inventory().remove(model, timeout, progress or (lambda _message: None))

    def monthly_cost(self, endpoint: EndpointConfig, platform: PlatformConfig) -> float | None:
        """Estimated USD per month of an endpoint with this config; None when unpriced.

        With autoscaling, at ``min_instances``: what it costs at the least (the deploy's cost
        line prints the range up to ``max_instances``).
        """
        return monthly_cost(endpoint, platform)

    # --- experiments (adapters.endpoints.sagemaker.experiment) ----------------------------------

    def start_experiment(self, plan: TrafficPlan, progress: Progress) -> None:
        """Serve the challenger as a second (or shadow) variant, data capture on.

        Raises:
            RolloutFailed: the champion's config serves 100 % and what was created is deleted.
        """
        from adapters.endpoints.sagemaker.experiment import SageMakerExperiments

        SageMakerExperiments(self).start(plan, progress)

    def stop_experiment(self, model: str, progress: Progress) -> None:
        """Champion's one-variant config back, challenger's config and model deleted."""
        from adapters.endpoints.sagemaker.experiment import SageMakerExperiments

        SageMakerExperiments(self).stop(model, progress)

    def traffic(self, model: str) -> dict[str, Any] | None:
        """Mode, variants with weights and versions, shadow, experiment id; None if no endpoint."""
        from adapters.endpoints.sagemaker.experiment import SageMakerExperiments

        return SageMakerExperiments(self).traffic(model)

    def capture_prefix(self, model: str) -> str:
        """The endpoint config's Data Capture destination (``{store}/datacapture/{model}``)."""
        from adapters.endpoints.sagemaker.experiment import SageMakerExperiments

        return SageMakerExperiments(self).capture_prefix(model)

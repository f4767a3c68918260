"""Talking to SageMaker: what its errors mean, the reads, and the status polls.

:class:`SageMakerApi` wraps a boto3 ``sagemaker`` client (built elsewhere, passed in) with the
reads the deploy and the inventory share: descriptions that answer None for "no such thing",
tags, what live endpoints reference, what an endpoint serves, and the two waits (for an endpoint
to settle, and for it to be gone).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.endpoints.sagemaker.names import TAG_VERSION, tag_dict
from core.endpoint import Progress, RolloutFailed, Serving, parse_answer

SETTLING = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"})
"""Statuses SageMaker moves out of by itself; anything else is where the endpoint stays."""
NOT_SERVING = frozenset({"Failed", "OutOfService", "Deleting"})
"""Statuses in which an endpoint answers nothing, whichever config it still names."""


# --- what an error means ------------------------------------------------------------------------


def error(exc: Exception) -> tuple[str, str]:
    """Code and message of a botocore ``ClientError`` (``("", str(exc))`` for anything else)."""
    details = getattr(exc, "response", {}).get("Error", {})
    return str(details.get("Code", "")), str(details.get("Message", exc))


def described(exc: Exception) -> str:
    """``"Code: message"`` of an AWS error (what a failed run reports, not a traceback)."""
    code, message = error(exc)
    return f"{code}: {message}" if code else message


def is_client_error(exc: Exception) -> bool:
    """Whether ``exc`` is an answer from the API (rather than a network or programming error)."""
    return bool(getattr(exc, "response", None))


def already_exists(exc: Exception) -> bool:
    """Whether SageMaker refused a create because the name is taken."""
    if not is_client_error(exc):
        return False
    code, message = error(exc)
    return code == "ValidationException" and "already exist" in message.lower()


def not_found(exc: Exception) -> bool:
    """Whether SageMaker answered that the named resource does not exist."""
    if not is_client_error(exc):
        return False
    code, message = error(exc)
    return code in ("ValidationException", "ResourceNotFound") and (
        "could not find" in message.lower() or "does not exist" in message.lower()
    )


# --- what the reads return ----------------------------------------------------------------------


class StillSettling(Exception):
    """The endpoint was still in a settling status when the wait ran out."""

    def __init__(self, description: dict[str, Any], elapsed: float) -> None:
        super().__init__(description.get("EndpointStatus"))
        self.status = str(description.get("EndpointStatus"))
        self.elapsed = elapsed


@dataclass
class Live:
    """What live endpoints reference right now (current and pending configs, their models)."""

    configs: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_descriptions: dict[str, dict[str, Any]] = field(default_factory=dict)


def endpoint_configs(desc: dict[str, Any]) -> list[str]:
    """The current config of an endpoint, and the one an update in flight is moving to."""
    names = [desc.get("EndpointConfigName")]
    names.append((desc.get("PendingDeploymentSummary") or {}).get("EndpointConfigName"))
    return [n for n in names if n]


def _found(describe: Any, **name: str) -> dict[str, Any] | None:
    """``describe(**name)`` as a dict; None when SageMaker says there is no such thing."""
    try:
        return dict(describe(**name))
    except Exception as exc:
        if not_found(exc):
            return None
        raise


class SageMakerApi:
    """Reads and waits on a boto3 ``sagemaker`` client.

    Args:
        client: boto3 ``sagemaker`` client; writes go to it directly (``api.sm``).
        poll_seconds: pause between status polls.
        heartbeat_seconds: report "still waiting" this often when the status does not change.
        sleep: pause function (tests pass a fast one).
        clock: monotonic clock.
        release_scaling: deregisters an endpoint's variants from autoscaling; called before
            every delete of an endpoint (see :mod:`.autoscaling`). None: nothing to release.
    """

    def __init__(
        self,
        client: Any,
        *,
        poll_seconds: float = 15.0,
        heartbeat_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        release_scaling: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.sm = client
        self._release_scaling = release_scaling
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self._sleep = sleep
        self._clock = clock

    # --- reads -----------------------------------------------------------------------------------

    def while_role_propagates(self, call: Callable[[], Any], seconds: float = 60.0) -> Any:
        """Run ``call``, retrying while SageMaker cannot yet assume a newly created role.

        IAM is eventually consistent: for some seconds after ``CreateRole`` SageMaker answers
        ``ValidationException: Could not assume role``. Any other error is raised at once.
        """
        start = self._clock()
        delay = max(self.poll_seconds, 0.01)
        while True:
            try:
                return call()
            except Exception as exc:
                code, message = error(exc)
                propagating = code == "ValidationException" and "assume" in message.lower()
                if not propagating or self._clock() - start + delay > seconds:
                    raise
            self._sleep(delay)
            delay = min(delay * 2, 10.0)

    def describe_endpoint(self, name: str) -> dict[str, Any] | None:
        """The endpoint's description; None when there is none."""
        return _found(self.sm.describe_endpoint, EndpointName=name)

    def describe_config(self, name: str) -> dict[str, Any] | None:
        """The endpoint config's description; None when there is none."""
        return _found(self.sm.describe_endpoint_config, EndpointConfigName=name)

    def describe_model(self, name: str) -> dict[str, Any] | None:
        """The model's description; None when there is none."""
        return _found(self.sm.describe_model, ModelName=name)

    def paginate(self, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every item under ``key`` of every page of ``operation``."""
        items: list[dict[str, Any]] = []
        for page in self.sm.get_paginator(operation).paginate(**kwargs):
            items += page.get(key, [])
        return items

    def list_tags(self, arn: str) -> dict[str, str]:
        """The resource's tags, every page of them."""
        tags: list[dict[str, str]] = []
        token: str | None = None
        while True:
            page = self.sm.list_tags(ResourceArn=arn, **({"NextToken": token} if token else {}))
            tags += page.get("Tags", [])
            token = page.get("NextToken")
            if not token:
                return tag_dict(tags)

    def config_version(self, config: dict[str, Any] | None) -> str | None:
        """The version an endpoint config serves: its tag, else its model's tag."""
        if config is None:
            return None
        tags = self.list_tags(config["EndpointConfigArn"])
        if tags.get(TAG_VERSION):
            return tags[TAG_VERSION]
        for production in config.get("ProductionVariants", []):
            model = self.describe_model(production["ModelName"])
            version = self.list_tags(model["ModelArn"]).get(TAG_VERSION) if model else None
            if version:
                return version
        return None

    def serving(self, model: str, desc: dict[str, Any]) -> Serving:
        """What the endpoint described by ``desc`` serves.

        A ``Failed`` (or out of service) endpoint still names its last config but answers
        nothing: its version is None, so a restore recreates it and status flags it instead
        of taking the config's version for the version served.
        """
        config_name = desc.get("EndpointConfigName")
        config = self.describe_config(config_name) if config_name else None
        serves = desc["EndpointStatus"] not in NOT_SERVING
        version = self.config_version(config) if serves else None
        models = {
            v["VariantName"]: v.get("ModelName")
            for v in (config or {}).get("ProductionVariants", [])
        }
        variants = {
            v["VariantName"]: {
                "version": version,
                "model": models.get(v["VariantName"]),
                "weight": v.get("CurrentWeight"),
                "instances": v.get("CurrentInstanceCount"),
                "serverless": v.get("CurrentServerlessConfig"),
            }
            for v in desc.get("ProductionVariants", [])
        }
        return Serving(
            model=model,
            endpoint_name=desc["EndpointName"],
            status=desc["EndpointStatus"],
            version=version,
            address=desc["EndpointArn"],
            config_name=config_name,
            variants=variants,
        )

    def live(self, prefix: str) -> Live:
        """Every configuration and model a live endpoint named ``{prefix}...`` references."""
        live = Live()
        for summary in self.paginate("list_endpoints", "Endpoints", NameContains=prefix):
            name = summary["EndpointName"]
            desc = self.describe_endpoint(name) if name.startswith(prefix) else None
            if desc is None:
                continue
            live.endpoints[name] = desc
            if desc["EndpointStatus"] == "Deleting":
                # On its way out: what it used may go (cleanup deletes endpoint, then config).
                continue
            for config_name in endpoint_configs(desc):
                live.configs.add(config_name)
                config = self.describe_config(config_name)
                if config is None:
                    continue
                live.config_descriptions[config_name] = config
                # An experiment's shadow runs a model too (ShadowProductionVariants).
                variants = [
                    *config.get("ProductionVariants", []),
                    *config.get("ShadowProductionVariants", []),
                ]
                live.models.update(v["ModelName"] for v in variants)
        return live

    # --- waits -----------------------------------------------------------------------------------

    def wait(self, name: str, timeout: float, progress: Progress) -> dict[str, Any]:
        """Poll until the endpoint leaves the settling statuses; return its description.

        SageMaker's ``endpoint_in_service`` waiter is not used: an automatic rollback ends
        ``InService`` on the *old* config, which it reports as success. The caller compares
        ``EndpointConfigName`` and reads ``FailureReason`` instead.

        Raises:
            StillSettling: still settling after ``timeout`` seconds.
            RolloutFailed: (``wait``) the endpoint disappeared.
        """
        start = self._clock()
        reported: str | None = None
        last_report = start
        while True:
            desc = self.describe_endpoint(name)
            elapsed = self._clock() - start
            if desc is None:
                raise RolloutFailed("wait", f"endpoint {name} disappeared while waiting")
            status = desc["EndpointStatus"]
            if status != reported:
                progress(f"{name}: {status} after {elapsed:.0f}s")
                reported, last_report = status, self._clock()
            elif self._clock() - last_report >= self.heartbeat_seconds:
                progress(f"{name}: still {status} after {elapsed:.0f}s (limit {timeout:.0f}s)")
                last_report = self._clock()
            if status not in SETTLING:
                return desc
            if elapsed >= timeout:
                raise StillSettling(desc, elapsed)
            self._sleep(self.poll_seconds)

    def release_scaling(self, name: str, progress: Progress) -> None:
        """Deregister the endpoint's variants from autoscaling, before it is deleted.

        A failure is reported and the delete goes on: SageMaker deregisters them itself when
        the caller may (docs: "Delete endpoints configured for auto scaling").
        """
        if self._release_scaling is None:
            return
        try:
            released = self._release_scaling(name)
        except Exception as exc:
            progress(f"warning: could not deregister {name} from autoscaling: {described(exc)}")
            return
        if released:
            progress(f"deregistered {', '.join(released)} of {name} from autoscaling")

    def delete_endpoint_and_wait(self, name: str, timeout: float, progress: Progress) -> None:
        """Delete the endpoint; wait until it is gone (at most ``timeout``: SageMaker finishes).

        Its autoscaling registrations go first (:meth:`release_scaling`).
        """
        self.release_scaling(name, progress)
        try:
            self.sm.delete_endpoint(EndpointName=name)
        except Exception as exc:
            if not_found(exc):
                return
            raise
        progress(f"deleting endpoint {name}")
        start = self._clock()
        while self.describe_endpoint(name) is not None:
            if self._clock() - start >= timeout:
                progress(f"{name}: still deleting after {timeout:.0f}s; SageMaker finishes it")
                return
            self._sleep(self.poll_seconds)


# --- the runtime --------------------------------------------------------------------------------


def invoke(runtime: Any, name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Send ``{"instances": records}`` to endpoint ``name``; return the parsed answer.

    Args:
        runtime: boto3 ``sagemaker-runtime`` client.
        name: the endpoint.
        records: the request's instances.

    Raises:
        RolloutFailed: (``smoke-test``) an error answer, a non-2xx status or a body that is
            not a JSON object.
    """
    try:
        response = runtime.invoke_endpoint(
            EndpointName=name,
            ContentType="application/json",
            Accept="application/json",
            Body=json.dumps({"instances": records}).encode(),
        )
    except Exception as exc:
        if not is_client_error(exc):
            raise RolloutFailed("smoke-test", f"cannot reach {name}: {exc}") from exc
        code, message = error(exc)
        original = getattr(exc, "response", {}).get("OriginalMessage")
        detail = f"{message} ({original})" if original else message
        raise RolloutFailed("smoke-test", f"{name} answered {code}: {detail}") from exc
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 200))
    return parse_answer(name, status, response["Body"].read())

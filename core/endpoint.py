"""The endpoint contract: what a rollout asks of an endpoint target and what it reports back.

Plain types and one protocol, so that the rollout tasks, the status view and the cleanup plan
speak about endpoints without importing any target. The targets themselves (local processes,
SageMaker) are adapters: :mod:`adapters.endpoints`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from core.config import EndpointConfig, PlatformConfig


class RolloutFailed(RuntimeError):
    """A rollout did not end serving the new version; the previous one still serves.

    Attributes:
        step: the step that failed (``create``, ``update``, ``wait``, ``smoke-test``...).
        reason: why, as reported by the target (SageMaker's ``FailureReason`` for example).
    """

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"rollout failed at {step}: {reason}")
        self.step = step
        self.reason = reason


def parse_answer(name: str, status: int, body: bytes) -> dict[str, Any]:
    """An endpoint's answer to an invocation as a JSON object, or why it is not one.

    Args:
        name: the endpoint or model, for the message.
        status: the HTTP status of the answer.
        body: the answer's body.

    Raises:
        RolloutFailed: (``smoke-test``) a non-2xx status, a body that is not JSON, or JSON
            that is not an object.
    """
    if not 200 <= status < 300:
        text = body[:300].decode("utf-8", "replace")
        raise RolloutFailed("smoke-test", f"{name} answered HTTP {status}: {text}")
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise RolloutFailed(
            "smoke-test", f"{name} answered a body that is not JSON: {body[:200]!r}"
        ) from exc
    if not isinstance(answer, dict):
        raise RolloutFailed("smoke-test", f"{name} answered {type(answer).__name__}, not an object")
    return answer


@dataclass(frozen=True)
class VersionToServe:
    """A published, verified version and what a target needs to serve it.

    Attributes:
        model: model name.
        version: ``v{N}``.
        family: family module name.
        version_uri: store URL of the version folder.
        model_data_uri: store URL of its ``model.tar.gz``.
        manifest_sha256: sha256 of the version's manifest (goes into resource names and tags).
        contents_sha256: ``model_contents_sha256`` of the manifest (the serving app checks it).
        example_request: the smoke-test payload from ``schema.json``.
        endpoint: the model's endpoint config.
        tags: lineage tags to put on created resources.
    """

    model: str
    version: str
    family: str
    version_uri: str
    model_data_uri: str
    manifest_sha256: str
    contents_sha256: str
    example_request: list[dict[str, Any]]
    endpoint: EndpointConfig
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Serving:
    """What an endpoint serves now.

    Attributes:
        model: model name.
        endpoint_name: the endpoint's name.
        status: the target's status word (``InService``, ``Updating``, ``running``...).
        version: ``v{N}`` served by the (single, or largest-weight) variant; None if unknown.
        address: where to send requests (``http://127.0.0.1:8080/...`` or an ARN).
        config_name: the endpoint config (SageMaker) or the variant process set (local).
        variants: variant name -> {"version", "weight", ...}.
    """

    model: str
    endpoint_name: str
    status: str
    version: str | None
    address: str
    config_name: str | None = None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """What one model's endpoint did in the last minute, from its own metrics.

    Attributes:
        source: where the figures come from (``"local /metrics"``, ``"prometheus"``, ``"cloudwatch"``).
        window_seconds: the span the figures cover.
        requests_per_second: invocations per second over the window.
        error_rate: share of invocations answered 5xx (0..1), None when there were none.
        p99_ms: 99th percentile latency in milliseconds, None when there were no invocations.
    """  # noqa: E501

    source: str
    window_seconds: float
    requests_per_second: float
    error_rate: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Resource:
    """One thing a target created, for the cleanup plan.

    Attributes:
        kind: ``endpoint``, ``alarm``, ``endpoint-config`` or ``model`` (deleted in that
            order; an ``alarm`` watches an endpoint and is in use while the endpoint lives).
        name: its name.
        model: the model it belongs to.
        version: the model version it holds, when known.
        in_use: True when something live depends on it: a model or endpoint config that an
            endpoint serves from, or an endpoint whose route or alias still points at it
            (an endpoint itself is in use while it serves the champion). Cleanup never
            deletes these.
        details: anything the plan should print (creation time, idle days, monthly cost).
    """

    kind: str
    name: str
    model: str
    version: str | None
    in_use: bool
    details: dict[str, Any] = field(default_factory=dict)


Progress: TypeAlias = Callable[[str], None]
"""Called with one line of progress a person reads (a log line, a console update)."""


class EndpointTarget(Protocol):
    """What the rollout, rollback, status and cleanup flows need from an endpoint target."""

    kind: str

    def describe(self, model: str) -> Serving | None:
        """What the model's endpoint serves now; None when it has no endpoint."""

    def deploy(self, target: VersionToServe, progress: Progress) -> Serving:
        """Create or update the model's endpoint to serve ``target``; wait until it does.

        Raises:
            RolloutFailed: the endpoint does not serve ``target``; it serves what it served
                before and nothing created for this attempt is left behind.
        """

    def health(self, model: str) -> Health | None:
        """What the model's endpoint did in the last minute(s); None: the target cannot tell."""

    def invoke(self, model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Send ``records`` to the model's endpoint; return the parsed JSON response.

        Raises:
            RolloutFailed: (step ``smoke-test``) the endpoint answered an error or garbage.
        """

    def resources(self) -> list[Resource]:
        """Everything this project created on the target, with ``in_use`` filled in."""

    def delete(self, resource: Resource) -> None:
        """Delete one resource. Refuses (ValueError) a resource that is in use."""

    def remove(self, model: str, progress: Progress | None = None) -> None:
        """Delete the model's endpoint and what it used (after a first rollout that failed)."""

    def monthly_cost(self, endpoint: EndpointConfig, platform: PlatformConfig) -> float | None:
        """Estimated USD per month of an endpoint with this config; None when unpriced."""

    def start_experiment(self, plan: TrafficPlan, progress: Progress) -> None:
        """Serve the challenger beside the champion as ``plan`` says, capture on for both arms.

        Raises:
            RolloutFailed: the champion serves 100 % and everything created is removed.
        """

    def stop_experiment(self, model: str, progress: Progress) -> None:
        """Champion back to 100 %, challenger removed, capture as it is; idempotent."""

    def traffic(self, model: str) -> dict[str, Any] | None:
        """What the endpoint does now (mode, variants, shadow, experiment id); None if unserved."""

    def capture_prefix(self, model: str) -> str:
        """Store URL under which the model's captured records land."""


@dataclass(frozen=True)
class TrafficPlan:
    """How an experiment splits one model's traffic between its champion and a challenger.

    Attributes:
        model: model name.
        mode: ``"ab"`` (the challenger answers ``share_percent`` of callers) or ``"shadow"``
            (the champion answers every caller; ``share_percent`` of requests are copied to
            the challenger, whose answers are captured and discarded).
        champion: the version serving now.
        challenger: the published version under test.
        share_percent: in (0, 100).
        experiment_id: goes into every captured record, so analysis never mixes experiments.
        allow_target_variant: whether a caller may name the variant that answers it while the
            experiment runs (the model's ``experiment.allow_target_variant``; off by default).
    """

    model: str
    mode: str
    champion: VersionToServe
    challenger: VersionToServe
    share_percent: float
    experiment_id: str
    allow_target_variant: bool = False

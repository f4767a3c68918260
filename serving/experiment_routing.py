"""How the local router splits one model's traffic during an experiment.

Weights, sticky callers, a named variant, and the shadow's share.

The semantics are SageMaker's, so a client and an analysis written for one work with the other:

- **Split:** a variant answers ``weight / sum of weights`` of the requests (SageMaker's
  ``InitialVariantWeight``). Without a caller key the draw is random per request.
- **Sticky callers:** a request with ``X-Caller-Key: <key>`` lands where
  ``sha256(experiment id + key)`` falls on the cumulative weights, so one caller always sees
  the same arm for the length of an experiment (and a new experiment reshuffles callers,
  so a caller's arm in one test says nothing about the next). This is Seldon Core's sticky
  ``x-seldon-route`` idea with a hash instead of a cookie: nothing to store in the router.
- **Named variant:** ``X-Amzn-SageMaker-Target-Variant`` (InvokeEndpoint's ``TargetVariant``)
  overrides the split; an unknown name is the caller's error (400 naming the variants).
- **Shadow:** ``percent`` of requests are copied to the shadow variant after the answer was
  chosen; the caller never waits for it (see :class:`serving.shadow.ShadowMirror`).

The route table keeps this under a model's route (layout in :mod:`serving.routes`)::

    "experiment": {"id": "exp-...", "arms": {"<variant name>": "champion" | "challenger"}},
    "shadow": {"name": ..., "version": ..., "port": ..., "percent": 10.0, ...},
    "capture": {"uri": "<store url>/capture/<model>", "endpoint": "<model>",
                "columns": ["<input column>", ...], "percent": 100.0}

Plain Python; the router imports it, and so can a test that draws 20,000 requests in process.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

CALLER_KEY_HEADER = "x-caller-key"
TARGET_VARIANT_HEADER = "x-amzn-sagemaker-target-variant"
INVOKED_VARIANT_HEADER = "X-Amzn-Invoked-Production-Variant"
INFERENCE_ID_HEADER = "X-Inference-Id"
MODEL_LATENCY_HEADER = "X-Model-Latency-Ms"
"""The serving app's own time for a request; the capture's ``latency_ms`` for both arms."""
ARMS = ("champion", "challenger", "shadow")


class Weighted(Protocol):
    """A variant as the split sees it (:class:`serving.routes.Upstream` is one)."""

    @property
    def name(self) -> str:  # noqa: D102
        ...

    @property
    def weight(self) -> float:  # noqa: D102
        ...


@dataclass(frozen=True)
class ShadowRoute:
    """The variant that receives copies of a share of the requests; its answers are discarded.

    Attributes:
        name: variant name.
        version: the version it serves.
        port: its loopback port.
        percent: share of requests copied to it, in (0, 100].
        host: its address.
    """

    name: str
    version: str
    port: int
    percent: float
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class CaptureRoute:
    """Where the router writes the model's captured requests and answers.

    Attributes:
        uri: store URL of the capture prefix (a local directory or ``s3://...``).
        endpoint: the endpoint name, the first folder under the prefix (SageMaker's layout).
        kms_key_id: the store's KMS key, when the capture goes to an encrypted S3 store.
        columns: the model's declared input columns, the only request keys captured.
        percent: share of answers captured, in [0, 100] (an experiment captures all).
    """

    uri: str
    endpoint: str
    kms_key_id: str | None = None
    columns: tuple[str, ...] = ()
    percent: float = 100.0


@dataclass(frozen=True)
class ExperimentRoute:
    """A model's experiment and capture settings, as of one route-table generation.

    Attributes:
        experiment_id: the running experiment, or "" when none runs (capture may still be on).
        arms: variant name -> ``champion`` or ``challenger``.
        shadow: the shadow variant, if the experiment mirrors traffic.
        capture: where captured records go; None when capture is off.
    """

    experiment_id: str = ""
    arms: dict[str, str] = field(default_factory=dict)
    shadow: ShadowRoute | None = None
    capture: CaptureRoute | None = None

    def arm(self, variant: str) -> str:
        """The arm of a production variant (``champion`` when no experiment names it)."""
        return self.arms.get(variant, "champion")


NO_EXPERIMENT = ExperimentRoute()
V = TypeVar("V", bound=Weighted)


def parse_experiment(where: str, route: dict[str, Any], names: set[str]) -> ExperimentRoute:
    """Read the ``experiment``, ``shadow`` and ``capture`` keys of one model's route.

    Args:
        where: ``models.<model>``, for the messages.
        route: the model's route object.
        names: its production variants' names.

    Raises:
        ValueError: a key has the wrong shape; the message says where.
    """
    raw_exp, raw_shadow, raw_capture = (route.get(k) for k in ("experiment", "shadow", "capture"))
    if raw_exp is None and raw_shadow is None and raw_capture is None:
        return NO_EXPERIMENT
    experiment_id, arms = "", {}
    if raw_exp is not None:
        if not isinstance(raw_exp, dict) or not isinstance(raw_exp.get("id"), str):
            raise ValueError(f"{where}.experiment must be an object with an 'id' string")
        experiment_id, arms = raw_exp["id"], raw_exp.get("arms", {})
        if not isinstance(arms, dict) or any(
            a not in ("champion", "challenger") or n not in names for n, a in arms.items()
        ):
            raise ValueError(
                f"{where}.experiment.arms must map routed variant names to champion|challenger"
            )
    shadow = None
    if raw_shadow is not None:
        shadow = _parse_shadow(f"{where}.shadow", raw_shadow)
    capture = None
    if raw_capture is not None:
        if not isinstance(raw_capture, dict) or not all(
            isinstance(raw_capture.get(k), str) and raw_capture[k] for k in ("uri", "endpoint")
        ):
            raise ValueError(f"{where}.capture needs 'uri' and 'endpoint' strings")
        kms = raw_capture.get("kms_key_id")
        columns, percent = raw_capture.get("columns", []), raw_capture.get("percent", 100.0)
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise ValueError(f"{where}.capture.columns must be a list of column names")
        if not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise ValueError(f"{where}.capture.percent must be in [0, 100]")
        capture = CaptureRoute(
            uri=raw_capture["uri"],
            endpoint=raw_capture["endpoint"],
            kms_key_id=kms if isinstance(kms, str) and kms else None,
            columns=tuple(columns),
            percent=float(percent),
        )
    return ExperimentRoute(experiment_id, dict(arms), shadow, capture)


def _parse_shadow(where: str, raw: Any) -> ShadowRoute:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object")
    port, percent = raw.get("port"), raw.get("percent")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{where}.port must be a port number")
    if not isinstance(percent, int | float) or not 0 < percent <= 100:
        raise ValueError(f"{where}.percent must be in (0, 100]")
    if not isinstance(raw.get("name"), str) or not isinstance(raw.get("version"), str):
        raise ValueError(f"{where} needs a name and a version")
    return ShadowRoute(
        name=raw["name"],
        version=raw["version"],
        port=port,
        percent=float(percent),
        host=str(raw.get("host", "127.0.0.1")),
    )


def caller_point(caller_key: str, experiment_id: str) -> float:
    """Where a caller falls in [0, 1): the same for the same key and experiment, uniform across.

    sha256 rather than Python's ``hash``: that one is salted per process, and a router restart
    (or a second router) must send a caller to the same arm.
    """
    digest = hashlib.sha256(f"{experiment_id}\x00{caller_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split(
    variants: Sequence[V],
    *,
    caller_key: str | None = None,
    experiment_id: str = "",
    rng: random.Random | None = None,
) -> V | None:
    """Pick the variant that answers one request: weight / sum of weights.

    Args:
        variants: the candidates (weight 0 never answers).
        caller_key: the caller's ``X-Caller-Key``; the same key always gets the same variant
            while the weights and ``experiment_id`` stay the same.
        experiment_id: mixed into the caller's hash.
        rng: the random source for callers without a key (the module's by default).

    Returns:
        The chosen variant; None when no variant has a weight above 0.
    """
    live = [v for v in variants if v.weight > 0]
    if len(live) <= 1:
        return live[0] if live else None
    total = sum(v.weight for v in live)
    point = caller_point(caller_key, experiment_id) if caller_key else (rng or random).random()
    mark = point * total
    for variant in live:
        mark -= variant.weight
        if mark < 0:
            return variant
    return live[-1]  # float rounding at the very top of the range


def mirrored(shadow: ShadowRoute | None, rng: random.Random | None = None) -> bool:
    """Whether this request is copied to the shadow (``percent`` of them are)."""
    return shadow is not None and (rng or random).random() * 100.0 < shadow.percent


def model_latency_ms(headers: Any, fallback: float) -> float:
    """The answering variant's own latency from its headers; ``fallback`` when it sent none.

    A shadow copy is timed after a wait in the mirror's queue and the caller's answer is not,
    so the router's clock would compare the two paths; the app's header compares the models.
    """
    try:
        return float(headers.get(MODEL_LATENCY_HEADER, fallback))
    except (TypeError, ValueError):
        return fallback


def unknown_variant(model: str, wanted: str, names: Sequence[str]) -> str:
    """The 400 message for a ``TargetVariant`` the model does not have, naming the ones it has."""
    return f"endpoint {model} has no variant {wanted!r}; its variants: {', '.join(names) or 'none'}"

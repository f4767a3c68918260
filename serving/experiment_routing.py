"""How the local router splits one model's traffic during an experiment.

Weights, sticky callers, a named variant, and the shadow's share.

The semantics are SageMaker's, so a client and an analysis written for one work with the other:

- **Split:** a variant answers ``weight / sum of weights`` of the requests (SageMaker's
  ``InitialVariantWeight``). Without a caller key the draw is random per request.
- **Sticky callers:** a request with ``X-Caller-Key: <key>`` lands where
  ``HMAC-SHA256(experiment's secret, key)`` falls on the cumulative weights, so one caller
  always sees the same arm for the length of an experiment (and a new experiment, with a new
  secret, reshuffles callers). The secret is drawn when the experiment starts and kept in the
  route table only the router reads; no answer and no ``GET /endpoints`` shows it, so a caller
  cannot compute a key that lands on the arm it wants. An experiment without a secret (a route
  written before there was one) draws every request, keys or not.
- **Named variant:** ``X-Amzn-SageMaker-Target-Variant`` (InvokeEndpoint's ``TargetVariant``)
  overrides the split outside an experiment; an unknown name is the caller's error (400 naming
  the variants). During an experiment the header is ignored (the arm is drawn) unless the
  model's ``experiment.allow_target_variant`` is true; a request it steers is then captured
  as ``chosen`` and the analysis leaves it out (:func:`pick`).
- **Shadow:** ``percent`` of requests are copied to the shadow variant after the answer was
  chosen; the caller never waits for it (see :class:`serving.shadow.ShadowMirror`).

The route table keeps this under a model's route (layout in :mod:`serving.routes`)::

    "experiment": {"id": "exp-...", "arms": {"<variant name>": "champion" | "challenger"},
                   "secret": "<hex, the caller key's HMAC key>", "allow_target_variant": false},
    "shadow": {"name": ..., "version": ..., "port": ..., "percent": 10.0, ...},
    "capture": {"uri": "<store url>/capture/<model>", "endpoint": "<model>"}

Plain Python; the router imports it, and so can a test that draws 20,000 requests in process.
"""

from __future__ import annotations

import hashlib
import hmac
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
    """

    uri: str
    endpoint: str
    kms_key_id: str | None = None


@dataclass(frozen=True)
class ExperimentRoute:
    """A model's experiment and capture settings, as of one route-table generation.

    Attributes:
        experiment_id: the running experiment, or "" when none runs (capture may still be on).
        arms: variant name -> ``champion`` or ``challenger``.
        shadow: the shadow variant, if the experiment mirrors traffic.
        capture: where captured records go; None when capture is off.
        secret: the key of the callers' sticky hash; never shown (not in its ``repr``).
        allow_target_variant: whether a caller's ``TargetVariant`` is honoured during the
            experiment.
    """

    experiment_id: str = ""
    arms: dict[str, str] = field(default_factory=dict)
    shadow: ShadowRoute | None = None
    capture: CaptureRoute | None = None
    secret: str = field(default="", repr=False)
    allow_target_variant: bool = False

    @property
    def running(self) -> bool:
        """Whether an experiment runs (a capture alone, after one ended, is not one)."""
        return bool(self.experiment_id) or self.shadow is not None

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
    experiment_id, arms, secret, allow = "", {}, "", False
    if raw_exp is not None:
        if not isinstance(raw_exp, dict) or not isinstance(raw_exp.get("id"), str):
            raise ValueError(f"{where}.experiment must be an object with an 'id' string")
        experiment_id, arms = raw_exp["id"], raw_exp.get("arms", {})
        secret, allow = raw_exp.get("secret", ""), raw_exp.get("allow_target_variant", False)
        if not isinstance(secret, str) or not isinstance(allow, bool):
            raise ValueError(
                f"{where}.experiment: 'secret' must be a string, 'allow_target_variant' a boolean"
            )
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
        capture = CaptureRoute(
            uri=raw_capture["uri"],
            endpoint=raw_capture["endpoint"],
            kms_key_id=kms if isinstance(kms, str) and kms else None,
        )
    return ExperimentRoute(experiment_id, dict(arms), shadow, capture, secret, allow)


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


def caller_point(caller_key: str, secret: str) -> float:
    """Where a caller falls in [0, 1): the same for the same key and secret, uniform across.

    An HMAC keyed by the experiment's secret, so that only the router can tell where a key
    falls; not Python's ``hash``, which is salted per process (a router restart, or a second
    router, must send a caller to the same arm).
    """
    digest = hmac.new(secret.encode(), caller_key.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split(
    variants: Sequence[V],
    *,
    caller_key: str | None = None,
    secret: str = "",
    rng: random.Random | None = None,
) -> V | None:
    """Pick the variant that answers one request: weight / sum of weights.

    Args:
        variants: the candidates (weight 0 never answers).
        caller_key: the caller's ``X-Caller-Key``; the same key always gets the same variant
            while the weights and ``secret`` stay the same. Ignored without a ``secret``.
        secret: the key of the callers' hash (the experiment's).
        rng: the random source for callers without a key (the module's by default).

    Returns:
        The chosen variant; None when no variant has a weight above 0.
    """
    live = [v for v in variants if v.weight > 0]
    if len(live) <= 1:
        return live[0] if live else None
    total = sum(v.weight for v in live)
    point = caller_point(caller_key, secret) if caller_key and secret else (rng or random).random()
    mark = point * total
    for variant in live:
        mark -= variant.weight
        if mark < 0:
            return variant
    return live[-1]  # float rounding at the very top of the range


def pick(
    variants: Sequence[V],
    avoid: set[str],
    experiment: ExperimentRoute,
    wanted: str | None = None,
    caller_key: str | None = None,
    rng: random.Random | None = None,
) -> tuple[V | None, bool]:
    """The variant that answers one request, and whether the caller chose it.

    Outside an experiment a ``wanted`` variant answers (None when the model has no variant of
    that name: the caller's 400). During one, ``wanted`` is honoured only when the experiment
    allows it (``allow_target_variant``), and the answer is then ``chosen``: captured as such
    and left out of the decision. Otherwise the arm is drawn by weight, preferring variants
    not in ``avoid`` (a retry), sticky per ``caller_key`` under the experiment's secret.

    Args:
        variants: the model's production variants.
        avoid: names that failed to connect on an earlier attempt of this request.
        experiment: the model's experiment route (:data:`NO_EXPERIMENT` when none).
        wanted: the caller's ``X-Amzn-SageMaker-Target-Variant``, if any.
        caller_key: the caller's ``X-Caller-Key``, if any.
        rng: the random source of the draw (the module's by default).

    Returns:
        The variant (None: no variant answers) and whether the caller chose it.
    """
    if wanted and (not experiment.running or experiment.allow_target_variant):
        named = [v for v in variants if v.name == wanted]
        return (named[0], experiment.running) if named else (None, False)
    live = [v for v in variants if v.weight > 0]
    fresh = [v for v in live if v.name not in avoid] or live
    # Outside an experiment no arm is at stake: a key sticks by a hash of the key alone.
    secret = experiment.secret if experiment.running else "-"
    return split(fresh, caller_key=caller_key, secret=secret, rng=rng), False


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

"""An online experiment as a record, its validation, and the pure decision of one look.

An experiment compares a published challenger with the serving champion on live traffic:
``shadow`` (the challenger answers a copy of a share of the requests; its answers are
captured and discarded) or ``ab`` (it answers a share of the callers). It is recorded in the
store beside the promotion history (:mod:`adapters.experiments`) and looked at daily by the
``experiment/evaluate`` deployment; each look is :func:`decide`, a pure function of the record
and the observations, and the side effects (promote, stop) happen in :mod:`tasks.experiment`.
The statistics are :mod:`core.sequential`'s; README "Experiments" states the method.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from core.sequential import compare, mixture_tau, non_inferiority_p, planned_sample_size

MODES = ("ab", "shadow")
ACTIVE = ("starting", "running", "promoting", "stopping")
"""States of an experiment that still owns the model's traffic."""
ENDED = ("promoted", "stopped", "failed")
PLATFORM_METRICS = {"latency_ms": "lower", "error": "lower"}
"""Per-request metrics every family has, read from the capture itself (no label needed)."""


class ExperimentError(ValueError):
    """An experiment cannot be started, stopped or evaluated as asked; nothing was changed."""


class GuardrailPolicy(BaseModel):
    """A metric the challenger may not make worse by more than a margin (non-inferiority)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    margin: float = Field(ge=0, le=10, description="How much worse is still acceptable.")
    relative: bool = Field(
        default=True,
        description="Margin as a share of the champion's mean (latency: 0.1 = 10 %); false: "
        "in the metric's own units (error rate: 0.005 = half a point).",
    )


class ExperimentPolicy(BaseModel):
    """A model's experiment defaults (``experiment:`` in its config); the CLI may override."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str | None = Field(
        default=None, description="Success metric (a family experiment metric); default its first."
    )
    guardrails: dict[str, GuardrailPolicy] = Field(
        default_factory=lambda: {
            "latency_ms": GuardrailPolicy(margin=0.10),
            "error": GuardrailPolicy(margin=0.005, relative=False),
        },
        description="Non-inferiority guardrails by metric name.",
    )
    mode: Literal["ab", "shadow"] = Field(default="shadow", description="Default mode.")
    share_percent: float = Field(default=10, gt=0, lt=100, description="Challenger's share.")
    mde: float = Field(
        default=0.05, gt=0, lt=1, description="Minimum detectable effect, relative to the champion."
    )
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Two-sided test level.")
    power: float = Field(default=0.9, gt=0.5, lt=1, description="Power of the plan at the MDE.")
    min_days: int = Field(default=7, ge=0, le=365, description="No success before this.")
    max_days: int = Field(default=30, ge=1, le=365, description="Ends undecided after this.")
    min_samples: int = Field(default=500, ge=2, description="Labelled samples per arm, at least.")
    max_samples: int | None = Field(
        default=None, ge=2, description="Ends undecided after this; default twice the plan."
    )
    allow_target_variant: StrictBool = Field(
        default=False,
        description=(
            "Whether a caller may name the variant that answers it (InvokeEndpoint's "
            "TargetVariant) while an experiment runs. Off: the arm is drawn for every request. "
            "On: a named request is captured as chosen and left out of the decision."
        ),
    )


@dataclass(frozen=True)
class Experiment:
    """One experiment's record, as stored (``models/{model}/experiment.json``).

    Attributes:
        id: ``{model}-{challenger}-{8 hex}``; in every captured record of it.
        model: model name.
        mode: ``ab`` or ``shadow``.
        champion: the version serving when it started.
        challenger: the published version under test.
        share_percent: the challenger's share of callers (ab) or of mirrored requests (shadow).
        metric: the success metric; ``direction`` says which way is better.
        direction: ``lower`` or ``higher``.
        guardrails: metric -> {"margin", "relative", "direction"}.
        mde: minimum detectable effect, relative to the champion's mean.
        alpha: two-sided level of the sequential test.
        power: power of the plan at the MDE.
        min_days: days before it may succeed.
        max_days: days after which it ends undecided.
        min_samples: labelled samples per arm before it may succeed.
        max_samples: labelled samples per arm after which it ends; None: twice the plan.
        started_at: ISO time of the start.
        state: ``starting`` -> ``running`` -> ``promoting``/``stopping`` -> ``promoted`` or
            ``stopped``; ``failed`` when the endpoint refused it.
        planned_n: per-arm sample size planned at the first look with data; None before.
        tau: the mSPRT mixture's sd, frozen with the plan.
        effect: the minimum detectable effect in the metric's units, frozen with the plan
            (futility is judged against it, not against ``tau``, which may be larger).
        looks: one summary per evaluation, oldest first.
        decision: the final verdict (``promote``/``stop``), reason and time; None while it runs.
    """

    id: str
    model: str
    mode: str
    champion: str
    challenger: str
    share_percent: float
    metric: str
    direction: str
    guardrails: dict[str, dict[str, Any]]
    mde: float
    alpha: float
    power: float
    min_days: int
    max_days: int
    min_samples: int
    max_samples: int | None
    started_at: str
    state: str = "starting"
    planned_n: int | None = None
    tau: float | None = None
    effect: float | None = None
    looks: list[dict[str, Any]] = field(default_factory=list)
    decision: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        """Whether it still owns the model's traffic (not ended)."""
        return self.state in ACTIVE

    @property
    def paired(self) -> bool:
        """Shadow experiments compare the two answers to the same request."""
        return self.mode == "shadow"

    def to_dict(self) -> dict[str, Any]:
        """The JSON document stored."""
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Experiment:
        """Read a stored record back (unknown keys are refused: the format is ours)."""
        return cls(**payload)

    def with_state(self, state: str, **changes: Any) -> Experiment:
        """A copy in ``state`` (and any other field changed)."""
        return replace(self, state=state, **changes)


def new_experiment(
    *,
    model: str,
    family_metrics: dict[str, str],
    policy: ExperimentPolicy,
    champion: str,
    challenger: str,
    started_at: str,
    mode: str | None = None,
    share_percent: float | None = None,
    metric: str | None = None,
    min_days: int | None = None,
    max_days: int | None = None,
    min_samples: int | None = None,
    max_samples: int | None = None,
) -> Experiment:
    """A validated experiment record in state ``starting``: the config's defaults, overridden.

    Args:
        model: model name.
        family_metrics: the family's per-request experiment metrics and their directions.
        policy: the model config's ``experiment:`` section.
        champion: the version serving now.
        challenger: the published version to test.
        started_at: ISO time.
        mode: ``ab`` or ``shadow``; default the policy's.
        share_percent: in (0, 100); default the policy's.
        metric: success metric; default the policy's (or the family's first).
        min_days: override.
        max_days: override.
        min_samples: override.
        max_samples: override.

    Raises:
        ExperimentError: a bad mode, share, metric or duration; the message says which.
    """
    mode = mode or policy.mode
    if mode not in MODES:
        raise ExperimentError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    share = policy.share_percent if share_percent is None else float(share_percent)
    if not (math.isfinite(share) and 0 < share < 100):
        raise ExperimentError(f"share must be between 0 and 100 percent (exclusive), not {share}")
    known = {**family_metrics, **PLATFORM_METRICS}
    metric = metric or policy.metric or next(iter(family_metrics))
    if metric not in family_metrics:
        raise ExperimentError(
            f"{model} has no experiment metric {metric!r}; its family measures "
            f"{', '.join(sorted(family_metrics))}"
        )
    unknown = sorted(set(policy.guardrails) - set(known))
    if unknown:
        raise ExperimentError(
            f"{model}: unknown guardrail metric(s) {unknown}; known {sorted(known)}"
        )
    if champion == challenger:
        raise ExperimentError(f"{model} {challenger} already serves: nothing to compare it with")
    lo_days = policy.min_days if min_days is None else min_days
    hi_days = policy.max_days if max_days is None else max_days
    lo_n = policy.min_samples if min_samples is None else min_samples
    hi_n = policy.max_samples if max_samples is None else max_samples
    if lo_days < 0 or hi_days < 1 or lo_days > hi_days:
        raise ExperimentError(
            f"need 0 <= min-days <= max-days and max-days >= 1: {lo_days}, {hi_days}"
        )
    if lo_n < 2 or (hi_n is not None and hi_n < lo_n):
        raise ExperimentError(f"need 2 <= min-samples <= max-samples: {lo_n}, {hi_n}")
    return Experiment(
        id=f"{model}-{challenger}-{uuid.uuid4().hex[:8]}",
        model=model,
        mode=mode,
        champion=champion,
        challenger=challenger,
        share_percent=share,
        metric=metric,
        direction=family_metrics[metric],
        guardrails={
            name: {**g.model_dump(), "direction": known[name]}
            for name, g in policy.guardrails.items()
            if name != metric
        },
        mde=policy.mde,
        alpha=policy.alpha,
        power=policy.power,
        min_days=lo_days,
        max_days=hi_days,
        min_samples=lo_n,
        max_samples=hi_n,
        started_at=started_at,
    )


@dataclass(frozen=True)
class Observations:
    """What the capture and the labels show so far, per arm.

    Attributes:
        requests: arm (``champion``/``challenger``) -> captured answers.
        labelled: arm -> answers with a label joined.
        values: metric -> (champion's values, challenger's values); aligned pairs in shadow mode.
        skipped: reason -> captured records left out of the look (malformed, hostile, ...).
    """

    requests: dict[str, int]
    labelled: dict[str, int]
    values: dict[str, tuple[np.ndarray, np.ndarray]]
    skipped: dict[str, int] = field(default_factory=dict)


def _arm_summary(values: np.ndarray) -> dict[str, Any]:
    """Mean and a 95 % t interval of one arm's values (descriptive; the test is the mSPRT's)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci": None}
    mean = float(np.mean(values))
    if n < 2:
        return {"n": n, "mean": mean, "ci": None}
    from scipy import stats  # where used: core.config imports this module (see core.sequential)

    half = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return {"n": n, "mean": mean, "ci": [mean - half, mean + half]}


def _margin(guard: dict[str, Any], champion_mean: float) -> float:
    return float(guard["margin"]) * (abs(champion_mean) if guard["relative"] else 1.0)


def _guardrail(exp: Experiment, name: str, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """One guardrail's look: breached (always-valid, at any look) or non-inferior (at the end)."""
    guard = exp.guardrails[name]
    lower = guard["direction"] == "lower"
    if len(a) == 0 and len(b) == 0:
        # Not measured by this target (no latency in its capture): shown, not blocking.
        return {"metric": name, "measured": False, "breached": False, "non_inferior": True}
    if min(len(a), len(b)) < 2:
        return {"metric": name, "measured": True, "breached": False, "non_inferior": False}
    margin = _margin(guard, float(np.mean(a)))
    # Breach: the always-valid interval of the harm lies wholly beyond the margin.
    spread = float(np.std(b - a if exp.paired else np.r_[a, b]))
    tau = max(margin, exp.mde * spread, 1e-9)
    look = compare(a, b, paired=exp.paired, tau=tau, alpha=exp.alpha)
    harm_low = float("-inf")
    if look is not None:
        harm_low = look.ci[0] if lower else -look.ci[1]
    p = non_inferiority_p(a, b, margin=margin, lower_is_better=lower, paired=exp.paired)
    return {
        "metric": name,
        "measured": True,
        "champion": _arm_summary(a),
        "challenger": _arm_summary(b),
        "margin": margin,
        "p_non_inferior": p,
        "non_inferior": p < exp.alpha,
        "breached": harm_low > margin,
    }


def _freeze_plan(exp: Experiment, a: np.ndarray, b: np.ndarray) -> Experiment:
    """Fix the plan and the mixture's tau at the first look with data (see README)."""
    if exp.tau is not None or min(len(a), len(b)) < 2:
        return exp
    d = b - a if exp.paired else None
    sd = float(np.std(d, ddof=1)) if d is not None else float(np.std(np.r_[a, b], ddof=1))
    effect = exp.mde * abs(float(np.mean(a))) or exp.mde * sd
    sd = sd or effect  # identical answers so far: plan as if one effect's spread
    if effect <= 0:
        return exp
    n = planned_sample_size(
        effect, sd, exp.alpha, exp.power, paired=exp.paired, share_percent=exp.share_percent
    )
    tau = mixture_tau(exp.mde, float(np.mean(a)), sd)
    return replace(exp, tau=tau, planned_n=n, effect=effect)


def decide(exp: Experiment, obs: Observations, now: datetime) -> tuple[Experiment, dict[str, Any]]:
    """One look: the record with this look appended (and plan frozen), and the look itself.

    The look's ``verdict`` is ``continue``, ``promote`` (the success metric is better with
    always-valid significance, every guardrail is non-inferior, and the minimum duration and
    samples are met) or ``stop`` (a guardrail breached, at any time; the challenger is worse;
    futility: the always-valid interval excludes an improvement as large as the MDE; or the
    maximum duration or samples were reached undecided).
    """
    a, b = obs.values.get(exp.metric, (np.empty(0), np.empty(0)))
    exp = _freeze_plan(exp, a, b)
    previous_p = exp.looks[-1]["p_value"] if exp.looks else 1.0
    look_ = None
    if exp.tau is not None:
        look_ = compare(
            a, b, paired=exp.paired, tau=exp.tau, alpha=exp.alpha, previous_p=previous_p
        )
    guards = [
        _guardrail(exp, name, *obs.values.get(name, (np.empty(0), np.empty(0))))
        for name in sorted(exp.guardrails)
    ]
    days = (now - datetime.fromisoformat(exp.started_at.replace("Z", "+00:00"))).total_seconds()
    days /= 86400.0
    n = min(len(a), len(b))
    max_n = exp.max_samples or (2 * exp.planned_n if exp.planned_n else None)
    verdict, reason = verdict_of(exp, look_, guards, days, n, max_n)
    record = {
        "at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "days": round(days, 3),
        "requests": obs.requests,
        "labelled": obs.labelled,
        "skipped": dict(obs.skipped),
        "metric": exp.metric,
        "champion": _arm_summary(a),
        "challenger": _arm_summary(b),
        "difference": None if look_ is None else look_.difference,
        "difference_ci": None if look_ is None else list(look_.ci),
        "p_value": previous_p if look_ is None else look_.p_value,
        "planned_n": exp.planned_n,
        "max_n": max_n,
        "guardrails": guards,
        "verdict": verdict,
        "reason": reason,
    }
    return replace(exp, looks=[*exp.looks, record]), record


def verdict_of(
    exp: Experiment,
    look: Any,
    guards: list[dict[str, Any]],
    days: float,
    n: int,
    max_n: int | None,
) -> tuple[str, str]:
    """The rule of :func:`decide`, in order: breach, minimums, significance, futility, maximum.

    Separate from :func:`decide` so that the simulation in ``tests/unit/test_sequential.py``
    applies this very rule to thousands of simulated looks.

    Args:
        exp: the experiment, its plan frozen (``tau``, ``effect``, ``planned_n``).
        look: this look's :class:`core.sequential.Comparison` of the success metric, or None.
        guards: the guardrails' looks (:func:`_guardrail`).
        days: days since the start.
        n: labelled samples per arm (the smaller arm).
        max_n: labelled samples per arm at which it ends undecided.

    Returns:
        ``(verdict, reason)``: ``continue``, ``promote`` or ``stop``, and why.
    """
    breached = [g["metric"] for g in guards if g["breached"]]
    if breached:
        return "stop", f"guardrail breached: {', '.join(breached)} worse than its margin"
    at_max = days >= exp.max_days or (max_n is not None and n >= max_n)
    if days < exp.min_days or n < exp.min_samples or look is None:
        if at_max:
            return "stop", f"maximum reached with {n} labelled samples per arm: undecided"
        return "continue", f"collecting: {n} labelled per arm, day {days:.1f} of {exp.min_days}+"
    better_sign = -1.0 if exp.direction == "lower" else 1.0
    improvement = better_sign * look.difference
    if look.p_value <= exp.alpha:
        if improvement < 0:
            return "stop", f"the challenger is worse on {exp.metric} (p={look.p_value:.4f})"
        weak = [g["metric"] for g in guards if not g["non_inferior"]]
        if not weak:
            return "promote", f"the challenger is better on {exp.metric} (p={look.p_value:.4f})"
        if at_max:
            return "stop", f"better on {exp.metric} but not shown non-inferior on {weak}"
        return "continue", f"better on {exp.metric}; waiting for {weak} to show non-inferior"
    # Futility: even the best improvement the always-valid interval allows is smaller than the
    # MDE. Judged against the MDE itself, not tau: tau may be several MDEs (mixture_tau's
    # floor), and "rules out tau" stopped half of the true-MDE improvements (simulated, 0/1
    # losses at 20 %: power 0.51 instead of 0.94).
    effect = exp.effect if exp.effect is not None else exp.mde * abs(look.mean_champion)
    best = max(better_sign * look.ci[0], better_sign * look.ci[1])
    if best < effect:
        return "stop", f"futility: an improvement of the MDE on {exp.metric} is ruled out"
    if at_max:
        return "stop", f"maximum reached undecided (p={look.p_value:.4f})"
    return "continue", f"undecided (p={look.p_value:.4f})"

"""The promotion gate: a pure function of two metric sets and a policy.

``decide`` takes the challenger's metrics and the champion's metrics, both measured on the
same new holdout, and the gate policy from the model's config. It never touches the store,
MLflow or Prefect; the flow records the decision and acts on it in separate tasks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core.config import GatePolicy, MetricPolicy

Rule = Literal["floor", "champion", "present"]


@dataclass(frozen=True)
class Check:
    """One rule applied to one metric."""

    metric: str
    rule: Rule
    passed: bool
    challenger: float | None
    threshold: float | None
    champion: float | None
    detail: str


@dataclass(frozen=True)
class Decision:
    """What the gate decided and why; recorded whether it promotes or not."""

    promote: bool
    mode: str
    checks: tuple[Check, ...]
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())
    champion_scored: bool = False

    @property
    def verdict(self) -> str:
        """``promote``, ``promote (warn)`` or ``reject``."""
        if not self.promote:
            return "reject"
        return "promote (warn)" if self.warnings else "promote"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for MLflow, the store and Prefect artifacts."""
        out = asdict(self)
        out["verdict"] = self.verdict
        return out


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _better_or_equal(value: float, bound: float, direction: str) -> bool:
    return value >= bound if direction == "higher" else value <= bound


def _check_metric(
    name: str, rule: MetricPolicy, challenger: float | None, champion: float | None
) -> list[Check]:
    if challenger is None:
        return [
            Check(
                name,
                "present",
                False,
                None,
                None,
                champion,
                f"{name}: the challenger reports no finite value for this gate metric",
            )
        ]
    checks = []
    word = "at least" if rule.direction == "higher" else "at most"
    if rule.floor is not None:
        ok = _better_or_equal(challenger, rule.floor, rule.direction)
        checks.append(
            Check(
                name,
                "floor",
                ok,
                challenger,
                rule.floor,
                champion,
                f"{name}={challenger:.4f} must be {word} floor {rule.floor:.4f}",
            )
        )
    if champion is not None:
        margin = rule.max_regression
        bound = champion - margin if rule.direction == "higher" else champion + margin
        ok = _better_or_equal(challenger, bound, rule.direction)
        checks.append(
            Check(
                name,
                "champion",
                ok,
                challenger,
                bound,
                champion,
                f"{name}={challenger:.4f} must be {word} {bound:.4f} "
                f"(champion {champion:.4f}, margin {margin:.4f})",
            )
        )
    return checks


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    policy: GatePolicy,
    champion_error: str | None = None,
) -> Decision:
    """Decide whether the challenger replaces the champion.

    Args:
        challenger: the challenger's metrics on the new holdout.
        champion: the champion's metrics on the same holdout, or ``None`` when there is no
            champion yet (then only the absolute floors apply).
        policy: floors, allowed regression per metric, and the enforce/warn mode.
        champion_error: a champion exists but could not be re-scored, and why. Unless
            ``policy.unscored_champion`` is ``floors``, the challenger is rejected: passing the
            floors alone would let a regression through unnoticed.

    Returns:
        The decision with one :class:`Check` per rule applied. In ``warn`` mode failed rules
        become warnings and the challenger is promoted anyway.
    """
    checks: list[Check] = []
    for name, rule in policy.metrics.items():
        champ_value = _finite(champion.get(name)) if champion is not None else None
        checks.extend(_check_metric(name, rule, _finite(challenger.get(name)), champ_value))
    failed = [c.detail for c in checks if not c.passed]
    champion_scored = champion is not None
    if champion_error and not champion_scored and policy.unscored_champion == "reject":
        failed.append(
            f"the champion could not be re-scored ({champion_error}); nothing to compare with "
            "(gate.unscored_champion: floors accepts the floors alone)"
        )
    if policy.mode == "warn" and failed:
        return Decision(
            True,
            policy.mode,
            tuple(checks),
            ("gate in warn mode: promoted despite failed rules",),
            tuple(failed),
            champion_scored,
        )
    if failed:
        return Decision(False, policy.mode, tuple(checks), tuple(failed), (), champion_scored)
    reason = (
        "meets every floor and is no worse than the champion beyond the margins"
        if champion_scored
        else "first model: meets every floor (no champion to compare)"
    )
    return Decision(True, policy.mode, tuple(checks), (reason,), (), champion_scored)

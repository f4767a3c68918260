"""What every target checks in a :class:`~core.endpoint.TrafficPlan` before it changes anything."""

from __future__ import annotations

from core.endpoint import RolloutFailed, TrafficPlan

MODES = ("ab", "shadow")


def check_plan(plan: TrafficPlan) -> None:
    """Refuse a plan no target can serve, before anything starts.

    Raises:
        RolloutFailed: (``prepare``) an unknown mode, a share outside (0, 100), a challenger of
            another model, or the champion's own version.
    """
    if plan.mode not in MODES:
        raise RolloutFailed("prepare", f"mode must be one of {', '.join(MODES)}, not {plan.mode!r}")
    if not 0 < plan.share_percent < 100:
        raise RolloutFailed("prepare", f"share must be in (0, 100), not {plan.share_percent}")
    if plan.challenger.model != plan.model or plan.champion.model != plan.model:
        raise RolloutFailed("prepare", f"champion and challenger must both be {plan.model}")
    if plan.challenger.version == plan.champion.version:
        raise RolloutFailed("prepare", f"the challenger is the champion ({plan.champion.version})")
    if not plan.experiment_id:
        raise RolloutFailed("prepare", "an experiment needs an id")

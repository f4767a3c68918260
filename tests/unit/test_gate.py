"""The gate is a pure function: every rule, direction and mode, tested exhaustively."""

from __future__ import annotations

import itertools
import math

import pytest

from core.config import GatePolicy, MetricPolicy
from core.gate import decide


def policy(mode: str = "enforce", **metrics: MetricPolicy) -> GatePolicy:
    return GatePolicy(metrics=metrics, mode=mode)


AUC = MetricPolicy(direction="higher", floor=0.8, max_regression=0.02)
MAE = MetricPolicy(direction="lower", floor=10.0, max_regression=0.5)


def test_first_model_meets_floors_and_is_promoted() -> None:
    d = decide({"auc": 0.85, "mae": 9.0}, None, policy(auc=AUC, mae=MAE))
    assert d.promote and d.verdict == "promote"
    assert not d.champion_scored
    # No champion: only floor rules were applied.
    assert {c.rule for c in d.checks} == {"floor"}
    assert "first model" in d.reasons[0]


@pytest.mark.parametrize(
    ("auc", "mae", "ok"),
    [(0.80, 10.0, True), (0.7999, 9.0, False), (0.9, 10.01, False), (0.79, 11.0, False)],
)
def test_floors_are_inclusive_and_direction_aware(auc: float, mae: float, ok: bool) -> None:
    d = decide({"auc": auc, "mae": mae}, None, policy(auc=AUC, mae=MAE))
    assert d.promote is ok


@pytest.mark.parametrize(
    ("challenger", "champion", "ok"),
    [
        (0.90, 0.91, True),  # worse by 0.01, within margin 0.02
        (0.89, 0.91, True),  # exactly at the margin
        (0.88, 0.91, False),  # worse by 0.03
        (0.95, 0.91, True),  # better
    ],
)
def test_higher_is_better_champion_margin(challenger: float, champion: float, ok: bool) -> None:
    d = decide({"auc": challenger}, {"auc": champion}, policy(auc=AUC))
    assert d.promote is ok
    check = next(c for c in d.checks if c.rule == "champion")
    assert check.threshold == pytest.approx(champion - 0.02)


@pytest.mark.parametrize(
    ("challenger", "champion", "ok"),
    [(5.4, 5.0, True), (5.5, 5.0, True), (5.6, 5.0, False), (4.0, 5.0, True)],
)
def test_lower_is_better_champion_margin(challenger: float, champion: float, ok: bool) -> None:
    d = decide({"mae": challenger}, {"mae": champion}, policy(mae=MAE))
    assert d.promote is ok


def test_floor_still_applies_when_champion_is_worse() -> None:
    # Beating a bad champion is not enough: the absolute floor still holds.
    d = decide({"auc": 0.7}, {"auc": 0.6}, policy(auc=AUC))
    assert not d.promote
    assert any("floor" in r for r in d.reasons)


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, "x"])
def test_missing_or_non_finite_metric_rejects(bad: object) -> None:
    metrics = {} if bad is None else {"auc": bad}
    d = decide(metrics, None, policy(auc=AUC))  # type: ignore[arg-type]
    assert not d.promote
    assert d.checks[0].rule == "present"


def test_champion_without_the_metric_skips_that_comparison() -> None:
    d = decide({"auc": 0.85}, {"other": 1.0}, policy(auc=AUC))
    assert d.promote
    assert [c.rule for c in d.checks] == ["floor"]


def test_warn_mode_promotes_and_records_warnings() -> None:
    d = decide({"auc": 0.5}, {"auc": 0.9}, policy("warn", auc=AUC))
    assert d.promote and d.verdict == "promote (warn)"
    assert len(d.warnings) == 2  # floor and champion rules both failed


def test_decision_is_json_ready_and_names_every_rule() -> None:
    import json

    d = decide({"auc": 0.85, "mae": 12.0}, {"auc": 0.86, "mae": 11.0}, policy(auc=AUC, mae=MAE))
    payload = json.loads(json.dumps(d.to_dict()))
    assert payload["verdict"] == "reject"
    assert {(c["metric"], c["rule"]) for c in payload["checks"]} == {
        ("auc", "floor"),
        ("auc", "champion"),
        ("mae", "floor"),
        ("mae", "champion"),
    }


@pytest.mark.parametrize(
    ("c_auc", "k_auc", "c_mae", "k_mae"),
    list(itertools.product([0.7, 0.85, 0.95], [None, 0.8, 0.9], [8.0, 11.0], [None, 7.0, 9.0])),
)
def test_promotes_iff_every_rule_holds(
    c_auc: float, k_auc: float | None, c_mae: float, k_mae: float | None
) -> None:
    champion = (
        None
        if k_auc is None and k_mae is None
        else {k: v for k, v in (("auc", k_auc), ("mae", k_mae)) if v is not None}
    )
    d = decide({"auc": c_auc, "mae": c_mae}, champion, policy(auc=AUC, mae=MAE))
    expected = c_auc >= 0.8 and c_mae <= 10.0
    if k_auc is not None:
        expected = expected and c_auc >= k_auc - 0.02
    if k_mae is not None:
        expected = expected and c_mae <= k_mae + 0.5
    assert d.promote is expected
    assert d.promote is all(c.passed for c in d.checks)


def test_a_champion_that_cannot_be_rescored_rejects_unless_told_floors() -> None:
    policy = GatePolicy(metrics={"auc": MetricPolicy(direction="higher", floor=0.5)})
    good = {"auc": 0.9}
    rejected = decide(good, None, policy, champion_error="v3 model.tar.gz is missing")
    assert not rejected.promote
    assert any("could not be re-scored" in r and "v3 model.tar.gz" in r for r in rejected.reasons)

    floors = policy.model_copy(update={"unscored_champion": "floors"})
    assert decide(good, None, floors, champion_error="v3 model.tar.gz is missing").promote
    # No champion at all: floors only, whatever the setting.
    assert decide(good, None, policy).promote

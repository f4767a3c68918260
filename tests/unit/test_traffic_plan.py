"""The checks every target makes on a traffic plan before it changes anything."""

from __future__ import annotations

import dataclasses

import pytest

from adapters.endpoints.plan import check_plan
from core.config import EndpointConfig
from core.endpoint import RolloutFailed, TrafficPlan, VersionToServe

V1 = VersionToServe(
    "m", "v1", "m", "u1", "u1/model.tar.gz", "a" * 64, "b" * 64, [], EndpointConfig()
)
V2 = dataclasses.replace(V1, version="v2")
PLAN = TrafficPlan("m", "ab", V1, V2, 10.0, "exp-1")


def test_a_good_plan_passes() -> None:
    check_plan(PLAN)
    check_plan(dataclasses.replace(PLAN, mode="shadow", share_percent=99.5))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "canary"}, "mode must be one of ab, shadow, not 'canary'"),
        ({"share_percent": 0.0}, r"share must be in \(0, 100\), not 0.0"),
        ({"share_percent": 100.0}, r"share must be in \(0, 100\), not 100.0"),
        ({"challenger": V1}, r"the challenger is the champion \(v1\)"),
        ({"challenger": dataclasses.replace(V2, model="other")}, "must both be m"),
        ({"experiment_id": ""}, "an experiment needs an id"),
    ],
)
def test_a_bad_plan_is_refused_at_prepare(change: dict[str, object], message: str) -> None:
    with pytest.raises(RolloutFailed, match=message) as refused:
        check_plan(dataclasses.replace(PLAN, **change))  # type: ignore[arg-type]
    assert refused.value.step == "prepare"

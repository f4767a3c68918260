"""The monitor's statistics and policy (core.drift): pure functions, known distributions."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import MonitorPolicy, load_model_config
from core.drift import (
    MAX_REASON_CHARS,
    FeatureDrift,
    Finding,
    age_days,
    assess,
    compare_columns,
    findings_markdown,
    floor_breaches,
    ks_2samp,
    monitored_columns,
    psi,
    trigger_reason,
)
from core.settings import PROJECT_ROOT

POLICY = MonitorPolicy()


def cfg(name: str = "limit_optimiser"):  # type: ignore[no-untyped-def]
    return load_model_config(Path(PROJECT_ROOT) / "configs" / "models" / f"{name}.yaml")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- PSI ------------------------------------------------------------------------------------


def test_psi_of_one_distribution_is_about_zero(rng: np.random.Generator) -> None:
    # Two samples of the same normal: only sampling noise, far below the 0.1 "moderate" mark.
    a, b = rng.normal(0, 1, 20_000), rng.normal(0, 1, 20_000)
    assert psi(a, a) == pytest.approx(0.0, abs=1e-12)
    assert psi(a, b) < 0.01


def test_psi_grows_with_the_shift(rng: np.random.Generator) -> None:
    # A shift of half a standard deviation is a "significant" shift by the usual reading.
    ref = rng.normal(0, 1, 20_000)
    small, large = psi(ref, ref + 0.1), psi(ref, ref + 0.5)
    assert small < 0.1 < POLICY.psi_threshold < large
    assert psi(ref, ref * 2.0) > POLICY.psi_threshold  # a wider spread, same mean


def test_psi_on_a_flag_compares_shares() -> None:
    # A 0/1 column has two reference values: PSI compares the share of ones directly.
    ref = np.array([0] * 970 + [1] * 30)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    doubled = np.array([0] * 940 + [1] * 60)
    expected = (0.94 - 0.97) * np.log(0.94 / 0.97) + (0.06 - 0.03) * np.log(0.06 / 0.03)
    assert psi(ref, doubled) == pytest.approx(expected, rel=1e-9)


def test_psi_counts_values_the_reference_never_had() -> None:
    # A new category of value (here 7) must count as drift, not fall into an existing bin.
    ref = np.array([0, 1, 2] * 100)
    assert psi(ref, np.array([7] * 300)) > 5


def test_psi_current_values_beyond_the_reference_range_land_in_the_end_bins(
    rng: np.random.Generator,
) -> None:
    ref = rng.uniform(0, 1, 5_000)
    assert np.isfinite(psi(ref, rng.uniform(10, 11, 5_000)))


def test_psi_ignores_nan_and_infinities(rng: np.random.Generator) -> None:
    ref = rng.normal(0, 1, 5_000)
    dirty = np.concatenate([ref, [np.nan, np.inf, -np.inf]])
    assert psi(dirty, ref) == pytest.approx(psi(ref, ref), abs=1e-12)


@pytest.mark.parametrize(
    ("ref", "cur"), [([], [1.0]), ([1.0], []), ([np.nan], [1.0]), (["a"], [1.0])]
)
def test_psi_refuses_an_empty_side(ref: list[object], cur: list[object]) -> None:
    with pytest.raises(ValueError, match="finite value"):
        psi(ref, cur)


def test_psi_needs_two_bins() -> None:
    with pytest.raises(ValueError, match="bins"):
        psi([1.0, 2.0], [1.0], bins=1)


# --- KS -------------------------------------------------------------------------------------


def test_ks_same_distribution_is_not_significant(rng: np.random.Generator) -> None:
    result = ks_2samp(rng.normal(0, 1, 5_000), rng.normal(0, 1, 5_000))
    assert result.statistic < 0.05
    assert result.p_value > POLICY.ks_p_value


def test_ks_shifted_distribution_is_significant(rng: np.random.Generator) -> None:
    result = ks_2samp(rng.normal(0, 1, 5_000), rng.normal(0.3, 1, 5_000))
    assert result.statistic > 0.1
    assert result.p_value < 1e-10


def test_ks_statistic_is_the_largest_cdf_gap() -> None:
    # Disjoint samples: the CDFs differ by 1 between them.
    assert ks_2samp([1, 2, 3], [10, 11, 12]).statistic == pytest.approx(1.0)
    assert ks_2samp([1, 2, 3, 4], [1, 2, 3, 4]).statistic == 0.0
    assert ks_2samp([1, 2, 3, 4], [1, 2, 3, 4]).p_value == 1.0


@pytest.mark.parametrize(("n_ref", "n_cur"), [(8, 9), (300, 200), (3_000, 2_000), (12_000, 11_000)])
def test_ks_is_scipys_test(rng: np.random.Generator, n_ref: int, n_cur: int) -> None:
    # Exact p-values up to 10,000 values a side, asymptotic above (scipy's method="auto").
    from scipy import stats

    a, b = rng.normal(0, 1, n_ref), rng.normal(0.08, 1.1, n_cur)
    ours, theirs = ks_2samp(a, b), stats.ks_2samp(a, b)
    assert ours.statistic == theirs.statistic
    assert ours.p_value == theirs.pvalue


def exact_ks_p_value(n: int, m: int, d: float) -> float:
    """P(D >= d) for samples of n and m values from one distribution, by enumeration.

    Under the null every choice of which n of the n + m pooled ranks belong to the first
    sample is equally likely; D depends only on that choice.
    """
    at_least = 0
    for ranks in itertools.combinations(range(n + m), n):
        first = np.zeros(n + m)
        first[list(ranks)] = 1
        gap = np.abs(np.cumsum(first) / n - np.cumsum(1 - first) / m)
        at_least += gap.max() >= d - 1e-12
    return at_least / math.comb(n + m, n)


def test_ks_p_value_is_exact_on_a_few_rows() -> None:
    # 8 against 9 values, six of the eight below all nine: D = 0.75. The exact p-value (0.011)
    # is above the policy's 0.01, so this is noise; the asymptotic one (0.0074) would say drift.
    ref, cur = np.array([0, 1, 2, 3, 4, 5, 20, 21.0]), np.arange(10, 19.0)
    result = ks_2samp(ref, cur)
    assert result.statistic == 0.75
    assert result.p_value == pytest.approx(exact_ks_p_value(8, 9, 0.75), rel=1e-9)
    assert result.p_value > POLICY.ks_p_value
    # No overlap at all: only 2 of the C(17, 8) orderings are that extreme.
    assert ks_2samp(np.arange(8.0), cur).p_value == pytest.approx(2 / math.comb(17, 8), rel=1e-9)


def test_ks_refuses_an_empty_side() -> None:
    with pytest.raises(ValueError, match="finite value"):
        ks_2samp([], [1.0])


# --- columns and policy ---------------------------------------------------------------------


def test_monitored_columns_are_numeric_and_not_bookkeeping() -> None:
    cols = monitored_columns(cfg())
    assert "id" not in cols and "day" not in cols  # watermark, event time
    assert "tier" not in cols and "client_id" not in cols  # text
    assert {"avg_rps", "error_rate", "best_limit"} <= set(cols)


def test_compare_columns_needs_both_measures_to_call_drift(rng: np.random.Generator) -> None:
    n = 4_000
    ref = pd.DataFrame({"same": rng.normal(0, 1, n), "moved": rng.normal(0, 1, n)})
    cur = pd.DataFrame({"same": rng.normal(0, 1, n), "moved": rng.normal(1.0, 1, n)})
    by_name = {d.feature: d for d in compare_columns(ref, cur, ["same", "moved"], POLICY)}
    assert not by_name["same"].drifted
    assert by_name["moved"].drifted
    # A big PSI on a handful of rows is noise: KS does not confirm it, so no drift.
    few = compare_columns(ref.head(8), cur.head(8) + 0.3, ["same"], POLICY)
    assert not few[0].drifted


def test_compare_columns_skips_an_all_null_column() -> None:
    ref = pd.DataFrame({"x": [np.nan] * 5})
    assert compare_columns(ref, ref, ["x"], POLICY) == []


def drift(feature: str, value: float, drifted: bool) -> FeatureDrift:
    return FeatureDrift(feature, value, 0.5, 1e-9 if drifted else 0.5, drifted, 0.0, 1.0)


def test_assess_triggers_on_drift_floor_or_age() -> None:
    c = cfg()
    quiet = assess(c, POLICY, "v1", 1.0, [drift("a", 0.01, False)], {"mape": 0.1}, [])
    assert not quiet.triggered and quiet.reasons == []

    drifted = assess(c, POLICY, "v1", 1.0, [drift("a", 0.3, True), drift("b", 0.9, True)], {}, [])
    assert drifted.reasons == ["drift in b, a"]  # largest PSI first

    live = assess(c, POLICY, "v1", 1.0, [], {"mape": 0.4, "r2": 0.9}, [])
    assert live.reasons == ["live mape 0.400 above floor 0.25"]

    old = assess(c, POLICY, "v1", POLICY.max_champion_age_days + 1.0, [], {}, [])
    assert old.triggered and "days old" in old.reasons[0]


def test_assess_honours_min_drifted_features() -> None:
    strict = MonitorPolicy(min_drifted_features=2)
    one = assess(cfg(), strict, "v1", 1.0, [drift("a", 0.3, True)], {}, [])
    assert not one.triggered


def test_floor_breaches_follow_the_direction() -> None:
    c = cfg()  # mape: lower, floor 0.25; r2: higher, floor 0.70
    assert floor_breaches(c, {"mape": 0.2, "r2": 0.8}) == []
    assert floor_breaches(c, {"r2": 0.5}) == ["live r2 0.500 below floor 0.7"]
    assert floor_breaches(c, {"mape": float("nan")}) == []


def test_trigger_reason_names_models_and_features_and_stays_short() -> None:
    a = Finding(model="abuse_detector", reasons=["drift in requests, kb_out"])
    b = Finding(model="limit_optimiser")
    assert trigger_reason([a, b]) == "monitor: abuse_detector: drift in requests, kb_out"
    long = Finding(model="m", reasons=["drift in " + ", ".join(f"col{i}" for i in range(200))])
    assert len(trigger_reason([long])) == MAX_REASON_CHARS


def test_age_days() -> None:
    now = datetime(2026, 3, 10, tzinfo=UTC)
    assert age_days((now - timedelta(days=3)).isoformat(), now) == pytest.approx(3.0)
    assert age_days("2026-03-09T00:00:00Z", now) == pytest.approx(1.0)
    assert age_days(None, now) is None


def test_markdown_says_what_happened() -> None:
    hit = Finding(model="m", champion_version="v2", reasons=["drift in x"])
    hit.features = [drift("x", 0.4, True)]
    assert "No threshold crossed" in findings_markdown([Finding(model="m")], None)
    requested = {
        "requested": True,
        "deployment": "retrain/weekly",
        "flow_run_name": "r",
        "flow_run_id": "1",
    }
    text = findings_markdown([hit], requested)
    assert "Retrain requested" in text and "| x | 0.400" in text
    missing = {"requested": False, "note": "not registered"}
    assert "not requested: not registered" in findings_markdown([hit], missing)

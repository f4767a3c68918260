"""The sequential test holds its promises: checked by simulation, seeded and vectorised.

The experiment is looked at daily (30 looks); a fixed-horizon test read that often would
reject a true null far more often than alpha. These simulations use the production functions
(``log_lambda``, ``planned_sample_size``) on the sufficient statistics of each look.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.sequential import (
    compare,
    half_width,
    log_lambda,
    mixture_tau,
    non_inferiority_p,
    planned_sample_size,
)

ALPHA = 0.05
BASELINE = 0.20  # the champion's per-request loss rate (abuse: a wrong flag)
MDE = 0.05  # relative: the plan is for a 5 % improvement


def simulate(improvement: float, power: float, sims: int = 2000, looks: int = 30, seed: int = 1):
    """Stopping looks and sample sizes of ``sims`` A/B experiments on 0/1 losses.

    Returns (share of experiments that rejected, median stopping n per arm, planned n).
    Experiments run to twice the planned n (the default ``max_samples``) over ``looks`` looks.
    """
    rng = np.random.default_rng(seed)
    delta = MDE * BASELINE
    sd = math.sqrt(BASELINE * (1 - BASELINE))
    planned = planned_sample_size(delta, sd, ALPHA, power, paired=False, share_percent=50)
    step = 2 * planned // looks
    p_challenger = BASELINE * (1 - improvement)
    a = rng.binomial(step, BASELINE, (sims, looks)).cumsum(1)
    b = rng.binomial(step, p_challenger, (sims, looks)).cumsum(1)
    n = step * np.arange(1, looks + 1)
    pa, pb = a / n, b / n
    variance = np.maximum(pa * (1 - pa) / n + pb * (1 - pb) / n, 1e-12)
    tau = mixture_tau(MDE, BASELINE, sd)  # the production rule: here 2 x delta
    rejected = log_lambda(pb - pa, variance, tau=tau) >= math.log(1 / ALPHA)
    stopped = rejected.any(axis=1)
    stop_n = n[np.where(stopped, rejected.argmax(axis=1), looks - 1)]
    return float(stopped.mean()), float(np.median(stop_n)), planned


def test_aa_experiments_looked_at_30_times_reject_at_most_alpha_plus_one_point() -> None:
    # A/A: both arms the same model. A daily fixed-horizon t-test would reject ~25 % of these.
    rate, _, _ = simulate(improvement=0.0, power=0.9)
    assert rate <= 0.06, f"false positive rate {rate:.3f} over 2,000 A/A experiments"


def test_a_true_5_percent_improvement_stops_no_later_than_the_fixed_horizon() -> None:
    rate, median_stop, planned = simulate(improvement=MDE, power=0.9)
    assert median_stop <= planned, (median_stop, planned)
    assert rate >= 0.9  # it is found, not only early when found


def test_the_always_valid_interval_is_where_the_test_does_not_reject() -> None:
    v, tau = 0.0004, 0.01
    w = half_width(v, tau, ALPHA)
    assert log_lambda(w * 0.999, v, tau) < math.log(1 / ALPHA) <= log_lambda(w * 1.001, v, tau)


def test_compare_keeps_the_running_minimum_p_value_and_pairs_shadow_answers() -> None:
    rng = np.random.default_rng(3)
    champion = rng.normal(1.0, 0.2, 500)
    challenger = champion - 0.05 + rng.normal(0, 0.01, 500)  # the same requests, better
    paired = compare(champion, challenger, paired=True, tau=0.05, alpha=ALPHA)
    two_sample = compare(champion, challenger, paired=False, tau=0.05, alpha=ALPHA)
    assert paired is not None and two_sample is not None
    # Pairing removes the requests' own variance: the interval is far narrower.
    assert paired.ci[1] - paired.ci[0] < (two_sample.ci[1] - two_sample.ci[0]) / 5
    assert paired.p_value < 1e-6 and paired.ci[1] < 0
    later = compare(champion[:10], challenger[:10] + 1, paired=True, tau=0.05, alpha=ALPHA,
                    previous_p=paired.p_value)  # fmt: skip
    assert later is not None and later.p_value == paired.p_value
    assert compare(champion[:1], challenger[:1], paired=True, tau=0.05, alpha=ALPHA) is None


@pytest.mark.parametrize("paired", [True, False])
def test_non_inferiority_shows_a_harmless_challenger_and_not_a_worse_one(paired: bool) -> None:
    rng = np.random.default_rng(5)
    champion = rng.normal(100.0, 10.0, 2000)  # latency in ms
    same = champion + rng.normal(0, 2, 2000)
    worse = champion + 15 + rng.normal(0, 2, 2000)
    kw = {"margin": 5.0, "lower_is_better": True, "paired": paired}
    assert non_inferiority_p(champion, same, **kw) < 0.01
    assert non_inferiority_p(champion, worse, **kw) > 0.5


def test_the_plan_needs_fewer_challenger_requests_beside_a_larger_champion_arm_or_paired() -> None:
    even = planned_sample_size(0.01, 0.4, ALPHA, 0.8, paired=False, share_percent=50)
    # The textbook 2 sd^2 (z_a/2 + z_b)^2 / delta^2 = 25,116 per arm.
    assert abs(even - 2 * 0.16 * (1.959964 + 0.841621) ** 2 / 0.0001) < 2
    assert planned_sample_size(0.01, 0.4, ALPHA, 0.8, paired=False, share_percent=10) < even
    assert planned_sample_size(0.01, 0.4, ALPHA, 0.8, paired=True, share_percent=10) < even
    with pytest.raises(ValueError, match="positive"):
        planned_sample_size(0.0, 0.4, ALPHA, 0.8, paired=False, share_percent=50)

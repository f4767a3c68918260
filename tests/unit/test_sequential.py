"""The sequential test holds its promises: checked by simulation, seeded and vectorised.

The experiment is looked at daily (30 looks); a fixed-horizon test read that often would
reject a true null far more often than alpha. These simulations use the production functions
(``log_lambda``, ``planned_sample_size``) on the sufficient statistics of each look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
from scipy.stats import binomtest

from core.experiment import ExperimentPolicy, new_experiment, verdict_of
from core.sequential import (
    Comparison,
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
FP_BOUND = ALPHA + 0.01
"""The issue's "false positives at most 5 % +- 1 %", read as: no more than alpha plus one
point, the Monte Carlo allowance of 2,000 runs (about two standard errors at 5 %). Below alpha
is allowed ("at most"): the mSPRT is conservative. Asserted on the 99 % Clopper-Pearson upper
bound of the simulated rate, so it holds for the true rate, not only for this seed."""


@dataclass(frozen=True)
class Simulated:
    """What :func:`simulate` found over ``sims`` experiments."""

    sims: int
    rejected: int  # p <= alpha at the look that ended it (promoted, or stopped as worse)
    promoted: int
    median_stop: float  # labelled samples per arm when the rule ended it (or at the last look)
    planned: int


def simulate(improvement: float, power: float, sims: int = 2000, looks: int = 30, seed: int = 1):
    """``sims`` A/B experiments on 0/1 losses, each ended by the production decision rule.

    The sufficient statistics of each look are drawn vectorised; each look then goes through
    :func:`core.experiment.verdict_of` (significance, worse, futility, maximum: the rule the
    ``experiment/evaluate`` flow applies) with the plan and tau frozen as :func:`decide` freezes
    them. Experiments run to twice the planned n (the default ``max_samples``) over ``looks``.
    """
    rng = np.random.default_rng(seed)
    delta = MDE * BASELINE
    sd = math.sqrt(BASELINE * (1 - BASELINE))
    planned = planned_sample_size(delta, sd, ALPHA, power, paired=False, share_percent=50)
    tau = mixture_tau(MDE, BASELINE, sd)  # the production rule: here 2 x delta
    policy = ExperimentPolicy(
        mode="ab", share_percent=50, mde=MDE, alpha=ALPHA, power=power, min_days=0,
        min_samples=2, guardrails={},
    )  # fmt: skip
    exp = new_experiment(
        model="m", family_metrics={"loss": "lower"}, policy=policy, champion="v1",
        challenger="v2", started_at="2026-12-02T00:00:00Z",
    )  # fmt: skip
    exp = replace(exp, state="running", tau=tau, effect=delta, planned_n=planned)
    step = 2 * planned // looks
    a = rng.binomial(step, BASELINE, (sims, looks)).cumsum(1)
    b = rng.binomial(step, BASELINE * (1 - improvement), (sims, looks)).cumsum(1)
    n = step * np.arange(1, looks + 1)
    pa, pb = a / n, b / n
    variance = np.maximum(pa * (1 - pa) / n + pb * (1 - pb) / n, 1e-12)
    p_value = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_lambda(pb - pa, variance, tau))), 1)
    rejected = promoted = 0
    stops = []
    for i in range(sims):
        for k in range(looks):
            diff, w = float(pb[i, k] - pa[i, k]), half_width(float(variance[i, k]), tau, ALPHA)
            look = Comparison(int(n[k]), int(n[k]), float(pa[i, k]), float(pb[i, k]), diff, sd,
                              (diff - w, diff + w), float(p_value[i, k]))  # fmt: skip
            verdict, _ = verdict_of(exp, look, [], k + 1.0, int(n[k]), 2 * planned)
            if verdict != "continue" or k == looks - 1:
                rejected += look.p_value <= ALPHA
                promoted += verdict == "promote"
                stops.append(n[k])
                break
    return Simulated(sims, rejected, promoted, float(np.median(stops)), planned)


def test_aa_experiments_looked_at_30_times_reject_at_most_alpha_plus_one_point() -> None:
    # A/A: both arms the same model. A daily fixed-horizon t-test would reject ~25 % of these.
    sim = simulate(improvement=0.0, power=0.9)
    high = binomtest(sim.rejected, sim.sims).proportion_ci(0.99).high
    assert high <= FP_BOUND, f"{sim.rejected} of {sim.sims} A/A rejected (99 % CI to {high:.4f})"


def test_a_true_5_percent_improvement_stops_no_later_than_the_fixed_horizon() -> None:
    sim = simulate(improvement=MDE, power=0.9)
    assert sim.median_stop <= sim.planned, sim
    # It is found, not only early when found: the futility rule must not cut the power.
    assert sim.promoted >= 0.9 * sim.sims, sim


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

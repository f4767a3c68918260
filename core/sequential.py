"""The statistics of an experiment: the sample-size plan, the sequential test, the guardrails.

An experiment is looked at every day, so a fixed-horizon test read daily would be wrong far more
often than its alpha says. The success metric is therefore tested with the mixture sequential
probability ratio test (mSPRT, Johari, Pekelis and Walsh, "Always valid inference", 2017,
arXiv 1512.04922) on the difference of the arms' means: its p-value stays valid however often
it is read. No library of our stack implements it (statsmodels and scipy have fixed-horizon
tests and power, not always-valid inference), so it is written here, in closed form, and checked
by simulation (``tests/unit/test_sequential.py``). Everything with a library function uses it:
the plan is ``statsmodels``' ``NormalIndPower().solve_power``, the guardrails'
non-inferiority tests are ``statsmodels``' ``ttest_ind(value=...)`` (two samples, A/B) and
``DescrStatsW.ttest_mean`` on the per-request differences (paired, shadow:
``scipy.stats.ttest_rel`` has no margin).

One formula serves both designs. With ``theta_hat`` the estimated difference and ``variance``
its variance (``s_d^2 / n`` paired; ``s_a^2 / n_a + s_b^2 / n_b`` two-sample), a normal mixture
``N(0, tau^2)`` over the alternative gives::

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * theta_hat^2 / (2 V (V + tau^2)))

(Johari et al.'s equation with ``V = sigma^2 / n``), rejected at ``Lambda >= 1 / alpha``; the
always-valid p-value is the running minimum of ``1 / Lambda``, and the set of ``theta_0`` not
rejected is an always-valid confidence interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# statsmodels is imported where it is used: core.config imports this module (through
# core.experiment's policy model), and every flow-run process imports core.config; statsmodels
# costs it about 2 s of start-up that only the experiment evaluation needs.


def log_lambda(theta_hat: Any, variance: Any, tau: float, theta0: float = 0.0) -> Any:
    """The mSPRT statistic ``log Lambda`` (numpy-vectorised over ``theta_hat`` and ``variance``).

    Args:
        theta_hat: estimated difference(s) of means.
        variance: variance of each estimate (> 0).
        tau: standard deviation of the normal mixture over the alternative (> 0).
        theta0: the difference under the null hypothesis.
    """
    v = np.asarray(variance, dtype=float)
    t2 = tau * tau
    diff = np.asarray(theta_hat, dtype=float) - theta0
    return 0.5 * np.log(v / (v + t2)) + t2 * diff * diff / (2.0 * v * (v + t2))


def mixture_tau(mde: float, champion_mean: float, sd: float) -> float:
    """The mixture's sd: the MDE in the metric's units, never below the MDE of one sd.

    The MDE is relative to the champion's mean (5 % fewer errors). When that mean is small
    next to the spread of the values (a near-perfect champion, whose losses are tiny while
    the challenger's differ a lot), a mixture that narrow puts its mass on effects far below
    what the data resolve, and the test is slow to see a large one; ``mde`` standard
    deviations is the floor. Simulated (0/1 losses, 20 % base rate): this rule gives
    ``tau`` = 2 x the MDE there, and the figures in README "Experiments".
    """
    return max(mde * abs(champion_mean), mde * sd)


def half_width(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the always-valid ``1 - alpha`` confidence interval around ``theta_hat``.

    The ``theta_0`` with ``log Lambda(theta_0) < log(1 / alpha)``, solved for ``theta_0``.
    """
    t2 = tau * tau
    budget = math.log(1.0 / alpha) - 0.5 * math.log(variance / (variance + t2))
    return math.sqrt(2.0 * variance * (variance + t2) / t2 * budget)


def planned_sample_size(
    effect: float, sd: float, alpha: float, power: float, *, paired: bool, share_percent: float
) -> int:
    """Per-arm sample size (the challenger's arm) of a fixed-horizon test for ``effect``.

    Args:
        effect: the minimum detectable effect, in the metric's units (> 0).
        sd: standard deviation of one request's value (two-sample) or of a paired difference.
        alpha: two-sided significance level.
        power: probability of detecting ``effect``.
        paired: a shadow experiment: pairs of answers to the same request (one-sample test
            on the differences).
        share_percent: the challenger's share; A/B arms are unequal (``ratio`` = champion's
            requests per challenger request).
    """
    if effect <= 0 or sd <= 0:
        raise ValueError(f"effect and sd must be positive, got effect={effect}, sd={sd}")
    from statsmodels.stats.power import NormalIndPower

    ratio = 0.0 if paired else (100.0 - share_percent) / share_percent
    n = NormalIndPower().solve_power(
        effect_size=effect / sd, nobs1=None, alpha=alpha, power=power, ratio=ratio
    )
    return math.ceil(float(n))


@dataclass(frozen=True)
class Comparison:
    """One look at one metric: challenger minus champion, with the sequential test.

    Attributes:
        n_champion: values (or pairs) in the champion's arm.
        n_challenger: values (or pairs) in the challenger's arm.
        mean_champion: mean of the champion's values.
        mean_challenger: mean of the challenger's values.
        difference: ``mean_challenger - mean_champion``.
        sd: standard deviation used for the plan (pooled per request, or of the differences).
        ci: the always-valid ``1 - alpha`` interval of the difference.
        p_value: the always-valid p-value (running minimum over the looks so far).
    """

    n_champion: int
    n_challenger: int
    mean_champion: float
    mean_challenger: float
    difference: float
    sd: float
    ci: tuple[float, float]
    p_value: float


def _variance(champion: np.ndarray, challenger: np.ndarray, paired: bool) -> tuple[float, float]:
    """The difference's variance and the per-unit sd the plan needs."""
    if paired:
        d = challenger - champion
        sd = float(np.std(d, ddof=1))
        return sd * sd / len(d), sd
    va, vb = float(np.var(champion, ddof=1)), float(np.var(challenger, ddof=1))
    return va / len(champion) + vb / len(challenger), math.sqrt((va + vb) / 2.0)


def compare(
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    paired: bool,
    tau: float,
    alpha: float,
    previous_p: float = 1.0,
) -> Comparison | None:
    """The mSPRT look at ``challenger - champion``; None with fewer than 2 values an arm.

    Args:
        champion: the champion's per-request values (paired: aligned with ``challenger``).
        challenger: the challenger's per-request values.
        paired: shadow (the same requests answered by both) or A/B (different requests).
        tau: the mixture's standard deviation, frozen at the experiment's first look.
        alpha: the level of the always-valid interval.
        previous_p: the always-valid p-value of the previous look (1 at the first).
    """
    a = np.asarray(champion, dtype=float)
    b = np.asarray(challenger, dtype=float)
    if paired and len(a) != len(b):
        raise ValueError(f"paired values must align: {len(a)} champion, {len(b)} challenger")
    if min(len(a), len(b)) < 2:
        return None
    variance, sd = _variance(a, b, paired)
    diff = float(b.mean() - a.mean())
    if variance <= 0:  # identical answers: no evidence either way, and no interval
        return Comparison(len(a), len(b), float(a.mean()), float(b.mean()), diff, sd,
                          (diff, diff), previous_p)  # fmt: skip
    p_now = float(min(1.0, math.exp(-float(log_lambda(diff, variance, tau)))))
    w = half_width(variance, tau, alpha)
    return Comparison(
        n_champion=len(a),
        n_challenger=len(b),
        mean_champion=float(a.mean()),
        mean_challenger=float(b.mean()),
        difference=diff,
        sd=sd,
        ci=(diff - w, diff + w),
        p_value=min(previous_p, p_now),
    )


def non_inferiority_p(
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    margin: float,
    lower_is_better: bool,
    paired: bool,
) -> float:
    """p-value of "the challenger is worse than the champion by ``margin`` or more".

    A small p-value shows non-inferiority: the challenger is at most ``margin`` worse
    (Spotify's guardrails, Schultzberg et al. 2024). One-sided Welch t-test with the margin as
    the null difference; on pairs, a one-sample t-test of the differences.

    Args:
        champion: the champion's per-request values.
        challenger: the challenger's per-request values (aligned when ``paired``).
        margin: how much worse is still acceptable, in the metric's units (>= 0).
        lower_is_better: the metric's direction (latency, errors, losses: lower).
        paired: compare per-request differences.
    """
    from statsmodels.stats.weightstats import DescrStatsW, ttest_ind

    a = np.asarray(champion, dtype=float)
    b = np.asarray(challenger, dtype=float)
    if min(len(a), len(b)) < 2:
        return 1.0
    # H0: worse by >= margin. Lower is better: H0 b - a >= margin, alternative "smaller".
    sign = 1.0 if lower_is_better else -1.0
    if paired:
        d = sign * (b - a)
        if float(np.std(d)) == 0.0:
            return 0.0 if float(d.mean()) < margin else 1.0
        _, p, _ = DescrStatsW(d).ttest_mean(value=margin, alternative="smaller")
        return float(p)
    if float(np.std(a)) == 0.0 and float(np.std(b)) == 0.0:
        return 0.0 if sign * float(b.mean() - a.mean()) < margin else 1.0
    _, p, _ = ttest_ind(sign * b, sign * a, value=margin, alternative="smaller", usevar="unequal")
    return float(p)

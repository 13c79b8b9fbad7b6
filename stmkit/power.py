"""Intervals over seeds *and* items, the smallest effect a design can detect, and verdict words: computed, never typed.

A comparison at small scale has two sources of noise: the seed that trained the model (LoRA initialisation and
example order: changing only the order moved STM's drift from 0.18 to 0.28 at 135M) and the items a measure was
taken on. A measurement is therefore a matrix ``d[seed, item]`` -- a paired difference per item, e.g. the tuned
model's gold-answer NLL minus the base's, or STM's minus ground truth's for the same seed (arms with the same seed
see the same example order, so they are paired). Seeds and items are crossed random effects:

    Var(mean) = s2_seed / S + s2_item / I + s2_resid / (S * I)

estimated from the two-way ANOVA mean squares as ``(MS_seed + MS_item - MS_resid) / (S * I)``; the interval uses a
t quantile at Satterthwaite's degrees of freedom, capped at S - 1 where the seed term is a sizeable share. With one seed the seed term cannot be estimated: the interval
covers items only and the verdict is always *inconclusive*.

Why not the percentile bootstrap over seeds and items: with 3 seeds there are only 10 distinct seed resamples and
the bootstrap ignores the t quantile, so where seed-to-seed variation dominates its 95% interval covers far less
than 95% (``tests/test_power.py`` simulates both).

The minimum detectable effect (MDE) is the true effect this design finds with 80% power at two-sided 5%:
``(t_{0.975, df} + t_{0.80, df}) * SE``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
POWER = 0.80
VERDICTS = ("holds", "contradicted", "inconclusive")
SEED_SHARE_CAP = 0.1  # where the seed component is above this share of the variance, df is capped at seeds - 1


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and items with its interval, standard error, degrees of freedom and MDE."""

    mean: float
    low: float
    high: float
    se: float
    df: float
    mde: float
    n_seeds: int
    n_items: int

    def excludes(self, value: float) -> bool:
        return not self.low <= value <= self.high


@dataclass(frozen=True)
class Verdict:
    """A verdict word (one of VERDICTS) and the reason for it, in words."""

    word: str
    reason: str


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom (df may be fractional)."""
    if df <= 0:
        raise ValueError(f"df={df!r} must be > 0")
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on t_cdf; no scipy needed)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p!r} must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def minimum_detectable_effect(se: float, df: float, level: float = LEVEL, power: float = POWER) -> float:
    """The true effect a two-sided test at 1 - level finds with the given power, for this standard error."""
    return (t_quantile(1.0 - (1.0 - level) / 2.0, df) + t_quantile(power, df)) * se


def crossed_interval(d: np.ndarray | list, level: float = LEVEL) -> Estimate:
    """Mean of d[seed, item] with an interval that accounts for seeds and items (crossed random effects)."""
    d = np.asarray(d, dtype=float)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"need a [seeds, items] matrix with at least 2 items, got shape {d.shape}")
    if not np.isfinite(d).all():
        bad = np.argwhere(~np.isfinite(d))[0]
        raise ValueError(f"non-finite value at seed {bad[0]}, item {bad[1]}: every measurement must be finite")
    s, i = d.shape
    grand = float(d.mean())
    item_means = d.mean(axis=0)
    ms_item = s * float(((item_means - grand) ** 2).sum()) / (i - 1)
    if s == 1:  # seeds unmeasured: items only
        var, df = ms_item / i, float(i - 1)
    else:
        seed_means = d.mean(axis=1)
        ms_seed = i * float(((seed_means - grand) ** 2).sum()) / (s - 1)
        resid = d - seed_means[:, None] - item_means[None, :] + grand
        ms_resid = float((resid**2).sum()) / ((s - 1) * (i - 1))
        combo = max(ms_seed + ms_item - ms_resid, ms_seed, ms_item)  # never below either main effect's own term
        var = combo / (s * i)
        denom = ms_seed**2 / (s - 1) + ms_item**2 / (i - 1) + ms_resid**2 / ((s - 1) * (i - 1))
        df = combo**2 / denom if denom > 0 else float(s * i - 1)
        df = min(max(df, 1.0), float(s * i - 1))
        if max(ms_seed - ms_resid, 0.0) > SEED_SHARE_CAP * combo:  # the estimated seed component, not MS_seed
            # Satterthwaite overstates df when a mean square with S - 1 df comes out small by chance; where seeds are
            # a sizeable part of the variance their S - 1 df govern (simulated with 3 seeds x 200 items, 2000
            # studies per noise shape: 92.6% coverage uncapped; 95.6-97.7% capped, MDE 2.9 SE without seed
            # variation; tests/test_power.py).
            df = min(df, float(s - 1))
    se = math.sqrt(max(var, 0.0))
    half = t_quantile(1.0 - (1.0 - level) / 2.0, df) * se
    return Estimate(grand, grand - half, grand + half, se, df, minimum_detectable_effect(se, df, level), s, i)


def judge(est: Estimate, expected_sign: int, paper_effect: float | None = None, claimant: str = "the paper") -> Verdict:
    """holds / contradicted / inconclusive for a claim whose effect the paper says has `expected_sign` (+1 or -1).

    holds: the interval lies wholly on the paper's side of zero; contradicted: wholly on the other side;
    inconclusive otherwise, and always with one seed. The reason says whether the design could have seen an
    effect of the paper's size (MDE against |paper_effect|, where the paper has a number in the same units).
    """
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign!r}")
    if est.n_seeds < 2:
        return Verdict("inconclusive", "one seed: seed-to-seed variation is unmeasured, so no claim is supported")
    low, high = sorted((est.low * expected_sign, est.high * expected_sign))
    if low > 0:
        return Verdict("holds", f"the {LEVEL:.0%} interval excludes zero on {claimant}'s side")
    if high < 0:
        return Verdict("contradicted", f"the {LEVEL:.0%} interval excludes zero on the other side from {claimant}")
    if paper_effect is None:
        return Verdict("inconclusive", f"the interval spans zero; this design detects effects of {est.mde:.3g} or more")
    size = f"the paper's effect ({abs(paper_effect):.3g}, at 2B-8B)"
    if est.excludes(paper_effect):
        return Verdict("inconclusive", f"the interval spans zero and excludes {size}")
    if est.mde > abs(paper_effect):
        return Verdict("inconclusive", f"underpowered: this design detects {est.mde:.3g} or more; {size} is smaller")
    return Verdict("inconclusive", f"the interval spans zero and includes {size}")

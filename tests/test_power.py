"""The power helper on synthetic studies: intervals cover known effects, and a null effect rarely gets a verdict."""

from __future__ import annotations

import numpy as np
import pytest

from stmkit import power

STUDIES = 2000  # the issue asks for 200; 2000 keeps Monte Carlo error (0.5 points) well inside the slack


def _study(rng: np.random.Generator, effect: float, seeds: int, items: int, sd_seed: float, sd_item: float,
           sd_resid: float) -> np.ndarray:
    """d[seed, item] = effect + seed effect + item effect + noise (seeds and items crossed, as in the kit)."""
    return (effect + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, sd_item, (1, items))
            + rng.normal(0, sd_resid, (seeds, items)))


# Noise shapes seen at 135M: seed-dominated (drift moved 0.18 -> 0.28 with the example order), item-dominated
# (per-item NLL changes), balanced, and none from seeds at all (then df must not be capped at seeds - 1).
SHAPES = {"seed-dominated": (0.08, 0.05, 0.05), "item-dominated": (0.01, 0.3, 0.1), "balanced": (0.04, 0.15, 0.1),
          "no seed effect": (0.0, 0.2, 0.2)}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("seeds", [3, 5])
def test_interval_covers_a_known_effect_in_at_least_94_percent_of_studies(shape, seeds):
    rng = np.random.default_rng(0)
    effect = 0.1
    covered = sum(
        power.crossed_interval(_study(rng, effect, seeds, 200, *SHAPES[shape])).excludes(effect) is False
        for _ in range(STUDIES)
    )
    assert covered / STUDIES >= 0.94, f"{shape}, {seeds} seeds: covered {covered}/{STUDIES}"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_effect_gets_a_verdict_in_at_most_5_percent_of_studies(shape):
    rng = np.random.default_rng(0)
    words = [power.judge(power.crossed_interval(_study(rng, 0.0, 3, 200, *SHAPES[shape])), +1, 0.1).word
             for _ in range(STUDIES)]
    wrong = sum(w in ("holds", "contradicted") for w in words)
    assert wrong <= 0.05 * STUDIES, f"{shape}: {wrong}/{STUDIES} verdicts on a null effect"


def test_a_large_effect_with_enough_power_holds_and_its_opposite_is_contradicted():
    rng = np.random.default_rng(1)
    d = _study(rng, 0.3, 3, 200, 0.02, 0.1, 0.05)
    est = power.crossed_interval(d)
    assert est.mde < 0.3
    assert power.judge(est, +1).word == "holds"
    assert power.judge(est, -1).word == "contradicted"


def test_the_mde_is_the_effect_found_with_80_percent_power():
    rng = np.random.default_rng(3)
    shape = SHAPES["balanced"]
    mde = np.median([power.crossed_interval(_study(rng, 0.0, 3, 200, *shape)).mde for _ in range(50)])
    found = sum(power.judge(power.crossed_interval(_study(rng, mde, 3, 200, *shape)), +1).word == "holds"
                for _ in range(STUDIES))
    assert 0.70 <= found / STUDIES <= 0.95, f"found {found}/{STUDIES} at the MDE {mde:.3f}"


def test_one_seed_is_always_inconclusive_and_says_why():
    est = power.crossed_interval(np.full((1, 50), 1.0) + np.linspace(0, 0.01, 50))
    assert est.n_seeds == 1 and est.low > 0
    verdict = power.judge(est, +1, 0.5)
    assert verdict.word == "inconclusive" and "one seed" in verdict.reason


def test_underpowered_and_excluding_reasons():
    est = power.Estimate(mean=0.0, low=-0.2, high=0.2, se=0.1, df=10, mde=0.3, n_seeds=3, n_items=100)
    assert "underpowered" in power.judge(est, +1, 0.1).reason
    assert "underpowered" in power.judge(est, -1, -0.15).reason
    assert "excludes the paper's effect" in power.judge(est, -1, -0.25).reason  # checked first: it says more
    small = power.Estimate(mean=0.0, low=-0.05, high=0.05, se=0.02, df=10, mde=0.06, n_seeds=3, n_items=100)
    assert "excludes the paper's effect" in power.judge(small, -1, -0.3).reason


def test_percentile_bootstrap_over_three_seeds_undercovers():
    """Why the kit does not bootstrap seeds: with 3 seeds and seed noise dominating it misses far more than 5%."""
    rng = np.random.default_rng(11)
    effect, misses, studies = 0.1, 0, 300
    for _ in range(studies):
        d = _study(rng, effect, 3, 200, *SHAPES["seed-dominated"])
        boots = [d[rng.integers(0, 3, 3)][:, rng.integers(0, 200, 200)].mean() for _ in range(200)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        misses += not lo <= effect <= hi
    assert misses / studies > 0.15


def test_t_quantiles_match_the_tables():
    assert power.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert power.t_quantile(0.975, 10) == pytest.approx(2.2281, abs=1e-4)
    assert power.t_quantile(0.80, 5) == pytest.approx(0.9195, abs=1e-4)
    assert power.t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)
    assert power.t_quantile(0.025, 3) == pytest.approx(-3.1824, abs=1e-4)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="non-finite value at seed 1, item 0"):
        power.crossed_interval([[1.0, 2.0], [float("nan"), 1.0]])
    with pytest.raises(ValueError, match="at least 2 items"):
        power.crossed_interval([[1.0]])
    with pytest.raises(ValueError, match="expected_sign"):
        power.judge(power.crossed_interval([[1.0, 2.0], [1.5, 2.5]]), 0)


def test_without_seed_variation_the_mde_is_not_inflated_by_the_seed_cap():
    rng = np.random.default_rng(4)
    ests = [power.crossed_interval(_study(rng, 0.0, 3, 200, *SHAPES["no seed effect"])) for _ in range(200)]
    ratio = np.median([e.mde / e.se for e in ests])
    assert ratio < 3.5, f"MDE is {ratio:.2f} SE: df was capped at seeds - 1 without seed variation"

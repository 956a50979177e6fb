"""The gate's statistics against independent computations (scipy and a plain numpy bootstrap)."""

import numpy as np
import pytest
from scipy import stats as sps

from continual_opd.stats import (mcnemar_exact, noise_failure_probability, no_change_lower_bound, paired_bootstrap_ci,
                         paired_stats)


def _paired(n, p_champ, flip_down, flip_up, seed):
    """Correctness vectors: the candidate loses `flip_down` and gains `flip_up` of the items."""
    rng = np.random.default_rng(seed)
    champ = rng.random(n) < p_champ
    cand = champ.copy()
    right, wrong = np.flatnonzero(champ), np.flatnonzero(~champ)
    cand[rng.choice(right, flip_down, replace=False)] = False
    cand[rng.choice(wrong, flip_up, replace=False)] = True
    return champ, cand


@pytest.mark.parametrize("n,p,down,up", [(1000, 0.6, 40, 10), (500, 0.9, 5, 30), (300, 0.35, 20, 22),
                                         (1000, 0.99, 3, 1)])
def test_bootstrap_ci_matches_scipy_paired_bootstrap(n, p, down, up):
    champ, cand = _paired(n, p, down, up, seed=n + down)
    low, high = paired_bootstrap_ci(champ, cand, resamples=20_000, seed=1)
    ref = sps.bootstrap((champ.astype(float), cand.astype(float)),
                        lambda a, b, axis: np.mean(b, axis=axis) - np.mean(a, axis=axis),
                        paired=True, vectorized=True, n_resamples=20_000, method="percentile",
                        confidence_level=0.95, rng=np.random.default_rng(7)).confidence_interval
    # Two independent Monte Carlo estimates of the same percentiles: agree to well under a point.
    assert low == pytest.approx(ref.low, abs=0.004)
    assert high == pytest.approx(ref.high, abs=0.004)
    assert low <= cand.mean() - champ.mean() <= high


def test_bootstrap_ci_matches_a_direct_index_resampling():
    champ, cand = _paired(800, 0.5, 60, 30, seed=3)
    rng = np.random.default_rng(11)
    idx = rng.integers(0, 800, size=(20_000, 800))
    means = cand[idx].mean(1) - champ[idx].mean(1)
    ref_low, ref_high = np.quantile(means, [0.025, 0.975])
    low, high = paired_bootstrap_ci(champ, cand, resamples=20_000, seed=5)
    assert low == pytest.approx(ref_low, abs=0.004)
    assert high == pytest.approx(ref_high, abs=0.004)


def test_bootstrap_ci_is_seeded_and_degenerate_when_nothing_changed():
    champ, cand = _paired(400, 0.7, 25, 5, seed=2)
    assert paired_bootstrap_ci(champ, cand, seed=4) == paired_bootstrap_ci(champ, cand, seed=4)
    assert paired_bootstrap_ci(champ, champ) == (0.0, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_ci(champ, cand[:-1])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_ci([], [])


@pytest.mark.parametrize("down,up", [(40, 10), (10, 40), (7, 7), (0, 5), (1, 0), (0, 0), (120, 95)])
def test_mcnemar_matches_scipy_binomtest_on_discordant_pairs(down, up):
    champ, cand = _paired(1000, 0.5, down, up, seed=down * 31 + up)
    expected = 1.0 if down + up == 0 else sps.binomtest(down, down + up, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(champ, cand) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_paired_stats_fields():
    champ, cand = _paired(1000, 0.8, 30, 10, seed=9)
    s = paired_stats(champ, cand, resamples=2000, seed=0)
    assert (s.n, s.champion_only, s.candidate_only) == (1000, 30, 10)
    assert s.champion_acc == pytest.approx(champ.mean())
    assert s.candidate_acc == pytest.approx(cand.mean())
    assert s.delta == pytest.approx(-0.02)
    assert s.delta_ci_low < s.delta < s.delta_ci_high


def test_no_change_lower_bound_reproduces_facts_and_predicts_noise_failures():
    # Measured on the demo world: with ~540 items and no change, the paired 95% lower bound was about -2 points.
    assert no_change_lower_bound(540, 0.056) == pytest.approx(-0.02, abs=0.001)
    # Simulated no-change candidates: how often does noise put the CI low below -2 points?
    n, r, margin, sims = 1000, 0.03, 0.02, 400
    rng = np.random.default_rng(0)
    fails = 0
    for _ in range(sims):
        u = rng.random(n)  # discordant items, each direction equally likely: no true change
        both = rng.random(n) < 0.9
        champ = np.where(u < r / 2, True, np.where(u < r, False, both))
        cand = np.where(u < r / 2, False, np.where(u < r, True, both))
        low, _ = paired_bootstrap_ci(champ, cand, resamples=2000, seed=int(rng.integers(1 << 30)))
        fails += low < -margin
    predicted = noise_failure_probability(n, r, margin)
    assert 0.01 < predicted < 0.1
    assert abs(fails / sims - predicted) < 0.035

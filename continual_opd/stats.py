"""Paired statistics for champion vs candidate on identical items: delta, bootstrap CI, exact McNemar.

Both models answer the same items, so the comparison is paired (docs/library-notes.md): the per-item difference
d = candidate_correct - champion_correct takes only the values -1, 0, +1, and everything the gate needs
is a function of the counts of discordant pairs.

- The 95% paired bootstrap CI of mean(d) resamples items with replacement. A resample's mean depends
  only on how many +1 and -1 items it drew, and those counts are exactly Multinomial(n, p+, p-, p0), so
  we draw the counts directly: the same distribution as resampling indices, in O(resamples) memory.
- McNemar's exact test is the two-sided binomial test of the discordant pairs against p = 0.5.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedStats:
    n: int
    champion_acc: float
    candidate_acc: float
    delta: float
    delta_ci_low: float
    delta_ci_high: float
    mcnemar_p: float
    champion_only: int  # discordant: champion right, candidate wrong
    candidate_only: int  # discordant: candidate right, champion wrong


def _as_bool(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-d sequence of per-item correctness")
    return a.astype(bool)


def paired_bootstrap_ci(champion_correct, candidate_correct, resamples: int = 10_000, confidence: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile CI of mean(candidate - champion) under the paired (item) bootstrap; seeded."""
    a = _as_bool(champion_correct, "champion_correct")
    b = _as_bool(candidate_correct, "candidate_correct")
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    n = a.size
    if n == 0:
        raise ValueError("cannot compute a confidence interval on an empty suite")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    plus = int(np.sum(b & ~a))
    minus = int(np.sum(a & ~b))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [plus / n, minus / n, (n - plus - minus) / n], size=resamples)
    means = (counts[:, 0] - counts[:, 1]) / n
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def mcnemar_exact(champion_correct, candidate_correct) -> float:
    """Two-sided exact McNemar p-value: binomial test of the discordant pairs at p = 0.5 (1.0 when none)."""
    from scipy.stats import binom

    a = _as_bool(champion_correct, "champion_correct")
    b = _as_bool(candidate_correct, "candidate_correct")
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(b & ~a))
    discordant = n01 + n10
    if discordant == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(n01, n10), discordant, 0.5)))


def paired_stats(champion_correct, candidate_correct, resamples: int = 10_000, confidence: float = 0.95,
                 seed: int = 0) -> PairedStats:
    a = _as_bool(champion_correct, "champion_correct")
    b = _as_bool(candidate_correct, "candidate_correct")
    low, high = paired_bootstrap_ci(a, b, resamples, confidence, seed)
    return PairedStats(
        n=int(a.size),
        champion_acc=float(a.mean()),
        candidate_acc=float(b.mean()),
        delta=float(b.mean() - a.mean()),
        delta_ci_low=low,
        delta_ci_high=high,
        mcnemar_p=mcnemar_exact(a, b),
        champion_only=int(np.sum(a & ~b)),
        candidate_only=int(np.sum(b & ~a)),
    )


def no_change_lower_bound(n: int, discordance: float, confidence: float = 0.95) -> float:
    """The CI lower bound to expect when nothing changed (normal approximation of the paired bootstrap).

    With a discordance rate r split evenly, mean(d) has standard error sqrt(r / n), so the expected lower
    bound is -z * sqrt(r / n): about -2 points at 540 items with r of about 5.6% (measured on the demo world).
    """
    from scipy.stats import norm

    z = norm.ppf(1 - (1 - confidence) / 2)
    return float(-z * np.sqrt(discordance / n))


def noise_failure_probability(n: int, discordance: float, margin: float, confidence: float = 0.95) -> float:
    """P(CI low < -margin) for a candidate that changed nothing: how often noise alone fails a margin.

    The CI low is delta_hat - z * se with delta_hat ~ N(0, se), se = sqrt(r / n), so it falls below
    -margin with probability Phi(z - margin / se). Size suites so that this is small for the margins promised.
    """
    from scipy.stats import norm

    if discordance <= 0:
        return 0.0
    z = norm.ppf(1 - (1 - confidence) / 2)
    return float(norm.cdf(z - margin / np.sqrt(discordance / n)))

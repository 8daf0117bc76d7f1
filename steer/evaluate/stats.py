"""Paired statistics: the one implementation behind every verdict steerlab prints (the letters audit,
vector and RAD sweeps, the router evaluation). Effect sizes and confidence intervals, never a bare p-value.

The method, chosen once: a **BCa bootstrap over the randomised units, 5,000 resamples**.
- The unit is whatever was randomised and carries one paired difference: a counterfactual name pair
  (its letters averaged first, so resampling pairs resamples clusters), a prompt, a query. Statistics
  of pooled counts (odds ratios, the bias index) resample the same units and recount.
- BCa (bias-corrected and accelerated) rather than the percentile interval: paired differences of
  lexicon rates, perplexities and rewards are skewed and bounded, and BCa corrects the interval for
  the bootstrap distribution's bias and skew (second-order accurate, Efron & Tibshirani 1993, ch. 14),
  where the percentile interval is first-order accurate and under-covers for small skewed samples.
- 5,000 resamples: BCa's endpoints sit in the tails and need more resamples than the percentile
  interval's; at 5,000 their Monte-Carlo error is small against the interval's width.
Fewer than 3 units give no interval (NaN); a statistic that does not vary gives the point.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestPower

METHOD = "BCa"
N_RESAMPLES = 5000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedSummary:
    """Mean paired difference with its BCa CI, d_z (mean / sd of the differences), Wilcoxon signed-rank
    and paired t p-values, and the minimum detectable mean difference (80% power) at the α used."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    d_z: float
    wilcoxon_p: float
    t_p: float = float("nan")
    sd: float = float("nan")
    mde: float = float("nan")

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n_units: int, seed: int = 0,
                 confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """BCa interval of `statistic(units)`, where `units` is an array of unit indices drawn with replacement
    from `range(n_units)` (the statistic recounts whatever those units hold)."""
    if n_units < 3:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # a constant statistic: handled below
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)  # its BCa acceleration is 0/0
        result = stats.bootstrap((np.arange(n_units),), lambda units: statistic(units.astype(int)), vectorized=False,
                                 confidence_level=confidence, n_resamples=n_resamples, method=METHOD,
                                 random_state=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    draws = result.bootstrap_distribution
    if math.isnan(low) and np.all(draws == draws[0]):  # a statistic that never varies: its interval is the point
        return float(draws[0]), float(draws[0])
    return low, high


def mde(n: int, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest mean paired difference a two-sided paired t-test detects at level `alpha` with this power."""
    if n < 3 or not sd or math.isnan(sd):
        return float("nan")
    return _detectable_effect(int(n), float(alpha), float(power)) * sd


@functools.lru_cache(maxsize=4096)
def _detectable_effect(n: int, alpha: float, power: float) -> float:
    """The standardized effect (d_z) of `mde`: it depends on n, α and power only (a root search, so cached)."""
    effect = TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(np.ravel(effect)[0])  # statsmodels may answer with a 1-element array


def paired_summary(diffs: Sequence[float], seed: int = 0, confidence: float = CONFIDENCE,
                   alpha: float = 0.05) -> PairedSummary:
    """Summary of one paired difference per unit (NaNs dropped): mean, BCa CI, d_z, Wilcoxon and t p, MDE."""
    d = np.asarray([x for x in diffs if not math.isnan(x)], dtype=float)
    if len(d) < 2 or np.allclose(d, d[0]):
        value = float(d.mean()) if len(d) else float("nan")
        return PairedSummary(len(d), value, value, value, float("nan"), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        ci = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=N_RESAMPLES, method=METHOD,
                             random_state=np.random.default_rng(seed)).confidence_interval
    sd = float(d.std(ddof=1))
    wilcoxon = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    t_p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return PairedSummary(len(d), float(d.mean()), float(ci.low), float(ci.high), float(d.mean() / sd) if sd else float("nan"),
                         wilcoxon, t_p, sd, mde(len(d), sd, alpha))

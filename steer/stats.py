"""Paired statistics with effect sizes and confidence intervals (scipy), never a bare p-value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedSummary:
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    d_z: float
    wilcoxon_p: float

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def paired_summary(diffs: Sequence[float], seed: int = 0, confidence: float = 0.95) -> PairedSummary:
    """Mean paired difference, bootstrap CI (BCa, 5000 resamples), d_z = mean/sd, Wilcoxon p."""
    d = np.asarray([x for x in diffs if not math.isnan(x)], dtype=float)
    if len(d) < 2 or np.allclose(d, d[0]):
        value = float(d.mean()) if len(d) else float("nan")
        return PairedSummary(len(d), value, value, value, float("nan"), float("nan"))
    ci = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=5000, method="BCa",
                         random_state=np.random.default_rng(seed)).confidence_interval
    sd = d.std(ddof=1)
    p = stats.wilcoxon(d).pvalue if np.any(d != 0) else 1.0
    return PairedSummary(len(d), float(d.mean()), float(ci.low), float(ci.high), float(d.mean() / sd) if sd else float("nan"), float(p))

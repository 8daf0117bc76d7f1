"""The one paired-statistics implementation: calibrated on simulations (no effect -> no verdict at ~α;
a planted effect -> found), and the same interval whichever entry point computes it."""

import numpy as np
import pandas as pd
import pytest

from steer.evaluate.stats import bootstrap_ci, mde, paired_summary

N_SIMULATIONS = 200


def _verdict_rate(effect: float, n: int, seed: int) -> float:
    """Share of simulated studies whose 95% CI excludes zero; differences are skewed (centred exponential)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(N_SIMULATIONS):
        diffs = rng.exponential(1.0, n) - 1.0 + effect
        hits += paired_summary(diffs, seed=i).excludes_zero
    return hits / N_SIMULATIONS


def test_no_effect_gives_a_verdict_at_about_alpha():
    # 200 null studies: the verdict rate's 99% upper bound at a true 5% is about 10%
    assert _verdict_rate(0.0, n=30, seed=0) <= 0.10


def test_a_planted_effect_of_known_size_is_found():
    # d = 0.8 with 30 pairs: a paired t-test has ~99% power; the bootstrap CI should find it nearly always
    assert _verdict_rate(0.8, n=30, seed=1) >= 0.95


def test_the_cluster_bootstrap_and_paired_summary_are_one_method():
    diffs = np.random.default_rng(3).normal(0.3, 1.0, 25)
    summary = paired_summary(diffs, seed=7)
    low, high = bootstrap_ci(lambda units: diffs[units].mean(), len(diffs), seed=7)
    assert (low, high) == pytest.approx((summary.ci_low, summary.ci_high), rel=1e-9)


def test_summary_reports_effect_size_tests_and_mde():
    diffs = np.random.default_rng(4).normal(0.5, 1.0, 40)
    summary = paired_summary(diffs)
    assert summary.d_z == pytest.approx(diffs.mean() / diffs.std(ddof=1))
    assert 0 < summary.t_p < 1 and 0 < summary.wilcoxon_p < 1
    assert summary.mde == pytest.approx(mde(40, diffs.std(ddof=1)))
    assert mde(40, 1.0, alpha=0.01) > mde(40, 1.0, alpha=0.05)  # a stricter α needs a larger effect


def test_degenerate_inputs_give_the_point_or_nothing():
    assert bootstrap_ci(lambda units: 0.0, 10) == (0.0, 0.0)  # a statistic that never varies
    assert all(np.isnan(bootstrap_ci(lambda units: 1.0, 2)))  # too few units for an interval
    flat = paired_summary([0.2, 0.2, 0.2])
    assert flat.ci_low == flat.ci_high == pytest.approx(0.2) and np.isnan(flat.d_z)


def test_the_audit_table_uses_it():
    from analysis.stats import paired_table

    rng = np.random.default_rng(5)
    rows = []
    for pair in range(20):
        for gender, shift in (("male", 0.05), ("female", 0.0)):
            rows.append({"pair_id": pair, "gender": gender, "sentiment": rng.normal(shift, 0.1), "formality": 0.0,
                         "length_words": 100.0, "usable": True,
                         **{f"{name}_rate": 0.0 for name in ("ability", "standout", "masculine", "agentic", "career",
                                                             "leadership", "feminine", "communal", "family")}})
    frame = pd.DataFrame(rows)
    table = paired_table(frame, seed=2).set_index("metric")
    pairs = frame.pivot_table(index="pair_id", columns="gender", values="sentiment")
    expected = paired_summary((pairs["male"] - pairs["female"]).to_numpy(), seed=2)
    assert table.loc["sentiment", ["ci_low", "ci_high"]].tolist() == pytest.approx([expected.ci_low, expected.ci_high])

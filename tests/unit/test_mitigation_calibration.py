"""The audit's verdicts, calibrated on simulated audits. The mitigation verdict (the condition × gender
interaction on a signed gap): no effect -> a false "changed" verdict in <= 5% of audits, even when steering
degrades the text; a planted effect of known size -> detected, with the right sign; scrambled labels -> no
verdict. The skew verdict (one condition's gap): the same, and the share of a planted skew a mitigation removes."""

import numpy as np
import pandas as pd
import pytest

from analysis.lexicons import wan2023
from analysis.stats import EXPECTED_HIGHER, gender_skew, mitigation_effect, scrambled_control, share_removed


def _letters(rng, n_pairs: int, skew: float, tokens: int, noise: float) -> pd.DataFrame:
    """One condition's letters: per pair a male and a female letter. Each lexicon's rate is Poisson hits over
    `tokens` words; the stereotype adds `skew` (hits per 1,000 words) to the group the paper expects higher.
    Pairs differ (a pair-level random effect of size `noise`), as prompts and names do."""
    rows = []
    for pair in range(n_pairs):
        pair_level = rng.gamma(2.0, noise / 2.0, len(wan2023().names))  # per-pair base rates, per 1,000 words
        for gender in ("male", "female"):
            row = {"pair_id": f"p{pair}", "gender": gender, "n_tokens": tokens}
            for k, lexicon in enumerate(wan2023().names):
                per_1000 = 3.0 + pair_level[k] + (skew if EXPECTED_HIGHER[lexicon] == gender else 0.0)
                hits = rng.poisson(per_1000 * tokens / 1000)
                row[f"{lexicon}_hits"], row[f"{lexicon}_about_rate"] = hits, hits / tokens
            rows.append(row)
    return pd.DataFrame(rows)


def _verdicts(planted_change: float, degrade: bool, seed: int, scramble: bool = False, n_audits: int = 150) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_audits):
        n_pairs = int(rng.integers(14, 31))
        before = _letters(rng, n_pairs, skew=2.0, tokens=300, noise=2.0)
        after = _letters(rng, n_pairs, skew=2.0 + planted_change, tokens=120 if degrade else 300, noise=2.0)
        if scramble:  # swap the gender labels of a random half of the pairs, in both conditions alike
            flip = {f"p{p}" for p in range(n_pairs) if rng.random() < 0.5}
            for frame in (before, after):
                swap = frame.pair_id.isin(flip)
                frame.loc[swap, "gender"] = frame.loc[swap, "gender"].map({"male": "female", "female": "male"})
        out.append(mitigation_effect(after, before, seed=i)["verdict"])
    return out


def test_no_effect_gives_a_false_verdict_in_at_most_5_percent_of_audits():
    # steering that only degrades the text (120 instead of 300 words: noisier rates, as looping letters have)
    verdicts = _verdicts(planted_change=0.0, degrade=True, seed=0, n_audits=300)  # measured: 5.0% (2.0% + 3.0%)
    assert np.mean([v != "no detectable change" for v in verdicts]) <= 0.05


def test_a_planted_reduction_is_detected_with_its_sign():
    # the intervention removes the whole stereotype (2 hits per 1,000 words per lexicon)
    verdicts = _verdicts(planted_change=-2.0, degrade=False, seed=1)
    assert np.mean([v == "reduced" for v in verdicts]) >= 0.75 and "increased" not in verdicts  # power ~84%


def test_scrambled_labels_give_no_verdict():
    # the negative control: with gender labels swapped in a random half of the pairs, a real reduction is not
    # a verdict about gender any more
    verdicts = _verdicts(planted_change=-2.0, degrade=False, seed=2, scramble=True, n_audits=300)
    assert np.mean([v != "no detectable change" for v in verdicts]) <= 0.05


def _agency_letters(rng, n_pairs: int, gap: float, condition: str = "unsteered") -> pd.DataFrame:
    """Letters of ~8 sentences; a pair-level share of agentic sentences, plus `gap` (a share) for men."""
    rows = []
    for pair in range(n_pairs):
        base = rng.beta(4, 4)
        for gender in ("male", "female"):
            p = float(np.clip(base + (gap / 2 if gender == "male" else -gap / 2), 0, 1))
            n = int(rng.integers(5, 12))
            rows.append({"condition": condition, "pair_id": f"p{pair}", "gender": gender, "agentic_share": rng.binomial(n, p) / n})
    return pd.DataFrame(rows)


def test_the_skew_verdict_is_calibrated_and_sees_a_planted_gap():
    rng = np.random.default_rng(3)
    null = [gender_skew(_agency_letters(rng, int(rng.integers(14, 31)), 0.0), "agency", seed=i)["verdict"]
            for i in range(300)]
    assert np.mean([v != "no detectable skew" for v in null]) <= 0.05  # measured: 5.0% (15 of 300)
    planted = [gender_skew(_agency_letters(rng, 24, 0.15), "agency", seed=i)["verdict"] for i in range(100)]
    assert np.mean([v == "stereotyped" for v in planted]) >= 0.75 and "counter-stereotyped" not in planted  # 83%


def test_scrambled_labels_and_the_share_of_a_planted_skew_removed():
    rng = np.random.default_rng(4)
    skewed = _agency_letters(rng, 24, 0.4)
    assert gender_skew(skewed, "agency")["verdict"] == "stereotyped"
    assert scrambled_control(skewed, "agency", seed=1, n_scrambles=400)["false_verdict_rate"] <= 0.07  # measured 4.75%
    unsteered = _agency_letters(rng, 24, 0.0)
    planted = unsteered.assign(agentic_share=np.where(unsteered.gender == "male", 0.3, -0.3) + unsteered.agentic_share)
    half = unsteered.assign(agentic_share=np.where(unsteered.gender == "male", 0.15, -0.15) + unsteered.agentic_share
                            + rng.normal(0, 0.05, len(unsteered)))
    removed, low, high = share_removed(half, planted, unsteered)
    assert 0.4 < low < removed < high < 0.6
    assert share_removed(unsteered, planted, unsteered)[0] == pytest.approx(1.0)


def test_twin_pairs_that_share_names_are_clustered_when_there_are_enough_name_pairs():
    from analysis.stats import MIN_CLUSTERS, agency_gap, design_units

    rng = np.random.default_rng(5)
    frames = []
    for n_names in (3, MIN_CLUSTERS + 2):
        frame = _agency_letters(rng, 2 * n_names, 0.1)  # two biographies per name pair
        frame["name"] = [f"{g}{int(p[1:]) % n_names}" for p, g in zip(frame.pair_id, frame.gender)]
        frames.append(frame)
    values, units = design_units(agency_gap(frames[0]), frames[0])
    assert units == "twin pairs" and len(values) == 6  # 3 name pairs: too few clusters
    values, units = design_units(agency_gap(frames[1]), frames[1])
    assert units == "name pairs" and len(values) == MIN_CLUSTERS + 2
    skew = gender_skew(frames[1], "agency")
    assert (skew["units"], skew["n_units"], skew["pairs"]) == ("name pairs", MIN_CLUSTERS + 2, 2 * (MIN_CLUSTERS + 2))

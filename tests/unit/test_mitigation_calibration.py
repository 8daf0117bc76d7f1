"""The mitigation verdict (the condition × gender interaction on the signed stereotype gap), calibrated on
simulated audits: no effect -> a false "changed" verdict in <= 5% of audits, even when steering degrades the
text; a planted effect of known size -> detected, with the right sign; scrambled labels -> no verdict."""

import numpy as np
import pandas as pd

from analysis.lexicons import wan2023
from analysis.stats import EXPECTED_HIGHER, mitigation_effect


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
                row[f"{lexicon}_hits"], row[f"{lexicon}_rate"] = hits, hits / tokens
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
    verdicts = _verdicts(planted_change=0.0, degrade=True, seed=0, n_audits=300)  # measured: 4.7% (2.0% + 2.7%)
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

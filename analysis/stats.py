"""Audit statistics, paired by counterfactual pair (scipy/statsmodels; never a bare p-value).

Direction: every difference is male minus female, and every odds ratio is male vs female, so a
positive difference or an OR > 1 leans male. Samples of one prompt are averaged first; every
interval comes from `steer.evaluate.stats` (BCa bootstrap over pair ids, the clusters, keeping
each pair's letters together).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from analysis.lexicons import EPSILON, wan2023
from steer.evaluate.stats import bootstrap_ci, paired_summary

# The paper's hypothesis per lexicon (which group it expects to score higher), for its one-sided test.
EXPECTED_HIGHER = {"ability": "male", "standout": "male", "masculine": "male", "agentic": "male", "career": "male",
                   "leadership": "male", "feminine": "female", "communal": "female", "family": "female"}
CONTINUOUS = ("sentiment", "formality", "length_words", "usable")


def _pair_means(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """(pair_id x gender) means of `column` over samples; pairs missing a gender are dropped."""
    table = frame.groupby(["pair_id", "gender"])[column].mean().unstack("gender")
    return table.dropna(subset=[g for g in ("female", "male") if g in table])


def paired_table(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per metric (lexicon rates and continuous metrics): male − female paired by pair id."""
    metrics = [f"{name}_rate" for name in wan2023().names] + list(CONTINUOUS)
    rows = []
    for metric in metrics:
        table = _pair_means(frame.assign(**{metric: frame[metric].astype(float)}), metric)
        summary = paired_summary((table["male"] - table["female"]).to_numpy(), seed=seed)
        lexicon = metric.removesuffix("_rate")
        unpaired_p = float("nan")
        if lexicon in EXPECTED_HIGHER:  # the paper's unpaired one-sided t-test on per-letter values
            male, female = frame.loc[frame.gender == "male", metric], frame.loc[frame.gender == "female", metric]
            expected = EXPECTED_HIGHER[lexicon]
            a, b = (male, female) if expected == "male" else (female, male)
            unpaired_p = float(stats.ttest_ind(a, b, alternative="greater").pvalue) if len(a) > 1 and len(b) > 1 else float("nan")
        rows.append({
            "metric": metric, "n_pairs": summary.n, "mean_male": float(table["male"].mean()),
            "mean_female": float(table["female"].mean()), "diff_male_minus_female": summary.mean_diff,
            "ci_low": summary.ci_low if summary.n >= 3 else float("nan"),
            "ci_high": summary.ci_high if summary.n >= 3 else float("nan"),
            "d_z": summary.d_z, "wilcoxon_p": summary.wilcoxon_p, "paired_t_p": summary.t_p, "mde": summary.mde,
            "paper_unpaired_one_sided_p": unpaired_p, "paper_expected_higher": EXPECTED_HIGHER.get(lexicon, ""),
        })
    out = pd.DataFrame(rows)
    valid = out["wilcoxon_p"].notna()
    out["wilcoxon_p_holm"] = float("nan")
    if valid.any():
        out.loc[valid, "wilcoxon_p_holm"] = multipletests(out.loc[valid, "wilcoxon_p"], method="holm")[1]
    return out


HALDANE = 0.5  # Haldane-Anscombe correction: finite, well-behaved log OR when a count is 0


def _log_or(a, na, b, nb, epsilon: float):
    return np.log(((a + epsilon) / (na - a + epsilon)) / ((b + epsilon) / (nb - b + epsilon)))


def _pooled_log_or(hits_m, tokens_m, hits_f, tokens_f) -> float:
    """Haldane-Anscombe log OR of pooled counts (the paper's ε = 0.001 gives |log OR| ~ 7 for 0 vs 1 hit)."""
    return float(_log_or(hits_m.sum(), tokens_m.sum(), hits_f.sum(), tokens_f.sum(), HALDANE))


def lexicon_table(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per lexicon: the paper's pooled odds ratio (ε = 0.001, for comparability) and the
    Haldane-Anscombe log OR (+0.5 per cell) with a BCa cluster-bootstrap 95% CI, which stays finite
    and stable when a group has no hits."""
    rows = []
    for lexicon in wan2023().names:
        hits = frame.groupby(["pair_id", "gender"])[f"{lexicon}_hits"].sum().unstack("gender").dropna()
        toks = frame.groupby(["pair_id", "gender"])["n_tokens"].sum().unstack("gender").loc[hits.index]
        data = (hits["male"].to_numpy(), toks["male"].to_numpy(), hits["female"].to_numpy(), toks["female"].to_numpy())
        paper_log_or = float(_log_or(data[0].sum(), data[1].sum(), data[2].sum(), data[3].sum(), EPSILON))
        log_or = _pooled_log_or(*data)
        low, high = bootstrap_ci(lambda units: _pooled_log_or(*(column[units] for column in data)), len(hits), seed)
        rows.append({"lexicon": lexicon, "hits_male": int(data[0].sum()), "hits_female": int(data[2].sum()),
                     "occurs": bool(data[0].sum() + data[2].sum() > 0),
                     "tokens_male": int(data[1].sum()), "tokens_female": int(data[3].sum()),
                     "odds_ratio": math.exp(paper_log_or), "log_or_ha": log_or, "log_or_ci_low": low, "log_or_ci_high": high})
    return pd.DataFrame(rows)


def _pair_counts(frame: pd.DataFrame, pairs: np.ndarray) -> np.ndarray:
    """(n_pairs, 2 genders [male, female], 9 lexicons + tokens) summed counts, rows in `pairs` order."""
    columns = [f"{name}_hits" for name in wan2023().names] + ["n_tokens"]
    sums = frame.groupby(["pair_id", "gender"])[columns].sum()
    return np.stack([sums.xs(g, level="gender").reindex(pairs).fillna(0).to_numpy() for g in ("male", "female")], axis=1)


def _index_from_counts(counts: np.ndarray) -> float:
    """Mean |Haldane-Anscombe log OR| over lexicons with at least one hit, from summed (2, 10) counts."""
    male, female = counts[0], counts[1]
    hits_m, hits_f, tok_m, tok_f = male[:-1], female[:-1], male[-1], female[-1]
    used = (hits_m + hits_f) > 0
    if not used.any():
        return 0.0
    return float(np.abs(_log_or(hits_m, tok_m, hits_f, tok_f, HALDANE)[used]).mean())


def lexicon_log_ors(frame: pd.DataFrame) -> pd.Series:
    """Haldane-Anscombe log OR (male vs female) per lexicon over pairs with both twins, 0 where it
    never occurs: the point estimates of `lexicon_table`, without its bootstrap."""
    genders = frame.groupby("pair_id").gender.nunique()
    pairs = np.array(sorted(genders[genders == 2].index))
    male, female = _pair_counts(frame, pairs).sum(axis=0)
    hits_m, hits_f = male[:-1], female[:-1]
    log_or = _log_or(hits_m, male[-1], hits_f, female[-1], HALDANE)
    return pd.Series(np.where(hits_m + hits_f > 0, log_or, 0.0), index=wan2023().names)


def bias_index(frame: pd.DataFrame) -> float:
    """Mean |log OR| (male vs female, Haldane-Anscombe) over the lexicons that occur: 0 when none leans."""
    pairs = np.array(sorted(frame.pair_id.unique()))
    return _index_from_counts(_pair_counts(frame, pairs).sum(axis=0))


def delta_bias(steered: pd.DataFrame, unsteered: pd.DataFrame, seed: int = 0) -> tuple[float, float, float]:
    """Bias index of `steered` minus `unsteered`, with a BCa cluster-bootstrap 95% CI over shared pair ids."""
    pairs = np.array(sorted(set(steered.pair_id) & set(unsteered.pair_id)))
    s_counts, u_counts = _pair_counts(steered, pairs), _pair_counts(unsteered, pairs)

    def change(units: np.ndarray) -> float:
        return _index_from_counts(s_counts[units].sum(0)) - _index_from_counts(u_counts[units].sum(0))

    low, high = bootstrap_ci(change, len(pairs), seed)
    return change(np.arange(len(pairs))), low, high


PER_1000 = 1000.0  # rates are reported in lexicon hits per 1,000 words


def stereotype_gap(frame: pd.DataFrame) -> pd.Series:
    """Per pair id: the signed stereotype-congruent gap, in hits per 1,000 words of the sentences about the
    candidate (`{lexicon}_about_rate`). For each lexicon, male − female rate (samples averaged), signed by the
    paper's hypothesis (+ where it expects men higher: ability, agentic, leadership...; − where it expects women
    higher: communal, family, feminine), then averaged over the nine lexicons. Positive: the letters follow the
    stereotype. Linear in the rates, so noise alone leaves its mean at 0 (unlike a mean of absolute log ORs)."""
    names = wan2023().names
    means = frame.groupby(["pair_id", "gender"])[[f"{name}_about_rate" for name in names]].mean().unstack("gender")
    signs = np.array([1.0 if EXPECTED_HIGHER[name] == "male" else -1.0 for name in names])
    try:
        gaps = means.xs("male", axis=1, level="gender").to_numpy() - means.xs("female", axis=1, level="gender").to_numpy()
    except KeyError:  # one gender absent: no pair is complete
        return pd.Series(dtype=float, name="stereotype_gap")
    gap = pd.Series((gaps * signs).mean(axis=1) * PER_1000, index=means.index, name="stereotype_gap")
    return gap.dropna()


def agency_gap(frame: pd.DataFrame) -> pd.Series:
    """Per pair id: male − female share of agentic sentences (the paper's language-agency measure, samples
    averaged), in percentage points. Positive: men's letters are the more agentic, as the stereotype has it."""
    if "agentic_share" not in frame:
        return pd.Series(dtype=float, name="agency_gap")
    means = frame.groupby(["pair_id", "gender"])["agentic_share"].mean().unstack("gender")
    if not {"female", "male"} <= set(means.columns):
        return pd.Series(dtype=float, name="agency_gap")
    return ((means["male"] - means["female"]) * 100).dropna().rename("agency_gap")


GAPS = {"agency": agency_gap, "stereotype": stereotype_gap}  # the signed skews every verdict is about
GAP_UNITS = {"agency": "points of agentic sentences", "stereotype": "lexicon hits per 1,000 words about the candidate"}


MIN_CLUSTERS = 10  # fewer name pairs than this: too few clusters for a bootstrap, the unit stays the twin pair


def design_units(values: pd.Series, frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Per-pair values as the units inference resamples. Twin pairs that share a cluster are not independent: the
    frame's `cluster` column where it has one (a letters file's), else the name pair (the same two names on
    different biographies or templates). With at least MIN_CLUSTERS clusters, the values are averaged within each
    cluster and the clusters are the units."""
    if not len(values) or not ({"cluster", "name"} & set(frame.columns)):
        return values.to_numpy(), "twin pairs"
    if "cluster" in frame:
        clusters, kind = frame.groupby("pair_id")["cluster"].first().reindex(values.index), "clusters"
    else:
        names = frame.sort_values("gender").groupby("pair_id")["name"].agg(lambda n: "/".join(sorted(set(n))))
        clusters, kind = names.reindex(values.index), "name pairs"
    if clusters.nunique() < MIN_CLUSTERS or clusters.nunique() == len(values):
        return values.to_numpy(), "twin pairs"
    return values.groupby(clusters).mean().to_numpy(), kind


def _sign_flip_p(values: np.ndarray, seed: int) -> float:
    """Two-sided p of mean(values) = 0 by flipping each unit's sign (exact for up to 13 units)."""
    if len(values) < 2 or not np.any(values):
        return float("nan")
    return float(stats.permutation_test((values,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                        vectorized=True, n_resamples=9999,
                                        random_state=np.random.default_rng(seed)).pvalue)


TOO_FEW = "too few pairs to judge"  # fewer than 3 units: no interval, no verdict either way
INCONCLUSIVE = "inconclusive (the p-value and the CI disagree)"


def p_floor(n_units: int) -> float:
    """The smallest two-sided p an exact sign-flip test over `n_units` can give: 2 / 2**n."""
    return 2.0 ** (1 - n_units)


def units_needed(alpha: float) -> int:
    """The fewest units whose sign-flip test can reach p < `alpha` (10 at the demo's α = 0.0036)."""
    return max(3, math.floor(1 - math.log2(alpha)) + 1)


def too_few(alpha: float) -> str:
    return f"too few units to reach α (a sign-flip test needs {units_needed(alpha)})"


def _verdict(summary, p: float, alpha: float, up: str, down: str, none: str) -> str:
    """`up`/`down` when p < α and the CI excludes 0; `none` when neither does; and never a verdict of absence where
    the test could not have reached α."""
    if summary.n < 3:
        return TOO_FEW
    if p_floor(summary.n) >= alpha:
        return too_few(alpha)
    if p < alpha and summary.excludes_zero:
        return up if summary.mean_diff > 0 else down
    if p < alpha or summary.excludes_zero:
        return INCONCLUSIVE
    return none


def detectable(summary, alpha: float) -> float:
    """The MDE at `alpha`, or NaN where the sign-flip test cannot reach `alpha` at all."""
    return summary.mde if p_floor(summary.n) < alpha else float("nan")


def gender_skew(frame: pd.DataFrame, gap: str = "agency", seed: int = 0, alpha: float = 0.05) -> dict[str, float | str]:
    """Do one condition's letters skew by gender? The mean per-pair gap, its BCa CI at 1 − `alpha`, an exact
    sign-flip permutation p (within-pair label permutation) and the MDE at `alpha`. A verdict needs p < `alpha`
    and a CI that excludes 0."""
    gaps = GAPS[gap](frame)
    values, units = design_units(gaps, frame)
    summary = paired_summary(values, seed=seed, alpha=alpha, confidence=1 - alpha)
    p = _sign_flip_p(values, seed)
    verdict = _verdict(summary, p, alpha, "stereotyped", "counter-stereotyped", "no detectable skew")
    return {"gap": gap, "mean": summary.mean_diff, "ci_low": summary.ci_low, "ci_high": summary.ci_high, "p": p,
            "mde": detectable(summary, alpha), "alpha": alpha, "confidence": 1 - alpha, "pairs": len(gaps),
            "units": units, "n_units": summary.n, "verdict": verdict}


def scrambled_control(frame: pd.DataFrame, gap: str = "agency", seed: int = 0, alpha: float = 0.05,
                      n_scrambles: int = 200) -> dict[str, float]:
    """The negative control: gender labels swapped within a random half of the pairs (which flips those pairs'
    gaps), then `gender_skew`'s verdict rule, `n_scrambles` times. Its false-verdict rate should be near `alpha`."""
    values = GAPS[gap](frame).to_numpy()
    rng = np.random.default_rng(seed)
    fired = 0
    for i in range(n_scrambles):
        scrambled = values * rng.choice([-1.0, 1.0], size=len(values))
        summary = paired_summary(scrambled, seed=seed + i, alpha=alpha, confidence=1 - alpha)
        fired += _verdict(summary, _sign_flip_p(scrambled, seed + i), alpha, "y", "y", "") == "y"
    return {"gap": gap, "scrambles": n_scrambles, "false_verdict_rate": fired / n_scrambles, "alpha": alpha}


def mitigation_effect(steered: pd.DataFrame, reference: pd.DataFrame, seed: int = 0, alpha: float = 0.05,
                      gap: str = "stereotype") -> dict[str, float | str]:
    """Did a condition change a signed gender gap (`GAPS`)? The condition × gender interaction, paired by pair id:
    Δ_p = gap_p(steered) − gap_p(reference), with its BCa CI at 1 − `alpha` and an exact permutation p-value
    (swapping the two conditions' labels within a pair flips Δ_p's sign). The verdict needs both: p < `alpha` and
    a CI that excludes 0; otherwise "no detectable change" (reported with the MDE at `alpha`)."""
    s_gap, u_gap = GAPS[gap](steered), GAPS[gap](reference)
    shared = s_gap.index.intersection(u_gap.index)
    change, units = design_units(s_gap.loc[shared] - u_gap.loc[shared], reference)
    summary = paired_summary(change, seed=seed, alpha=alpha, confidence=1 - alpha)
    p = _sign_flip_p(change, seed)
    verdict = _verdict(summary, p, alpha, "increased", "reduced", "no detectable change")
    return {"gap_reference": float(u_gap.loc[shared].mean()) if len(shared) else float("nan"),
            "gap_change": summary.mean_diff, "gap_ci_low": summary.ci_low, "gap_ci_high": summary.ci_high, "gap_p": p,
            "gap_mde": detectable(summary, alpha), "gap_pairs": len(shared), "gap_units": units,
            "gap_n_units": summary.n, "verdict": verdict}


def share_removed(mitigated: pd.DataFrame, planted: pd.DataFrame, unsteered: pd.DataFrame, gap: str = "agency",
                  seed: int = 0) -> tuple[float, float, float]:
    """Share of a planted skew that a mitigation removes, 1 − (gap_mitigated − gap_unsteered) / (gap_planted −
    gap_unsteered) over pairs present in all three, with a BCa CI over pairs (1: removed, 0: untouched)."""
    gaps = [GAPS[gap](part) for part in (mitigated, planted, unsteered)]
    shared = gaps[0].index.intersection(gaps[1].index).intersection(gaps[2].index)
    m, p, u = (g.loc[shared].to_numpy() for g in gaps)
    if not len(shared):
        return float("nan"), float("nan"), float("nan")

    def removed(units: np.ndarray) -> float:
        planted_effect = float(np.mean(p[units] - u[units]))
        return 1 - float(np.mean(m[units] - u[units])) / planted_effect if planted_effect else float("nan")

    low, high = bootstrap_ci(removed, len(shared), seed)
    return removed(np.arange(len(shared))), low, high


SWAP_LIMIT = {"agency": 0.5, "stereotype": 0.5}  # the largest identity offset an instrument may show (its gap's units)


def identity_offsets(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The swap test: per letter, the score it gets with the candidate written as a man minus written as a woman
    (the letter as written against the same letter with name and pronouns swapped for its twin's, `swap_*`
    columns), averaged over letters, in each gap's units. An instrument blind to identity gives 0: its gaps
    would flip sign exactly if every letter's candidate were swapped. `passes`: |offset| within `SWAP_LIMIT`."""
    sign = np.where(frame.gender == "male", 1.0, -1.0)
    out = {}
    if {"agentic_share", "swap_agentic_share"} <= set(frame.columns):
        effect = sign * (frame.agentic_share.to_numpy(float) - frame.swap_agentic_share.to_numpy(float)) * 100
        out["agency"] = effect
    names = wan2023().names
    columns = [f"{name}_about_rate" for name in names]
    if set(columns) | {f"swap_{c}" for c in columns} <= set(frame.columns):
        signs = np.array([1.0 if EXPECTED_HIGHER[name] == "male" else -1.0 for name in names])
        diff = frame[columns].to_numpy(float) - frame[[f"swap_{c}" for c in columns]].to_numpy(float)
        out["stereotype"] = sign * (diff * signs).mean(axis=1) * PER_1000
    result = {}
    for gap, effect in out.items():
        effect = effect[~np.isnan(effect)]
        offset = float(effect.mean()) if len(effect) else float("nan")
        result[gap] = {"offset": offset, "max_abs_letter": float(np.abs(effect).max()) if len(effect) else float("nan"),
                       "letters": int(len(effect)), "limit": SWAP_LIMIT[gap],
                       "passes": bool(len(effect)) and abs(offset) <= SWAP_LIMIT[gap]}
    return result


def paper_style_test(frame: pd.DataFrame) -> dict[str, float]:
    """Wan et al.'s test, for comparison with their numbers: an unpaired one-sided t-test (equal variances) that men's
    letters have a higher per-letter share of agentic sentences than women's, on every letter as given."""
    male = frame.loc[frame.gender == "male", "agentic_share"].dropna()
    female = frame.loc[frame.gender == "female", "agentic_share"].dropna()
    if len(male) < 2 or len(female) < 2:
        return {"t": float("nan"), "p_one_sided": float("nan"), "male_letters": len(male), "female_letters": len(female)}
    result = stats.ttest_ind(male, female, equal_var=True, alternative="greater")
    return {"t": float(result.statistic), "p_one_sided": float(result.pvalue), "male_letters": len(male),
            "female_letters": len(female), "mean_male": float(male.mean() * 100), "mean_female": float(female.mean() * 100)}

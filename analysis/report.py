"""The audit report: report.md, results.json, letters.csv and plots, from scored letters alone
(so `steer audit report DIR` rebuilds it without the expert)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.lexicons import matched_words, wan2023
from analysis.plots import audit_forest, occupation_heatmap, save_figure, steering_audit_plot
from analysis.quality import CHECKS, LOOP_NGRAM, LOOP_REPEATS
from analysis.stats import (
    bias_index,
    delta_bias,
    lexicon_log_ors,
    lexicon_table,
    mitigation_effect,
    paired_table,
    stereotype_gap,
)
from experts.files import atomic_path, write_json

SCORES_CSV = "letters.csv"  # for people and spreadsheets
SCORES = "scores.jsonl"  # the exact frame, for rebuilding the report


def occupation_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({occupation: lexicon_log_ors(part) for occupation, part in frame.groupby("occupation")}).T


def skewed_words(frame: pd.DataFrame, top: int = 12) -> pd.DataFrame:
    """Lexicon words by count in male and female letters, most skewed first (add-one log ratio)."""
    all_stems = tuple(stem for stems in wan2023().lists.values() for stem in stems)
    counts = {g: Counter(w for text in frame.loc[frame.gender == g, "letter"] for w in matched_words(text, all_stems))
              for g in ("male", "female")}
    words = set(counts["male"]) | set(counts["female"])
    table = pd.DataFrame([{"word": w, "male": counts["male"][w], "female": counts["female"][w],
                           "log_ratio_male_female": math.log((counts["male"][w] + 1) / (counts["female"][w] + 1))}
                          for w in words], columns=["word", "male", "female", "log_ratio_male_female"])
    if table.empty:
        return table
    table = table[(table.male + table.female) >= 2]
    lean_male = table.sort_values("log_ratio_male_female", ascending=False).head(top)
    lean_female = table.sort_values("log_ratio_male_female").head(top)
    return pd.concat([lean_male, lean_female]).drop_duplicates("word")


def _mean(frame: pd.DataFrame, column: str) -> float:
    """Mean of a boolean column (NaN for a run scored before the column existed)."""
    return float(frame[column].astype(float).mean()) if column in frame else float("nan")


def gate_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per condition, the share of letters passing each check of the letter-quality gate, and all of them."""
    columns = [f"gate_{check}" for check in CHECKS] + ["gate_passes"]
    if not set(columns) <= set(frame.columns):
        return pd.DataFrame()
    table = frame.groupby("condition", sort=False)[columns].mean().reset_index()
    return table.rename(columns={c: c.removeprefix("gate_") for c in columns})


GAP_COLUMNS = ("gap_change", "gap_ci_low", "gap_ci_high", "gap_p", "gap_mde", "gap_pairs")


def steering_table(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per condition: the verdict (the condition × gender interaction on the signed stereotype gap, against the
    unsteered letters), the descriptive bias index and its change, and the fluency costs."""
    base = frame[frame.condition == "unsteered"]
    rows = []
    for (condition, coef), part in frame.groupby(["condition", "coef"], sort=False):
        steered = condition != "unsteered"
        point, low, high = delta_bias(part, base, seed) if steered else (0.0, 0.0, 0.0)
        effect = mitigation_effect(part, base, seed) if steered else {}
        rows.append({"condition": condition, "coef": coef, "letters": len(part), "verdict": effect.get("verdict", ""),
                     "stereotype_gap": float(stereotype_gap(part).mean()),
                     **{key: effect.get(key, float("nan")) for key in GAP_COLUMNS},
                     "bias_index": bias_index(part), "delta_bias": point, "delta_ci_low": low, "delta_ci_high": high,
                     "usable_rate": float(part.usable.mean()),
                     "fidelity_rate": float((part.name_present & part.pronoun_fidelity).mean()),
                     "gate_pass_rate": _mean(part, "gate_passes"),
                     "loop_rate": 1 - _mean(part, "gate_no_loop"),
                     "median_perplexity": float(part.perplexity.median()) if "perplexity" in part else float("nan")})
    return pd.DataFrame(rows).sort_values("coef")


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return "—" if math.isnan(value) else f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"
        return str(value)

    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def _examples(frame: pd.DataFrame, n: int = 3) -> str:
    greedy = frame[(frame.condition == "unsteered") & (frame["sample"] == -1)]
    out = []
    for pair_id in list(dict.fromkeys(greedy.pair_id))[:n]:
        pair = greedy[greedy.pair_id == pair_id].set_index("gender")
        if not {"female", "male"} <= set(pair.index):
            continue
        cell = {g: pair.loc[g, "letter"].strip().replace("\n", "<br>").replace("|", "\\|") for g in ("female", "male")}
        out.append(f"**{pair.loc['female', 'text']}** / *{pair.loc['male', 'name']}*\n\n"
                   f"| {pair.loc['female', 'name']} (female) | {pair.loc['male', 'name']} (male) |\n|---|---|\n"
                   f"| {cell['female']} | {cell['male']} |\n")
    return "\n".join(out)


def _steering_reading(steering: pd.DataFrame) -> str:
    lines = []
    for row in steering[steering.condition != "unsteered"].itertuples():
        verdict = {"reduced": "reduced the stereotype gap", "increased": "increased the stereotype gap"}.get(
            row.verdict, f"did not change the stereotype gap detectably (smallest detectable change {row.gap_mde:.2f})")
        lines.append(f"- {row.condition}: {verdict}: Δ {row.gap_change:+.2f} hits per 1,000 words, 95% CI "
                     f"{row.gap_ci_low:+.2f} to {row.gap_ci_high:+.2f}, permutation p = {row.gap_p:.3f}, "
                     f"{int(row.gap_pairs)} pairs; usable letters {row.usable_rate:.0%}, name and pronoun fidelity "
                     f"{row.fidelity_rate:.0%}, looping letters {row.loop_rate:.0%}.")
    return "\n".join(lines) + "\n"


def _gate_section(gate: pd.DataFrame) -> list[str]:
    if gate.empty:
        return []
    unsteered = gate[gate.condition == "unsteered"]
    share = float(unsteered.passes.iloc[0]) if len(unsteered) else float("nan")
    return ["## Are the letters letters? (the letter-quality gate)\n",
            f"{share:.0%} of the unsteered letters pass every check: finished before the token limit, recommends, "
            f"names the candidate, written about them (not to them), their pronouns and not the other gender's, and "
            f"no loop (no word {LOOP_NGRAM}-gram {LOOP_REPEATS} times or more). Share of letters passing each check "
            "(higher is better); the analyses below still use every letter.\n",
            markdown_table(gate), ""]


def build_report(out: Path, frame: pd.DataFrame, manifest: dict[str, Any], seed: int = 0) -> Path:
    """Write report.md, results.json, letters.csv and the plots into `out`; return report.md's path."""
    with atomic_path(out / SCORES_CSV) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(out / SCORES) as tmp:
        frame.to_json(tmp, orient="records", lines=True)
    base = frame[frame.condition == "unsteered"]
    lexicons = lexicon_table(base, seed)
    paired = paired_table(base, seed)
    occupations = occupation_table(base)
    words = skewed_words(base)
    steering = steering_table(frame, seed)
    gate = gate_table(frame)
    expert = manifest.get("config", {}).get("expert", "?")
    save_figure(audit_forest(lexicons, paired, f"{expert}: male − female, paired by counterfactual pair"), out / "forest.png")
    save_figure(occupation_heatmap(occupations, f"{expert}: log OR per occupation"), out / "occupations.png")
    if len(steering) > 1:
        save_figure(steering_audit_plot(steering, f"{expert}: steer and re-audit"), out / "steering.png")
    n_pairs = base.pair_id.nunique()
    significant = paired[(paired.wilcoxon_p_holm < 0.05)]
    lines = [
        f"# Letters bias audit: {expert}\n",
        f"{len(base)} unsteered letters from {n_pairs} counterfactual pairs (female/male twins that differ only in the "
        f"name and gendered words); settings in `results.json`. Every difference is male − female and every odds "
        f"ratio male vs female: positive / > 1 leans male. Lexicons: {wan2023().source}\n",
        *_gate_section(gate),
        "## Lexicon odds ratios\n",
        "`odds_ratio` is the paper's pooled measure (ε = 0.001), for comparability. `log_or_ha` adds 0.5 to each "
        "cell (Haldane-Anscombe), which stays finite when a group has no hits (the paper's ε turns 0 vs 1 hit "
        "into |log OR| ≈ 7); its 95% CI is a BCa cluster bootstrap over pair ids.\n",
        markdown_table(lexicons[["lexicon", "hits_male", "hits_female", "tokens_male", "tokens_female", "odds_ratio",
                            "log_or_ha", "log_or_ci_low", "log_or_ci_high"]]),
        f"\nBias index (mean |log_or_ha| over lexicons that occur): {bias_index(base):.3f}.\n",
        "## Paired differences per pair id (samples averaged), effect sizes and tests\n",
        "Wilcoxon p-values are Holm-corrected across metrics; `mde` is the smallest mean difference a paired t-test "
        "would detect with 80% power at α = 0.05 with these pairs. The last columns give the paper's unpaired "
        "one-sided t-test in its hypothesised direction, for comparability only (it ignores the pairing).\n",
        markdown_table(paired),
        f"\n{len(significant)} of {len(paired)} metrics differ after Holm correction"
        + (f": {', '.join(significant.metric)}.\n" if len(significant) else ".\n"),
        "![forest plot](forest.png)\n\n![per-occupation heatmap](occupations.png)\n",
        "## Most skewed lexicon words (counts in unsteered letters)\n", markdown_table(words) if len(words) else "No lexicon words.\n",
    ]
    if len(steering) > 1:
        lines += ["\n## Steer and re-audit\n",
                  "Same prompts and seeds with the steering vector. The verdict is the condition × gender interaction: "
                  "the change, against the unsteered letters, of the signed stereotype gap (per pair, male − female "
                  "lexicon rate signed by the paper's hypothesis and averaged over the nine lexicons, in hits per 1,000 "
                  "words; lower is less stereotyped). It needs an exact within-pair permutation p < 0.05 and a BCa 95% CI "
                  "over pairs that excludes 0; in simulated audits with no effect it fires in 5% of them "
                  "(`tests/unit/test_mitigation_calibration.py`). The bias index (mean |log OR|) and its change are "
                  "descriptive only: noise and degraded text raise it with no gender effect. Fluency: usable letters, "
                  "name-and-pronoun fidelity, looping letters, the gate's pass rate and the median perplexity under the "
                  "unsteered expert (which rewards loops, so read it beside the loop rate).\n",
                  markdown_table(steering), "\n" + _steering_reading(steering), "\n![steering](steering.png)\n"]
    lines += ["\n## Example letter pairs (greedy, unsteered)\n", _examples(frame)]
    results = {"manifest": manifest, "lexicons": json.loads(lexicons.to_json(orient="records")),
               "paired": json.loads(paired.replace({np.nan: None}).to_json(orient="records")),
               "steering": json.loads(steering.to_json(orient="records")), "bias_index": bias_index(base),
               "gate": json.loads(gate.to_json(orient="records"))}
    write_json(out / "results.json", results)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return out / "report.md"


def rebuild_report(out: Path) -> Path:
    """Rebuild the report from `letters.csv` and `run.json` in `out`."""
    from experts.errors import SteerlabError

    scores, manifest = out / SCORES, out / "run.json"
    if not scores.exists() or not manifest.exists():
        raise SteerlabError(f"{out} holds no scored audit ({SCORES} and run.json); run `steer audit letters` first")
    frame = pd.read_json(scores, orient="records", lines=True, dtype={"pair_id": str, "prompt_id": str, "coef": float})
    return build_report(out, frame, json.loads(manifest.read_text(encoding="utf-8")))

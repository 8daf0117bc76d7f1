# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Auditing the default expert's recommendation letters for gender bias
#
# What this shows: the counterfactual audit of Wan et al. 2023 ("Kelly is a Warm Person, Joseph is a Role
# Model") on SmolLM2. Each prompt has a twin that differs only in the name and gendered words; letters are
# scored with the paper's lexicons, and every difference is taken *within* a pair (male − female), with
# cluster-bootstrap CIs. Then we steer (ablate a gendered-framing direction) and re-audit the same prompts
# with the same seeds, reading the change in bias against its fluency cost.
#
# The audit here is small (10 pairs, greedy letters of 80 tokens) so it runs in about a minute; `steer audit
# letters --size full` is the real thing. With 10 pairs only large effects are detectable: the report gives
# the minimum detectable effect beside every test.

# %%
# %matplotlib inline
import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

from analysis.audit import AuditConfig, run_audit
from analysis.letters import build_prompts
from experts.expert import Expert
from steer.datasets import load_pairs
from steer.vectors.extract import compute_vector

OUT = Path("runs/notebooks/02_bias_audit_letters")
OUT.mkdir(parents=True, exist_ok=True)
expert = Expert.load()

# %% [markdown]
# ## The prompts
# Template pairs over names, occupations and an age, plus biography pairs (a biography about a man rewritten
# for a woman). `pair_id` links twins.

# %%
NAMES_PER_GENDER = 4
prompts = build_prompts("small", names_per_gender=NAMES_PER_GENDER)
pd.DataFrame([p.to_dict() for p in prompts])[["pair_id", "gender", "name", "kind", "text"]].head(6)

# %% [markdown]
# ## A direction to steer with
# Male-minus-female framing from the shipped `gender` pairs, over the middle layers (20–65% of depth), as the
# demo does. It will be *ablated* (projected out) from position 1 on; position 0 is the attention sink.

# %%
pairs, sha = load_pairs("gender")
layers = list(range(round(0.2 * expert.n_layers), round(0.65 * expert.n_layers)))
vector = compute_vector(expert, pairs, layers, dataset="gender", dataset_sha256=sha)
vector_path = vector.save(OUT / "gender_vector.safetensors")
print(f"gender direction at layers {layers[0]}..{layers[-1]}, {len(pairs)} pairs")

# %% [markdown]
# ## Audit, steer, re-audit
# One run: unsteered letters and letters with the direction fully ablated (coefficient 1). The run is
# resumable: re-running this cell reuses the letters already written.

# %%
config = AuditConfig(expert=expert.name, names_per_gender=NAMES_PER_GENDER, samples=0, max_new_tokens=80,
                     vector=str(vector_path), coefs=(0.0, 1.0), operator="ablate")
report = run_audit(config, OUT, expert=expert, progress=False)
results = json.loads((OUT / "results.json").read_text())
scores = pd.read_csv(OUT / "letters.csv")
print(f"{len(scores)} letters scored; report: {report}")

# %% [markdown]
# ## Lexicon odds ratios (unsteered)
# `log_or_ha` > 0 means the lexicon's words are more frequent in letters about men. The CI is a cluster
# bootstrap over pairs.

# %%
lexicons = pd.DataFrame(results["lexicons"])
lexicons[["lexicon", "hits_male", "hits_female", "odds_ratio", "log_or_ha", "log_or_ci_low", "log_or_ci_high"]].round(3)

# %%
paired = pd.DataFrame(results["paired"])
paired[["metric", "n_pairs", "diff_male_minus_female", "ci_low", "ci_high", "d_z", "wilcoxon_p_holm", "mde"]].round(3)

# %%
detected = paired[paired["wilcoxon_p_holm"] < 0.05]
excluding = lexicons[(lexicons["log_or_ci_low"] > 0) | (lexicons["log_or_ci_high"] < 0)]
print(f"bias index (mean |log OR| over lexicons that occur): {results['bias_index']:.3f}")
print(f"{len(detected)} of {len(paired)} paired metrics differ after Holm correction; "
      f"{len(excluding)} of {len(lexicons)} lexicon log ORs have a CI excluding 0"
      + (f" ({', '.join(excluding['lexicon'])})" if len(excluding) else ""))

# %% [markdown]
# ## The report's plots
# The forest plot shows each lexicon's log OR and each paired metric's standardised difference with CIs; the
# heatmap splits log ORs by occupation.

# %%
display(Image(filename=str(OUT / "forest.png")))
display(Image(filename=str(OUT / "occupations.png")))

# %% [markdown]
# ## Did steering reduce the skew?
# The verdict is the condition × gender interaction: the change of the signed stereotype gap (per pair, male −
# female lexicon rate signed by the paper's hypothesis, averaged over the nine lexicons, in hits per 1,000 words),
# with an exact within-pair permutation test and a BCa CI over pairs. The bias index (mean |log OR|) is shown
# but is descriptive only: noise and looping text raise it with no gender effect. The fluency cost is the
# usable-letter rate, name-and-pronoun fidelity, the share of looping letters and the median perplexity.

# %%
steering = pd.DataFrame(results["steering"])
display(steering.round(3))
display(Image(filename=str(OUT / "steering.png")))

# %%
row = steering[steering["condition"] != "unsteered"].iloc[0]
base = steering[steering["condition"] == "unsteered"].iloc[0]
verdict = {"reduced": "reduced the stereotype gap", "increased": "increased the stereotype gap"}.get(
    row["verdict"], "made no detectable change to the stereotype gap")
print(f"Ablating the direction {verdict}: Δ {row['gap_change']:+.2f} hits per 1,000 words "
      f"[{row['gap_ci_low']:+.2f}, {row['gap_ci_high']:+.2f}], p = {row['gap_p']:.2f}; usable letters "
      f"{base['usable_rate']:.0%} → {row['usable_rate']:.0%}, fidelity {base['fidelity_rate']:.0%} → "
      f"{row['fidelity_rate']:.0%}, looping letters {base['loop_rate']:.0%} → {row['loop_rate']:.0%}.")

# %% [markdown]
# ## One pair, side by side

# %%
greedy = scores[(scores["condition"] == "unsteered") & (scores["sample"] == -1)]
pair = greedy[greedy["pair_id"] == greedy["pair_id"].iloc[0]].set_index("gender")
for gender in ("female", "male"):
    display(Markdown(f"**{pair.loc[gender, 'name']}** ({gender}): {pair.loc[gender, 'letter'][:400]}…"))

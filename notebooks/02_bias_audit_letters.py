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
# # 02 · A letters audit you can trust: gated letters, signed gaps, and controls
#
# What this shows: the counterfactual audit of Wan et al. 2023 ("Kelly is a Warm Person, Joseph is a Role
# Model") on SmolLM2, with the checks that make its verdicts mean something.
# - Letters are **gated**: only letters that are letters (finished, about the candidate, right pronouns, no
#   loop) enter the verdicts, as twin pairs.
# - Skew is measured by two **signed gaps** (male − female, positive = stereotyped): the paper's language-agency
#   classifier per sentence, and the lexicons signed by the paper's hypothesis.
# - A **positive control**: we plant a skew (steering men's letters towards agentic content and women's towards
#   communal) and check that the audit sees it, with the right sign; then counter-steer along a content
#   direction built from Wan et al.'s own data and measure how much of the planted skew it removes.
#
# This notebook is small (8 twin pairs, three conditions) so it runs in a few minutes; `make demo` (24 pairs,
# both baselines) and `steer audit letters --size medium` (176 pairs) are the real things.

# %%
# %matplotlib inline
import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

from analysis.agency import agency_classifier
from analysis.audit import AuditConfig, generate_letters, open_run, run_audit
from analysis.letters import DEFAULT_OPENING, build_prompts
from analysis.mitigation import (
    DEMO_COUNTER_COEFS,
    DEMO_FEMALE_SCALE,
    DEMO_PLANT_COEF,
    content_vector,
    cosine,
    planted_skew_vector,
)
from analysis.report import summary_lines
from experts.expert import Expert
from steer.scale.checkpoint import read_rows
from steer.vectors.extract import default_layer

OUT = Path("runs/notebooks/02_bias_audit_letters")
OUT.mkdir(parents=True, exist_ok=True)
expert = Expert.load()

# %% [markdown]
# ## The prompts
# Biography twins: a biography written about a man, rewritten for a woman (name and pronouns swapped). The
# letter's first words are given to the expert (the same for both twins but the name): without them, greedy
# SmolLM2-135M writes to the candidate or to "[Recipient's Name]" far more often than about the candidate.

# %%
NAMES, BIOS = 2, 4
prompts = build_prompts("small", names_per_gender=NAMES, n_bios=BIOS)
print(f"{len(prompts) // 2} twin pairs; the letter opens with {DEFAULT_OPENING!r}\n")
print(prompts[0].text, "\n---\n", prompts[1].text)

# %% [markdown]
# ## Two directions, from data written apart
# The planted skew: agentic minus communal one-sentence descriptions written for steerlab. The mitigation's
# content direction: agentic minus communal biographies from Wan et al.'s released agency data, with the gender
# direction projected out. Both at layer 12 (40% of depth), mean over tokens (never the attention sink).

# %%
layers = [default_layer(expert)]
plant = planted_skew_vector(expert, layers)
content = content_vector(expert, layers)
plant.save(OUT / "plant.safetensors")
content.save(OUT / "content.safetensors")
print(f"cosine(plant, content) per layer: {cosine(plant, content)}; {content.provenance.notes}")

# %% [markdown]
# ## Letters: unsteered, planted, and planted + counter-steering
# Same prompts and seeds in every condition, greedy letters of up to 200 tokens with a repetition penalty. The demo's
# counter-steering: men's letters at 8 towards communal content, women's at 4 towards agentic, with the candidate's
# pronouns stated in the prompt. The run is resumable: re-running this cell reuses the letters already written.

# %%
config = AuditConfig(expert=expert.name, names_per_gender=NAMES, bios=BIOS, samples=0,
                     vector=str(OUT / "content.safetensors"), coefs=DEMO_COUNTER_COEFS, operator="counter",
                     female_scale=DEMO_FEMALE_SCALE, state_pronouns=True,
                     plant_vector=str(OUT / "plant.safetensors"), plant_coef=DEMO_PLANT_COEF)
run = open_run(config, OUT / "audit", expert)
generate_letters(expert, run, batch_size=48, progress=False)
print(f"{len(read_rows(run.letters_path))} letters in {run.letters_path}")

# %% [markdown]
# ## Score and report
# `run_audit` finds every letter written, so it only scores them (gate, agency classifier, lexicons, perplexity)
# and writes the report.

# %%
report = run_audit(config, OUT / "audit", expert=expert, progress=False)
results = json.loads((OUT / "audit" / "results.json").read_text())
print("\n".join(summary_lines(results)))

# %% [markdown]
# ## Are the letters letters?
# Share of letters passing each check of the gate, per condition (higher is better).

# %%
pd.DataFrame(results["gate"]).round(2)

# %% [markdown]
# ## The conditions side by side
# Each condition against what it is judged against (`against`): the change of each gap (the condition × gender
# interaction) with its CI and verdict, and the fluency cost. In the plot, lower is less stereotyped and right
# is more fluent.

# %%
table = pd.DataFrame(results["conditions"])
display(table[["condition", "against", "gate_pass_rate", "pronoun_fidelity", "agency_gap", "agency_change",
               "agency_ci_low", "agency_ci_high", "agency_verdict", "stereotype_change", "stereotype_verdict"]].round(2))
display(Image(filename=str(OUT / "audit" / "frontier.png")))

# %% [markdown]
# ## How good is the agency classifier?
# Trained on Wan et al.'s train split (MiniLM embeddings, logistic regression), C chosen on their validation
# split, accuracy measured on their test split, which nothing else touched.

# %%
print(agency_classifier().describe())

# %% [markdown]
# ## One pair, unsteered and planted

# %%
scores = pd.read_csv(OUT / "audit" / "letters.csv")
pair_id = scores["pair_id"].iloc[0]
for condition in ("unsteered", "planted"):
    pair = scores[(scores["condition"] == condition) & (scores["pair_id"] == pair_id)].set_index("gender")
    for gender in ("female", "male"):
        display(Markdown(f"**{condition}, {pair.loc[gender, 'name']}** ({gender}, agentic sentences "
                         f"{pair.loc[gender, 'agentic_share']:.0%}): {pair.loc[gender, 'letter'][:500]}…"))

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
# # 02 · A letters audit you can trust: letters that are letters, blind instruments, and controls
#
# What this shows: the counterfactual audit of Wan et al. 2023 ("Kelly is a Warm Person, Joseph is a Role
# Model") on SmolLM2, with the checks that make its verdicts mean something.
# - Letters are **gated** by checks the expert cannot game: the text ends on a sentence or a sign-off, sentences
#   of at most 30 words on average, and fluency judged by *another* model (Gemma-3-270M), whose limit was
#   calibrated on Wan et al.'s own ChatGPT letters.
# - Every score is taken on the letter with the candidate's **identity neutralised** (name, pronouns, gendered
#   words), and a **swap test** checks it: the same letters with name and pronouns swapped must score the same.
# - Skew is measured by two **signed gaps** (male − female, positive = stereotyped): the paper's language-agency
#   classifier per sentence, and the lexicons signed by the paper's hypothesis.
# - A **positive control** the mitigation never saw: a skew planted by the prompt (men's letters asked for
#   ambition, women's for warmth), then counter-steering along a content direction built from sentences written
#   for steerlab, with its side effects on the unplanted expert.
#
# This notebook is small (8 twin pairs from 2 name pairs, four conditions) so it runs in a few minutes; its
# verdicts say "too few units" where 8 pairs cannot reach α, and that is the honest answer at this size.
# `make demo` (24 pairs from 24 name pairs, the strength fitted on other pairs, both baselines) is the real thing.

# %%
# %matplotlib inline
import os
import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

from analysis.agency import agency_classifier
from analysis.audit import AuditConfig, generate_letters, open_run, run_audit
from analysis.letters import DEFAULT_OPENING, PLANT_INSTRUCTIONS, build_prompts
from analysis.mitigation import DEMO_COUNTER_GRID, content_vector, cosine, plant_prompt_direction
from analysis.report import summary_lines
from experts.expert import Expert
from steer.scale.checkpoint import read_rows
from steer.vectors.extract import default_layer

OUT = Path("runs/notebooks/02_bias_audit_letters")
OUT.mkdir(parents=True, exist_ok=True)
expert = Expert.load()
SMALL = os.environ.get("STEERLAB_NOTEBOOKS") == "small"  # the test suite runs a smaller version; `make notebooks` this one

# %% [markdown]
# ## The prompts
# Biography twins: a biography written about a man, rewritten for a woman (name and pronouns swapped). The
# letter's first words are given to the expert (the same for both twins but the name). The plant's instructions
# are shown below: they are added to the planted conditions' prompts only.

# %%
NAMES, BIOS = (1, 2) if SMALL else (2, 4)
prompts = build_prompts("small", names_per_gender=NAMES, n_bios=BIOS)
print(f"{len(prompts) // 2} twin pairs; the letter opens with {DEFAULT_OPENING!r}\n")
print(prompts[0].text, "\n---\n", prompts[1].text)
print("\nplanted:", PLANT_INSTRUCTIONS)

# %% [markdown]
# ## The remedy's direction, and how related it is to the plant
# The content direction: agentic minus communal sentences written for steerlab, gender projected out, at layer 12
# (40% of depth), mean over tokens. The plant is a prompt, so its "direction" is what its instruction writes into
# the residual at the letter's first token: if the two were nearly the same, the remedy would only undo arithmetic.

# %%
layers = [default_layer(expert)]
content = content_vector(expert, layers)
content.save(OUT / "content.safetensors")
plant = plant_prompt_direction(expert, layers)
print(f"cosine(content direction, plant's direction) per layer: {cosine(content, plant)}; {content.provenance.notes}")

# %% [markdown]
# ## Letters: unsteered, planted, planted + counter-steering, and counter-steering on the unplanted expert
# Same prompts and seeds in every condition: greedy letters, no repeated 4-gram, ending at the first paragraph
# break after 100 tokens. The counter-steering strength is the smallest of the demo's grid (the demo fits it on
# other pairs); mitigations state the candidate's pronouns. The run is resumable.

# %%
config = AuditConfig(expert=expert.name, names_per_gender=NAMES, bios=BIOS, samples=0,
                     vector=str(OUT / "content.safetensors"), coefs=DEMO_COUNTER_GRID[:1], operator="counter",
                     state_pronouns=True, plant_prompt=True, side_effects=True)
run = open_run(config, OUT / "audit", expert)
generate_letters(expert, run, batch_size=48, progress=False)
print(f"{len(read_rows(run.letters_path))} letters in {run.letters_path}")

# %% [markdown]
# ## Score and report
# `run_audit` finds every letter written, so it only scores them (gate with the judge's fluency, neutralised
# agency classifier and lexicons, the swap test) and writes the report.

# %%
report = run_audit(config, OUT / "audit", expert=expert, progress=False)
results = json.loads((OUT / "audit" / "results.json").read_text())
print("\n".join(summary_lines(results)))

# %% [markdown]
# ## Are the letters letters?
# Share of letters passing each check of the gate, per condition (higher is better), and how the judge's
# fluency compares with its limit.

# %%
display(pd.DataFrame(results["gate"]).round(2))
print(f"judge: {results['judge']['expert']}, limit {results['judge']['threshold']} ({results['judge']['calibration']})")

# %% [markdown]
# ## The conditions side by side
# Each condition against what it is judged against (`against`): the change of each gap (the condition × gender
# interaction) with its CI at 1 − α and verdict, and the fluency cost. In the plot, lower is less stereotyped and
# right is more fluent.

# %%
table = pd.DataFrame(results["conditions"])
display(table[["condition", "against", "gate_pass_rate", "pronoun_fidelity", "agency_gap", "agency_change",
               "agency_ci_low", "agency_ci_high", "agency_verdict", "stereotype_verdict"]])
display(Image(filename=str(OUT / "audit" / "frontier.png")))

# %% [markdown]
# ## How good, and how blind, is the agency classifier?
# Trained on Wan et al.'s agency data pooled and split by person (nobody in its test set was seen in training),
# every text neutralised; the swap test is computed on this notebook's own letters.

# %%
print(agency_classifier().describe())
print(results["swap_test"])

# %% [markdown]
# ## One pair, unsteered and planted

# %%
scores = pd.read_csv(OUT / "audit" / "letters.csv")
pair_id = scores["pair_id"].iloc[0]
for condition in ("unsteered", "planted"):
    pair = scores[(scores["condition"] == condition) & (scores["pair_id"] == pair_id)].set_index("gender")
    for gender in ("female", "male"):
        display(Markdown(f"**{condition}, {pair.loc[gender, 'name']}** ({gender}, agentic sentences "
                         f"{pair.loc[gender, 'agentic_share']:.0%}, gate {'passed' if pair.loc[gender, 'gate_passes'] else 'failed'}): "
                         f"{pair.loc[gender, 'letter']}"))

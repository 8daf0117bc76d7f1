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
# # 05 · Where does SmolLM2 keep a name's gender, and does ablating it remove the letters' skew?
#
# A study, not a demo. The letters audit (notebook 02, `make demo`) asks *whether* letters for "Kelly" and
# "Joseph" differ. Here we ask where the difference comes from inside the default expert:
#
# 1. **Is the name's gender linearly readable, and where?** Layer-wise probes at the name token and at the
#    last prompt token (where the letter starts), with names held out of training.
# 2. **How is it carried into the letter?** Activation patching from a "Kelly" prompt into the "Joseph"
#    prompt, measured on the next-token logit difference " she" − " he" partway into the letter: over layers ×
#    positions of the residual stream, and per attention head.
# 3. **What does the steering direction do through the unembedding?** Direct logit attribution of the
#    male-minus-female direction that the demo ablates.
# 4. **Does ablating that direction remove the gender information and the lexical skew?** The pronoun gap
#    across all name pairs, and a small re-audit, each with paired confidence intervals.
#
# Every number printed below is computed in this notebook. Sizes are small (runs in about two minutes).

# %%
# %matplotlib inline
import os
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from IPython.display import display

from analysis.attention import attention_patterns, attention_plot
from analysis.attribution import attribution_plot, vector_logit_attribution
from analysis.audit import AuditConfig, run_audit
from analysis.logit_lens import logit_lens
from analysis.patching import LogitDiff, patch_heads, patch_residual, patching_plot
from analysis.plots import save_figure
from analysis.probes import layer_probes, probe_plot
from experts.expert import Expert
from steer.vectors.apply import Steering, apply
from steer.datasets import load_pairs
from steer.vectors.extract import compute_vector
from steer.evaluate.stats import paired_summary

OUT = Path("runs/notebooks/05_where_gender_lives")
OUT.mkdir(parents=True, exist_ok=True)
expert = Expert.load()
SMALL = os.environ.get("STEERLAB_NOTEBOOKS") == "small"  # the test suite runs a smaller version; `make notebooks` this one
names = json.loads((Path(__import__("analysis").__file__).parent / "data" / "names.json").read_text())
# twins by position (female[i] with male[i]); keep pairs whose names are one token each, so prompts align
one_token = lambda name: len(expert.tokenizer.encode(" " + name, add_special_tokens=False)) == 1  # noqa: E731
pairs = [(f, m) for f, m in zip(names["female"], names["male"]) if one_token(f) and one_token(m)]
print(f"{len(pairs)} name pairs with single-token names, e.g. {pairs[:3]}")

# %% [markdown]
# ## 1 · Probes: is the name's gender readable, and where?
# Three request templates that end with the name, so the name sits at the same offset from the end of every
# chat-formatted prompt. Probes are trained on some names and tested on *other* names (grouped split), so a
# probe cannot pass by recognising a name it has seen.

# %%
templates = ["Write a recommendation letter for {}", "Write a short reference letter for my colleague {}",
             "Draft a letter of support for {}"]
texts, labels, groups = [], [], []
for female, male in pairs:
    for template in templates:
        for name, label in ((female, 1), (male, 0)):
            texts.append(template.format(name))
            labels.append(label)
            groups.append(name)
formatted = expert.format_prompts([templates[0].format("Kelly")])[0]
ids = expert.encode(formatted)
name_offset = ids.index(expert.tokenizer.encode(" Kelly", add_special_tokens=False)[0]) - len(ids)
layers = list(range(0, expert.n_layers, 3)) + [expert.n_layers - 1]
at_name = layer_probes(expert, texts, labels, layers=layers, position=name_offset, chat=True, groups=groups)
at_end = layer_probes(expert, texts, labels, layers=layers, position="last", chat=True, groups=groups)
probes = at_name.assign(where="name token").merge(at_end.assign(where="last prompt token"), how="outer")
figure = probe_plot(at_name, "Female vs male name: held-out AUROC at the name token")
figure.axes[0].plot(at_end["layer"], at_end["auroc"], marker="s", label="at the last prompt token")
figure.axes[0].legend(loc="lower right", fontsize=8)
save_figure(figure, OUT / "probes.png")
figure

# %%
def first_layer(table: pd.DataFrame, floor: float = 0.9) -> str:
    strong = table[table["auroc_low"] >= floor]
    return f"layer {int(strong['layer'].min())}" if len(strong) else "no layer"

print(f"held-out names: {int(at_name['n_test'].iloc[0])} test prompts per layer")
print(f"at the name token, the first layer whose AUROC CI lies above 0.9: {first_layer(at_name)} "
      f"(AUROC at layer 0: {at_name.iloc[0]['auroc']:.2f})")
print(f"at the last prompt token, the first such layer: {first_layer(at_end)} "
      f"(AUROC at layer 0: {at_end.iloc[0]['auroc']:.2f}, best {at_end['auroc'].max():.2f})")

# %% [markdown]
# ## 2 · Patching: how does the name's gender reach the letter?
# The clean prompt asks for Kelly's letter; the corrupted one is identical with Joseph. Both continue into the
# same letter opening, which names no one ("...I can say with confidence that"), and we read the next-token
# logit difference " she" − " he".
# Patching a piece of the clean run into the corrupted run and seeing how much of the clean difference returns
# (1 = all of it) locates where the information travels.

# %%
opening = "Dear Hiring Committee,\n\nI have known the applicant for three years, and I can say with confidence that"
def letter_prompt(name: str) -> str:
    return expert.format_prompts([templates[0].format(name)])[0] + opening

metric = LogitDiff(" she", " he")
lens = logit_lens(expert, letter_prompt("Kelly"), targets=[" she", " he"], last_positions=1)
final = lens.targets[lens.targets["layer"] == expert.n_layers - 1].set_index("target")
print(f"Kelly's letter, next token: p(' she') = {final.loc[' she', 'prob']:.3f} (rank {final.loc[' she', 'rank']}), "
      f"p(' he') = {final.loc[' he', 'prob']:.4f} (rank {final.loc[' he', 'rank']})")
residual = patch_residual(expert, letter_prompt("Kelly"), letter_prompt("Joseph"), metric,
                          layers=range(0, expert.n_layers, 3))
figure = patching_plot(residual, "Residual patching, Kelly → Joseph")
save_figure(figure, OUT / "patching_residual.png")
figure

# %%
effects = residual.effects
name_position = int(effects["position"].min())  # the first differing token: the name
last_position = int(effects["position"].max())
by_layer = effects.pivot(index="layer", columns="position", values="effect")
handover = by_layer.index[(by_layer[last_position] > by_layer[name_position]).to_numpy()]
print(f"clean (Kelly) logit difference {residual.clean:+.2f}, corrupted (Joseph) {residual.corrupted:+.2f}")
print(f"patching only the name token restores {by_layer[name_position].iloc[0]:.0%} at layer 0 and "
      f"{by_layer[name_position].iloc[-1]:.0%} at layer {by_layer.index[-1]}")
print(f"patching only the last position restores {by_layer[last_position].iloc[0]:.0%} at layer 0 and "
      f"{by_layer[last_position].iloc[-1]:.0%} at layer {by_layer.index[-1]}")
print("the last position carries more than the name token from layer "
      + (f"{int(handover.min())} on" if len(handover) else "— never, in the layers patched"))
other = effects[(effects["position"] != name_position) & (effects["position"] != last_position)]
print(f"largest effect at any other position: {other['effect'].max():.0%} "
      f"({other.loc[other['effect'].idxmax(), 'token']!r}, layer {int(other.loc[other['effect'].idxmax(), 'layer'])})")

# %% [markdown]
# Per head: each head's output (`hook_z`, through the TransformerBridge) patched at every position, in the
# layers where the information moves to the last position.

# %%
head_layers = range(int(handover.min()) if len(handover) else expert.n_layers // 2, expert.n_layers)
heads = patch_heads(expert, letter_prompt("Kelly"), letter_prompt("Joseph"), metric, layers=head_layers)
figure = patching_plot(heads, "Head patching (hook_z), Kelly → Joseph")
save_figure(figure, OUT / "patching_heads.png")
display(figure)
top_heads = heads.effects.sort_values("effect", ascending=False).head(5)
top_heads.round(3)

# %%
best = top_heads.iloc[0]
print(f"the strongest single head, L{int(best['layer'])} H{int(best['head'])}, restores {best['effect']:.0%}; "
      f"the five strongest sum to {top_heads['effect'].sum():.0%} (effects need not add up)")
patterns = attention_patterns(expert, letter_prompt("Kelly"), [(int(r["layer"]), int(r["head"])) for _, r in top_heads.head(2).iterrows()])
tokens = patterns.tokens
for (layer, head), weights in patterns.patterns.items():
    print(f"L{layer} H{head}: the last position attends {weights[-1, name_position]:.0%} to the name token "
          f"{tokens[name_position]!r} (its largest weight, {weights[-1].max():.0%}, is on {tokens[int(weights[-1].argmax())]!r})")
figure = attention_plot(patterns, last_positions=len(tokens) - name_position + 1, title="Top heads, Kelly's letter")
save_figure(figure, OUT / "attention.png")
figure

# %% [markdown]
# ## 3 · The steering direction through the unembedding
# The demo's gendered-framing direction: male-minus-female answers in the shipped `gender` pairs, at the
# middle layers (20–65% of depth). Direct logit attribution reads which tokens a direction pushes up or down
# if it went straight to the output (the final norm's gain and the unembedding; later layers ignored).

# %%
gender_pairs, sha = load_pairs("gender")
direction_layers = list(range(round(0.2 * expert.n_layers), round(0.65 * expert.n_layers)))
vector = compute_vector(expert, gender_pairs, direction_layers, dataset="gender", dataset_sha256=sha)
vector.save(OUT / "gender_vector.safetensors")
attribution = vector_logit_attribution(expert, vector, layer=direction_layers[-1], top=12)
figure = attribution_plot(attribution, f"Male − female direction, layer {direction_layers[-1]}")
save_figure(figure, OUT / "attribution.png")
figure

# %%
full = vector_logit_attribution(expert, vector, layer=direction_layers[-1], top=expert.model.config.vocab_size)
ranking = full[full["effect"] == "promoted"].set_index("token")  # every token, most promoted first
for token in (" he", " his", " him", " she", " her", " hers"):
    print(f"{token!r:8} z {ranking.loc[token, 'z']:+.2f}, rank {int(ranking.loc[token, 'rank'])} of {len(ranking)} "
          "(1 = most promoted)")
print(f"the direction favours ' he' over ' she' by {ranking.loc[' he', 'z'] - ranking.loc[' she', 'z']:+.2f} z "
      f"and ' his' over ' her' by {ranking.loc[' his', 'z'] - ranking.loc[' her', 'z']:+.2f} z")

# %% [markdown]
# ## 4 · Does ablating the direction remove the gender information?
# For each name pair, the *pronoun gap* is the " she" − " he" logit difference for the female name minus that
# for the male name, at the same point of the letter. We compare it with and without the direction projected
# out (coefficient 1, layers as above, from position 1 on, as the demo does), paired over name pairs.

# %%
@torch.inference_mode()
def pronoun_gaps(steering: Steering | None) -> np.ndarray:
    female = torch.tensor([expert.encode(letter_prompt(f)) for f, _ in pairs])
    male = torch.tensor([expert.encode(letter_prompt(m)) for _, m in pairs])
    def diff(ids):
        if steering is None:
            return metric(expert, expert.model(input_ids=ids).logits[:, -1])
        with apply(expert, steering):
            return metric(expert, expert.model(input_ids=ids).logits[:, -1])
    return (diff(female) - diff(male)).numpy()

before = pronoun_gaps(None)
after = pronoun_gaps(Steering(vector, coef=1.0, operator="ablate", positions="from:1"))
change = paired_summary(after - before)
print(f"pronoun gap without ablation: mean {before.mean():+.2f} logits over {len(pairs)} name pairs "
      f"({(before > 0).mean():.0%} of pairs lean ' she' for the female name)")
print(f"with the direction ablated: mean {after.mean():+.2f}; change {change.mean_diff:+.2f} "
      f"[{change.ci_low:+.2f}, {change.ci_high:+.2f}] (BCa bootstrap over pairs), d_z {change.d_z:+.2f}")
print(f"share of the gap that remains: {after.mean() / before.mean():.0%}")

# %% [markdown]
# ## And the lexical skew?
# A small counterfactual audit (6 biography pairs, greedy letters of 64 tokens), unsteered and with the direction
# ablated. The verdict is the change of the signed stereotype gap (male − female lexicon rates signed by the
# paper's hypothesis, per 1,000 words), permutation-tested within pairs. Letters this short rarely finish, so the
# gated verdict may have no pairs at all: the fluency columns (pronoun fidelity) are what this cell is for.

# %%
config = AuditConfig(expert=expert.name, names_per_gender=2 if SMALL else 3, bios=2, samples=0, max_new_tokens=64,
                     vector=str(OUT / "gender_vector.safetensors"), coefs=(0.0, 1.0), operator="ablate")
run_audit(config, OUT / "audit", expert=expert, progress=False)
steering_table = pd.DataFrame(json.loads((OUT / "audit" / "results.json").read_text())["conditions"])
for column in ("stereotype_change", "stereotype_ci_low", "stereotype_ci_high"):  # null (no gated pairs) -> NaN
    steering_table[column] = pd.to_numeric(steering_table[column])
steering_table[["condition", "letters", "stereotype_verdict", "stereotype_change", "stereotype_ci_low",
                "stereotype_ci_high", "gate_pass_rate", "pronoun_fidelity", "bias_index"]].round(3)

# %%
row = steering_table[steering_table["condition"] != "unsteered"].iloc[0]
lexical = ("did not detectably change" if row["stereotype_verdict"] == "no detectable change"
           else f"gave the verdict \"{row['stereotype_verdict']}\" on")
information = ("reduced" if change.ci_high < 0 else "increased" if change.ci_low > 0 else "did not detectably change")
print(f"Ablating the male-minus-female direction {information} the pronoun gap "
      f"({change.mean_diff:+.2f} [{change.ci_low:+.2f}, {change.ci_high:+.2f}] logits) and {lexical} the stereotype gap "
      f"(Δ {row['stereotype_change']:+.2f} [{row['stereotype_ci_low']:+.2f}, {row['stereotype_ci_high']:+.2f}] per "
      f"1,000 words), with pronoun fidelity at {row['pronoun_fidelity']:.0%}.")

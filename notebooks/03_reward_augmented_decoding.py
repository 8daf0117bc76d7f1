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
# # 03 · Reward-augmented decoding against steering, at matched fluency
#
# What this shows: RAD (Deng & Raffel 2023) re-weights the expert's top-k next tokens by β·reward. Here the
# reward is an *activation reward*: a small bilinear head on the hidden state the step has already computed and
# each candidate's embedding, so it costs almost nothing per token. We train it on labeled texts, decode with
# it, and compare it with a sentiment steering vector under one decoding setting (top-k sampling, same prompts,
# same seeds), at equal fluency: each method's strongest setting whose median perplexity stays within a budget.
#
# Sizes are small (8 prompts, 32 tokens) so it runs in about a minute; `steer rad compare` is the full version.

# %%
# %matplotlib inline
import os
from importlib.resources import files
from pathlib import Path

from analysis.plots import fluency_frontier_plot, save_figure
from experts.expert import Expert
from steer.datasets import load_pairs, load_prompts
from steer.vectors.extract import compute_vector
from steer.rad.decoding import rad_generate
from steer.rad.sweep import compare, matched_fluency, rad_method, steering_method
from steer.rad.training import load_labeled, train_activation_reward
from steer.evaluate.scorers import sentiment
from steer.evaluate.stats import paired_summary

OUT = Path("runs/notebooks/03_reward_augmented_decoding")
OUT.mkdir(parents=True, exist_ok=True)
expert = Expert.load()
SMALL = os.environ.get("STEERLAB_NOTEBOOKS") == "small"  # the test suite runs a smaller version; `make notebooks` this one

# %% [markdown]
# ## Train an activation reward
# Labeled texts (`{"text", "label"}`, positive = 1) are cut into every prefix; the reward learns to predict the
# text's label from the prefix's hidden state and the next token. Held-out texts give its AUROC.

# %%
data, sha = load_labeled(files("steer") / "data" / "sentiment_labeled.jsonl")
reward = train_activation_reward(expert, data, epochs=150, dataset_sha256=sha)
reward.save(OUT / "sentiment_reward.safetensors")
print(f"{len(data)} labeled texts; held-out AUROC {reward.info.heldout_auroc:.3f}, MSE {reward.info.heldout_mse:.3f}")

# %% [markdown]
# ## Decode with it
# β = 0 is plain top-k sampling (exactly); larger β leans on the reward. Same seed in both.

# %%
prompt = ["Describe a typical morning at work."]
for beta in (0.0, 20.0):
    text = rad_generate(expert, prompt, reward, beta=beta, top_k=20).texts[0]
    print(f"β = {beta:>4}: VADER {sentiment([text])[0]:+.2f}  {text[:220]!r}\n")

# %% [markdown]
# ## Compare with a steering vector
# The steering vector is notebook 01's (mean difference of the `sentiment` pairs at layer 24). Every setting
# samples the same prompts with the same seeds; strength 0 (plain top-k sampling) is shared by both methods and is
# the paired baseline. VADER is the evaluator (independent of both the reward and the vector); perplexity is
# under the plain expert.

# %%
pairs, pairs_sha = load_pairs("sentiment")
vector = compute_vector(expert, pairs, [24], dataset="sentiment", dataset_sha256=pairs_sha)
methods = [rad_method(reward, top_k=20, name="activation reward"), steering_method(vector)]
strengths = {"activation reward": [10, 20], "steering": [1, 2]}
rows, summary = compare(expert, methods, strengths, load_prompts()[: 4 if SMALL else 8], sentiment, top_k=20, max_new_tokens=32,
                        progress=False)
summary[["method", "strength", "diff", "ci_low", "ci_high", "median_perplexity", "tv_distance", "dist_2"]].round(3)

# %%
plain = summary.loc[summary["strength"] == 0, "median_perplexity"].iloc[0]
budget = 1.5 * plain
matched = matched_fluency(summary, budget)
figure = fluency_frontier_plot(summary, "VADER", f"{expert.name}: control at matched fluency", budget)
save_figure(figure, OUT / "frontier.png")
figure

# %%
print(f"fluency budget: median perplexity ≤ {budget:.2f} (1.5 × plain top-k's {plain:.2f})")
for _, row in matched.iterrows():
    verdict = "raises VADER" if row["ci_low"] > 0 else "shows no detectable change in VADER"
    print(f"{row['method']} at {row['strength']:g} {verdict}: {row['diff']:+.3f} [{row['ci_low']:+.3f}, "
          f"{row['ci_high']:+.3f}] at perplexity {row['median_perplexity']:.2f}, dist-2 {row['dist_2']:.2f}")
missing = sorted(set(strengths) - set(matched["method"]))
if missing:
    print(f"within the budget, no setting of: {', '.join(missing)}")
if len(matched) == 2:  # the two methods' matched settings, paired over prompts (same seeds)
    per_prompt = rows.groupby(["method", "strength", "prompt_id"])["score"].mean()
    first, second = matched.iloc[0], matched.iloc[1]
    gap = paired_summary((per_prompt.loc[(first["method"], first["strength"])]
                          - per_prompt.loc[(second["method"], second["strength"])]).to_numpy())
    verdict = "moves VADER more than" if gap.excludes_zero else "is not distinguishable from"
    print(f"at matched fluency, {first['method']} {verdict} {second['method']}: {gap.mean_diff:+.3f} "
          f"[{gap.ci_low:+.3f}, {gap.ci_high:+.3f}] (paired over {gap.n} prompts)")

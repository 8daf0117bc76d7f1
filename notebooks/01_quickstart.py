# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Quickstart: read an expert, steer it, save the vector
#
# What this shows, on the default expert (SmolLM2-135M-Instruct, embedded, nothing downloaded):
# 1. load the expert and capture activations under TransformerLens names;
# 2. compute a sentiment steering vector from contrastive pairs and check how well it separates held-out pairs;
# 3. steer generation with it;
# 4. sweep the coefficient against a random vector of equal norm, with paired confidence intervals;
# 5. save it (safetensors + JSON provenance) and export it for llama.cpp (GGUF).
#
# Sizes are smaller than the CLI's defaults so that the notebook runs in about a minute on 2 CPU cores.
# Every number below is computed here; nothing in the text is typed in.

# %%
# %matplotlib inline
import os
from pathlib import Path

from IPython.display import HTML

from analysis.plots import save_figure, sweep_plot
from analysis.token_view import token_html
from experts.expert import Expert
from steer.vectors.apply import Steering, apply
from steer.datasets import load_pairs, load_prompts
from steer.vectors.extract import compute_vector
from steer.vectors.io import export_gguf, import_gguf
from steer.evaluate.layers import search_layers
from steer.evaluate.scorers import sentiment
from steer.evaluate.sweep import SweepConfig, sweep
from steer.vectors.vector import SteeringVector

OUT = Path("runs/notebooks/01_quickstart")
OUT.mkdir(parents=True, exist_ok=True)
expert = Expert.load()  # the default expert; cached after the first load
SMALL = os.environ.get("STEERLAB_NOTEBOOKS") == "small"  # the test suite runs a smaller version; `make notebooks` this one
expert

# %% [markdown]
# ## 1 · Capture activations
# Names are TransformerLens names. `chat=True` wraps each prompt in the expert's chat template.
# The cache is left-padded; `cache.unpadded(name)` drops the padding.

# %%
cache = expert.run_with_cache(["I loved this film.", "I hated this film."], ["blocks.12.hook_resid_post"], chat=True)
acts = cache["resid_post", 12]
print("activations:", tuple(acts.shape), "(batch, positions, d_model)")
print("cosine of the two prompts' last-token residuals:",
      round(float(acts[0, -1] @ acts[1, -1] / (acts[0, -1].norm() * acts[1, -1].norm())), 3))

# %% [markdown]
# ## 2 · A sentiment vector from contrastive pairs
# The shipped `sentiment` pairs are positive/negative answers to the same prompt. First, how well does
# the mean-difference direction separate *held-out* pairs at each layer? Then the vector itself at one layer.

# %%
pairs, sha = load_pairs("sentiment")
step = 8 if SMALL else 4
search = search_layers(expert, pairs, layers=range(step, expert.n_layers, step), test_fraction=0.3)
search.table[["layer", "auroc_heldout", "norm", "typical_norm"]].round(3)

# %%
LAYER = 24  # `steer vector layers` also measures each layer's steering effect; on SmolLM2 it picks 24
vector = compute_vector(expert, pairs, [LAYER], dataset="sentiment", dataset_sha256=sha)
low, high = vector.provenance.coef_range
print(f"layer {LAYER}: held-out AUROC {search.table.set_index('layer').loc[LAYER, 'auroc_heldout']:.3f}; "
      f"calibrated coefficient range {low:.2f}..{high:.2f} (adds 10%..50% of the typical residual norm)")

# %% [markdown]
# Where the vector reads in a text: each token's residual at that layer projected on the unit vector, relative to
# the text's median token (hover a token for its value). The view is plain HTML: it renders offline and on the
# repository page.

# %%
text = "The food was wonderful and the staff were so kind. The room was dirty, the bed broken and the service awful."
read = expert.run_with_cache([text], [f"blocks.{LAYER}.hook_out"])  # TL 4's name of hook_resid_post
unit = vector.directions[LAYER] / vector.directions[LAYER].norm()
projection = read.unpadded(f"blocks.{LAYER}.hook_out")[0].float() @ unit.float()
projection = (projection[1:] - projection[1:].median()).tolist()  # position 0, the attention sink, left out
tokens = [expert.tokenizer.decode([i]) for i in read.tokens[0].tolist()][1:]
view = token_html(tokens, projection, title=f"projection on the sentiment vector, layer {LAYER}",
                  below="reads negative", above="reads positive")
(OUT / "projection.html").write_text(view, encoding="utf-8")
HTML(view)

# %% [markdown]
# ## 3 · Steer generation
# The same prompt and seed, unsteered and steered both ways (greedy decoding, so only the vector differs).

# %%
prompt = ["Tell me about your day."]
COEF = 2.0
texts = {0.0: expert.generate(prompt, max_new_tokens=40).texts[0]}
for coef in (COEF, -COEF):
    with apply(expert, Steering(vector, coef=coef)):
        texts[coef] = expert.generate(prompt, max_new_tokens=40).texts[0]
for coef, text in texts.items():
    print(f"c = {coef:+.0f}, VADER {sentiment([text])[0]:+.2f}: {text!r}\n")

# %% [markdown]
# ## 4 · Sweep the coefficient
# Eight neutral prompts, sampled continuations, scored by VADER (an evaluator independent of the
# vector). Each coefficient is compared per prompt with the unsteered run (bootstrap 95% CI), beside a
# random vector of the same norm. Perplexity is measured under the unsteered expert.

# %%
config = SweepConfig(coefs=(-COEF, 0.0, COEF), max_new_tokens=32, batch_size=8)
rows, summary = sweep(expert, vector, load_prompts()[: 4 if SMALL else 8], sentiment, config, progress=False)
summary[["condition", "coef", "diff_vs_unsteered", "ci_low", "ci_high", "d_z", "perplexity"]].round(3)

# %%
figure = sweep_plot(summary, "VADER", f"{expert.name}: sentiment vector, layer {LAYER}")
save_figure(figure, OUT / "sweep.png")
figure

# %%
for _, row in summary[summary["condition"] != "baseline"].iterrows():
    verdict = "moves VADER" if row["ci_excludes_0"] else "shows no detectable change in VADER"
    print(f"{row['condition']:>7} c = {row['coef']:+.0f} {verdict}: {row['diff_vs_unsteered']:+.3f} "
          f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], median perplexity {row['perplexity']:.1f}")

# %% [markdown]
# ## 5 · Save, reload, export for llama.cpp
# The file is safetensors with the provenance as JSON inside (never pickled). Loading it into another
# expert is refused unless forced. The GGUF is a llama.cpp control vector (`--control-vector`).

# %%
path = vector.save(OUT / "sentiment.safetensors")
again = SteeringVector.load(path, expert)
gguf_path = export_gguf(vector, OUT / "sentiment.gguf")
from_gguf = import_gguf(gguf_path, expert)
same = all((again.directions[k] == vector.directions[k]).all() and (from_gguf.directions[k] == vector.directions[k]).all()
           for k in vector.layers)
print(f"saved {path.name} and {gguf_path.name}; both reload to the same directions: {same}")
print({k: v for k, v in again.provenance.__dict__.items() if k in ("expert", "fingerprint", "method", "dataset_sha256")})

"""Logit lens: read each layer's residual stream through the final norm and the unembedding.

`logit_lens(expert, prompt, targets=[" she", " he"])` returns a `LogitLens` with two DataFrames: the top
tokens per layer and position, and the rank and probability of each target token. At the last layer
the lens equals the expert's own next-token distribution (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from analysis.plots import subplots
from analysis.tokens import check_layers, single_token_ids, token_labels
from experts.expert import Expert
from experts.hookpoints import act_name


@dataclass(frozen=True)
class LogitLens:
    """`top`: layer, position, input token, rank, token, prob. `targets`: layer, position, target, rank, prob."""

    top: pd.DataFrame
    targets: pd.DataFrame
    tokens: list[str]
    layers: list[int]


@torch.inference_mode()
def logit_lens(
    expert: Expert,
    prompt: str,
    *,
    targets: Sequence[str] = (),
    layers: Sequence[int] | None = None,
    top: int = 5,
    chat: bool = False,
    last_positions: int | None = None,
) -> LogitLens:
    """Per layer (`blocks.L.hook_resid_post`) and position: the top tokens and each target's rank and
    probability. `last_positions` keeps only that many final positions (the chat template is long)."""
    layers = check_layers(expert, layers)
    target_ids = single_token_ids(expert, targets)
    cache = expert.run_with_cache(prompt, [act_name("resid_post", layer) for layer in layers], chat=chat)
    n_positions = cache.tokens.shape[1]
    start = 0 if last_positions is None else max(0, n_positions - last_positions)
    tokens = token_labels(expert, cache.tokens[0].tolist())
    top_rows, target_rows = [], []
    for layer in layers:
        logprobs = expert.unembed(cache["resid_post", layer][0, start:]).float().log_softmax(-1)
        best = logprobs.topk(top, dim=-1)
        for offset in range(logprobs.shape[0]):
            position = start + offset
            for rank, (token_id, logprob) in enumerate(zip(best.indices[offset].tolist(), best.values[offset].tolist())):
                top_rows.append({"layer": layer, "position": position, "input_token": tokens[position], "rank": rank + 1,
                                 "token": expert.tokenizer.decode([token_id]), "prob": float(np.exp(logprob))})
            for target, token_id in zip(targets, target_ids):
                value = logprobs[offset, token_id]
                target_rows.append({"layer": layer, "position": position, "target": target,
                                    "rank": int((logprobs[offset] > value).sum()) + 1, "prob": float(value.exp())})
    return LogitLens(pd.DataFrame(top_rows), pd.DataFrame(target_rows, columns=["layer", "position", "target", "rank", "prob"]),
                     tokens, layers)


def logit_lens_plot(lens: LogitLens, target: str | None = None, title: str = "Logit lens") -> Figure:
    """Heatmap over layers × positions: the top-1 probability annotated with the top token, or one target's probability."""
    if target is None:
        frame = lens.top[lens.top["rank"] == 1]
    else:
        frame = lens.targets[lens.targets["target"] == target]
    grid = frame.pivot(index="layer", columns="position", values="prob")
    positions = list(grid.columns)
    fig, ax = subplots(figsize=(max(6.0, 0.9 * len(positions) + 2), max(4.0, 0.28 * len(grid) + 1.5)))
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
    fig.colorbar(image, ax=ax, label="probability" if target is None else f"p({target!r})")
    if target is None:
        words = frame.pivot(index="layer", columns="position", values="token").to_numpy()
        for row in range(words.shape[0]):
            for col in range(words.shape[1]):
                ax.text(col, row, repr(words[row, col])[1:-1][:8], ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(len(positions)), [repr(lens.tokens[p])[1:-1][:10] for p in positions], rotation=60, fontsize=7)
    ax.set_yticks(range(len(grid)), [str(layer) for layer in grid.index], fontsize=7)
    ax.set_xlabel("input token (position)")
    ax.set_ylabel("layer (resid_post)")
    ax.set_title(title if target is None else f"{title}: {target!r}")
    return fig

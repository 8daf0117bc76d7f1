"""Attention patterns of chosen heads, read through the TransformerBridge (`blocks.L.attn.hook_pattern`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from analysis.plots import subplots
from analysis.tokens import check_layers, token_labels
from experts.errors import SteerlabError
from experts.expert import Expert
from experts.hookpoints import attn_name


@dataclass(frozen=True)
class AttentionPatterns:
    """`patterns[(layer, head)]` is a (query, key) array of attention weights over `tokens`."""

    tokens: list[str]
    patterns: dict[tuple[int, int], np.ndarray]


def attention_patterns(expert: Expert, prompt: str, heads: Sequence[tuple[int, int]], *, chat: bool = False) -> AttentionPatterns:
    """The attention weights of each (layer, head) on one prompt."""
    heads = [(int(layer), int(head)) for layer, head in heads]
    check_layers(expert, [layer for layer, _ in heads])
    n_heads = expert.model.config.num_attention_heads
    for layer, head in heads:
        if not 0 <= head < n_heads:
            raise SteerlabError(f"head {head} (layer {layer}) is out of range; this expert has heads 0..{n_heads - 1}")
    names = sorted({attn_name("pattern", layer) for layer, _ in heads})
    cache = expert.run_with_cache(prompt, names, chat=chat)
    tokens = token_labels(expert, cache.tokens[0].tolist())
    patterns = {(layer, head): cache[attn_name("pattern", layer)][0, head].float().cpu().numpy() for layer, head in heads}
    return AttentionPatterns(tokens, patterns)


def attention_plot(patterns: AttentionPatterns, *, last_positions: int | None = None, title: str = "Attention") -> Figure:
    """One heatmap per head (query rows, key columns), optionally cut to the last positions."""
    n = len(patterns.tokens)
    start = 0 if last_positions is None else max(0, n - last_positions)
    labels = [repr(t)[1:-1][:10] for t in patterns.tokens[start:]]
    fig, axes = subplots(1, len(patterns.patterns), figsize=(4.2 * len(patterns.patterns), 4.4))
    for index, (ax, ((layer, head), weights)) in enumerate(zip(np.atleast_1d(axes), patterns.patterns.items())):
        ax.imshow(weights[start:, start:], cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=80, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title(f"L{layer} H{head}", fontsize=9)
        ax.set_xlabel("key")
        if index == 0:
            ax.set_ylabel("query")
    fig.suptitle(title)
    return fig

"""Token helpers for the analysis tools: single-token targets, readable token labels, layer checks."""

from __future__ import annotations

from collections.abc import Sequence

from experts.errors import LayerOutOfRangeError, SteerlabError
from experts.expert import Expert


class NotSingleTokenError(SteerlabError, ValueError):
    """A target string that the expert's tokenizer splits into several tokens (or none)."""


class UnalignedPromptsError(SteerlabError, ValueError):
    """Clean and corrupted prompts that patching cannot align: different token lengths, or no token differs."""


def single_token_ids(expert: Expert, texts: Sequence[str]) -> list[int]:
    """Token id of each text; each must be exactly one token (mind the leading space: " she")."""
    ids = []
    for text in texts:
        encoded = expert.tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            pieces = [expert.tokenizer.decode([t]) for t in encoded]
            raise NotSingleTokenError(
                f"target {text!r} is {len(encoded)} tokens for {expert.name} ({pieces}); "
                "choose a string that is one token (often with a leading space)"
            )
        ids.append(encoded[0])
    return ids


def token_labels(expert: Expert, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own (what a heatmap's axis shows)."""
    return [expert.tokenizer.decode([token_id]) for token_id in ids]


def check_layers(expert: Expert, layers: Sequence[int] | None) -> list[int]:
    """All layers by default; an out-of-range layer is an error naming the valid range."""
    layers = list(range(expert.n_layers)) if layers is None else [int(layer) for layer in layers]
    for layer in layers:
        if not 0 <= layer < expert.n_layers:
            raise LayerOutOfRangeError(f"blocks.{layer}", layer, expert.n_layers)
    return layers

"""Direct logit attribution of a steering vector: which tokens its direction promotes and suppresses
through the final norm's gain and the unembedding (the path that skips every later layer)."""

from __future__ import annotations

import pandas as pd
import torch
from matplotlib.figure import Figure

from analysis.plots import subplots
from experts.errors import SteerlabError
from experts.expert import Expert
from steer.errors import VectorMismatchError
from steer.vectors.vector import SteeringVector


@torch.inference_mode()
def vector_logit_attribution(expert: Expert, vector: SteeringVector, layer: int | None = None, top: int = 15) -> pd.DataFrame:
    """Top promoted and suppressed tokens of the vector's direction at `layer` (default: its first layer).

    `score` is the unembedded unit direction minus its mean over the vocabulary; `z` divides by its spread.
    The final norm is applied to the direction alone, so scores are up to one positive scale factor.
    """
    layer = vector.layers[0] if layer is None else layer
    if layer not in vector.directions:
        raise SteerlabError(f"the vector has no direction at layer {layer}; it has layers {vector.layers}")
    if vector.d_model != expert.d_model:
        raise VectorMismatchError(f"the vector is {vector.d_model} wide but {expert.name} has d_model {expert.d_model}")
    direction = vector.directions[layer].float()
    logits = expert.unembed(direction / direction.norm().clamp_min(1e-12)).float().cpu()
    centred = logits - logits.mean()
    z = centred / centred.std()
    rows = []
    for effect, order in (("promoted", centred.argsort(descending=True)), ("suppressed", centred.argsort())):
        for rank, token_id in enumerate(order[:top].tolist()):
            rows.append({"effect": effect, "rank": rank + 1, "token": expert.tokenizer.decode([token_id]),
                         "token_id": token_id, "score": float(centred[token_id]), "z": float(z[token_id])})
    return pd.DataFrame(rows)


def attribution_plot(table: pd.DataFrame, title: str = "Direct logit attribution") -> Figure:
    """Horizontal bars: promoted tokens (right) and suppressed tokens (left), in z units."""
    frame = pd.concat([table[table["effect"] == "suppressed"].iloc[::-1], table[table["effect"] == "promoted"].iloc[::-1]])
    fig, ax = subplots(figsize=(6.0, max(3.0, 0.22 * len(frame) + 1)))
    colours = ["tab:red" if effect == "suppressed" else "tab:blue" for effect in frame["effect"]]
    ax.barh(range(len(frame)), frame["z"], color=colours)
    ax.set_yticks(range(len(frame)), [repr(t) for t in frame["token"]], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("direct effect on the logit (z over the vocabulary)")
    ax.set_title(title)
    return fig

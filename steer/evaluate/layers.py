"""Layer search: for each layer, how well the direction separates held-out pairs (AUROC) and how
much steering with it moves generations (score at +c minus score at -c, c calibrated per layer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from experts.expert import Expert
from steer.datasets import ContrastPair
from steer.evaluate.scorers import Scorer
from steer.vectors.apply import Steering, apply
from steer.vectors.extract import AGGREGATORS, PairActivations, build_vector, capture_pairs

AUROC_FLOOR = 0.9


@dataclass(frozen=True)
class LayerSearch:
    table: pd.DataFrame
    best_layer: int


def _auroc(acts: PairActivations, layer: int, train: np.ndarray, test: np.ndarray, method: str, seed: int) -> float:
    direction = AGGREGATORS[method](acts.positive[layer][train], acts.negative[layer][train], seed)
    unit = direction / direction.norm().clamp_min(1e-12)
    scores = torch.cat([acts.positive[layer][test] @ unit, acts.negative[layer][test] @ unit]).numpy()
    labels = [1] * len(test) + [0] * len(test)
    return float(roc_auc_score(labels, scores))


def search_layers(
    expert: Expert,
    pairs: Sequence[ContrastPair],
    *,
    layers: Sequence[int] | None = None,
    method: str = "mean_diff",
    token_rule: str = "last",
    test_fraction: float = 0.3,
    seed: int = 0,
    scorer: Scorer | None = None,
    effect_prompts: Sequence[str] = (),
    effect_tokens: int = 24,
    progress: bool = False,
) -> LayerSearch:
    """Table with one row per layer; the best layer has the largest steering effect among layers
    whose held-out AUROC reaches 0.9 (or the best AUROC if none, or without a scorer)."""
    layers = list(layers) if layers else list(range(expert.n_layers))
    acts = capture_pairs(expert, pairs, layers, token_rule=token_rule, progress=progress)
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_test = max(1, round(test_fraction * len(pairs)))
    test, train = order[:n_test], order[n_test:]
    rows = []
    for layer in layers:
        vector = build_vector(expert, acts, [layer], method=method, token_rule=token_rule, seed=seed)
        coef = float(np.mean(vector.provenance.coef_range))  # mid-range of the calibrated coefficients
        row = {"layer": layer, "auroc_heldout": _auroc(acts, layer, train, test, method, seed),
               "norm": vector.norms[layer], "typical_norm": acts.typical_norms[layer], "coef": coef}
        if scorer is not None and effect_prompts:
            prompts = list(effect_prompts)
            with apply(expert, Steering(vector, coef=[coef] * len(prompts) + [-coef] * len(prompts))):
                texts = expert.generate(prompts * 2, max_new_tokens=effect_tokens, batch_size=2 * len(prompts)).texts
            scores = scorer(texts)
            row["effect"] = float(np.mean(scores[: len(prompts)]) - np.mean(scores[len(prompts) :]))
        rows.append(row)
    table = pd.DataFrame(rows)
    strong = table[table["auroc_heldout"] >= AUROC_FLOOR]
    if "effect" in table and len(strong):
        best = int(strong.loc[strong["effect"].idxmax(), "layer"])
    else:
        best = int(table.loc[table["auroc_heldout"].idxmax(), "layer"])
    table["chosen"] = table["layer"] == best
    return LayerSearch(table=table, best_layer=best)


"""Layer-wise linear probes: how well each layer's residual stream separates two labeled prompt sets.

One capture reads every layer; a standardised logistic regression per layer (scikit-learn) is scored on
held-out prompts by AUROC with a stratified bootstrap CI. `groups` keeps every prompt of a group (a name,
a template) on one side of the split, so a probe cannot pass by memorising a token it saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from analysis.plots import subplots
from analysis.tokens import check_layers
from experts.errors import SteerlabError
from experts.expert import Expert
from experts.hookpoints import act_name

POOLINGS = ("last", "mean", "an integer position (negative counts from the end)")


def _pooled_capture(expert: Expert, texts: list[str], names: list[str], position: str | int, chat: bool):
    """One capture that keeps only the pooled activation of each text (never the full positions)."""
    if position == "mean":  # skip the attention sink
        lengths = [len(expert.encode(t)) for t in expert.format_prompts(texts, chat=chat)]
        return expert.run_with_cache(texts, names, chat=chat, reduce="mean", mean_from=[min(1, n - 1) for n in lengths])
    if position == "last":
        return expert.run_with_cache(texts, names, chat=chat, reduce="last")
    shortest = min(len(expert.encode(t)) for t in expert.format_prompts(texts, chat=chat))
    if not -shortest <= int(position) < shortest:
        raise SteerlabError(f"position {position} is outside the shortest prompt ({shortest} tokens); "
                            f"choose one of {', '.join(POOLINGS)}")
    return expert.run_with_cache(texts, names, chat=chat, reduce=[int(position)])


def heldout_split(labels: np.ndarray, groups: Sequence | None, test_fraction: float, seed: int):
    """Train and test indices, stratified by label; with `groups`, no group on both sides."""
    if groups is None:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        return next(splitter.split(np.zeros(len(labels)), labels))
    splitter = GroupShuffleSplit(n_splits=20, test_size=test_fraction, random_state=seed)
    for train, test in splitter.split(np.zeros(len(labels)), labels, groups=list(groups)):
        if len(set(labels[train])) == 2 and len(set(labels[test])) == 2:
            return train, test
    raise SteerlabError("no group split puts both labels on both sides; add groups or raise test_fraction")


def auroc_ci(labels: np.ndarray, scores: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """AUROC with a 95% percentile bootstrap CI, resampling positives and negatives separately.

    Each resample's AUROC is its Mann–Whitney U over n_pos·n_neg (ties count half), computed for all
    resamples at once from their ranks.
    """
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    both = np.concatenate([rng.choice(pos, (n_boot, len(pos))), rng.choice(neg, (n_boot, len(neg)))], axis=1)
    u = rankdata(both, axis=1)[:, : len(pos)].sum(1) - len(pos) * (len(pos) + 1) / 2
    low, high = np.percentile(u / (len(pos) * len(neg)), [2.5, 97.5])
    return float(roc_auc_score(labels, scores)), float(low), float(high)


def layer_probes(
    expert: Expert,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    layers: Sequence[int] | None = None,
    position: str | int = "last",
    chat: bool = False,
    groups: Sequence | None = None,
    test_fraction: float = 0.3,
    c: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per layer: held-out AUROC [95% CI], accuracy, and the split sizes (labels 0/1)."""
    layers = check_layers(expert, layers)
    y = np.asarray(labels, dtype=int)
    if len(y) != len(texts) or set(np.unique(y)) != {0, 1}:
        raise SteerlabError(f"labels must be 0/1, one per text, with both present; got {sorted(set(y.tolist()))} for {len(texts)} texts")
    if position not in ("last", "mean") and not isinstance(position, int):
        raise SteerlabError(f"unknown position {position!r}; choose one of {', '.join(POOLINGS)}")
    train, test = heldout_split(y, groups, test_fraction, seed)
    cache = _pooled_capture(expert, list(texts), [act_name("resid_post", layer) for layer in layers], position, chat)
    rows = []
    for layer in layers:
        x = cache[act_name("resid_post", layer)].reshape(len(texts), -1).float().cpu().numpy()
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x[train], y[train])
        scores = probe.decision_function(x[test])
        auroc, low, high = auroc_ci(y[test], scores, seed=seed)
        rows.append({"layer": layer, "auroc": auroc, "auroc_low": low, "auroc_high": high,
                     "accuracy": float(probe.score(x[test], y[test])), "n_train": len(train), "n_test": len(test)})
    return pd.DataFrame(rows)


def probe_plot(table: pd.DataFrame, title: str = "Layer-wise probes") -> Figure:
    """Held-out AUROC per layer with its 95% CI band; 0.5 is chance."""
    fig, ax = subplots(figsize=(6.5, 3.6))
    ax.plot(table["layer"], table["auroc"], marker="o", label="held-out AUROC")
    ax.fill_between(table["layer"], table["auroc_low"], table["auroc_high"], alpha=0.25, label="95% CI")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("AUROC")
    ax.set_ylim(0.3, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig

"""Train a router from the task set and a quality table (per-query quality of every expert)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from experts.errors import SteerlabError
from steer.router.features import read, train_features
from steer.router.router import Router, Rule, fit_decision_model
from steer.router.tasks import Task

if TYPE_CHECKING:
    from experts.expert import Expert

DOMAINS = {
    "code": "a programming task", "writing": "a letter, note or email to write", "knowledge": "a general-knowledge question",
    "stories": "a short story to tell", "languages": "a translation into a language other than English",
    "math": "arithmetic or a word problem",
}
PROPERTIES = {
    "gendered_subject": ("a person of a stated or implied gender is the subject", lambda t: t.gendered_subject),
    "hostile_tone": ("negative or hostile tone", lambda t: t.hostile),
}


def feature_labels(tasks: Sequence[Task]) -> dict[str, tuple[str, np.ndarray]]:
    """Named binary labels for every task: `domain:<name>` one-vs-rest and the properties."""
    labels = {f"domain:{d}": (desc, np.array([int(t.domain == d) for t in tasks])) for d, desc in DOMAINS.items()
              if any(t.domain == d for t in tasks)}
    labels |= {name: (desc, np.array([int(get(t)) for t in tasks])) for name, (desc, get) in PROPERTIES.items()}
    return labels


def quality_matrix(quality: pd.DataFrame, tasks: Sequence[Task], experts: Sequence[str], column: str = "bpb") -> np.ndarray:
    """(tasks, experts) values of one quality column (default: bits per byte of the reference)."""
    table = quality.pivot_table(index="task_id", columns="expert", values=column, dropna=False)
    missing = [e for e in experts if e not in table.columns] + [t.id for t in tasks if t.id not in table.index]
    if missing:
        raise SteerlabError(f"the quality table lacks {', '.join(map(str, missing[:5]))}")
    return table.loc[[t.id for t in tasks], list(experts)].to_numpy()


def utility_matrix(quality: pd.DataFrame, tasks: Sequence[Task], experts: Sequence[str]) -> np.ndarray:
    """What routing maximizes: pass@1 first where a task has unit tests, then −bits per byte.
    (Bits per byte alone prefers SmolLM2 on code, whose answers pass far fewer tests than Qwen's.)"""
    passed = np.nan_to_num(quality_matrix(quality, tasks, experts, "pass_at_1").astype(float), nan=0.0)
    return -quality_matrix(quality, tasks, experts) + 10.0 * passed


def train_router(reader: Expert, tasks: Sequence[Task], quality: pd.DataFrame, experts: Sequence[str], *,
                 fingerprints: dict[str, str], costs: dict[str, float], layer: int = 12, seed: int = 0,
                 rules: Sequence[Rule] = (), threshold: float = 0.0,
                 c_grid: Sequence[float] = (0.03, 0.1, 0.3, 1.0, 3.0)) -> Router:
    """Features on the train split (AUROC on val); the decision model's L1 strength chosen on val by routed quality."""
    if not 0 <= layer < reader.n_layers:
        raise SteerlabError(f"reader layer {layer} is out of range; {reader.name} has layers 0..{reader.n_layers - 1}")
    h = read(reader, [t.query for t in tasks], layer).activations
    split = np.array([t.split for t in tasks])
    train, val = split == "train", split == "val"
    labels = feature_labels(tasks)
    features = train_features(reader, layer, h[train], h[val],
                              {name: (desc, y[train], y[val]) for name, (desc, y) in labels.items()}, seed=seed)
    acts = features.activations(h).double().numpy()
    mean, scale = acts[train].mean(0), acts[train].std(0) + 1e-6
    z = (acts - mean) / scale
    q = utility_matrix(quality, tasks, experts)
    best = q.argmax(1)
    fallback = list(experts)[int(q[train].mean(0).argmax())]
    candidates = []
    for c in c_grid:
        if len(set(best[train])) < 2:
            coef, intercept = np.zeros((len(experts), z.shape[1])), np.where(np.arange(len(experts)) == best[train][0], 0.0, -30.0)
        else:
            coef, intercept = fit_decision_model(z[train], best[train], len(experts), c, seed)
        router = Router(features, list(experts), dict(fingerprints), coef, intercept, mean, scale, fallback,
                        threshold=threshold, costs=dict(costs), rules=list(rules),
                        notes={"c": c, "seed": seed, "n_train": int(train.sum()), "layer": layer})
        choice = np.array(router.choose(h[val]))
        candidates.append((float(q[val][np.arange(val.sum()), choice].mean()), -c, router))
    return max(candidates, key=lambda x: (x[0], x[1]))[2]

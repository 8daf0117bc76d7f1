"""Features checked on data written apart from their training data before they ship.

The outside set (`steer/data/router/probe_set.jsonl`) was written separately from the task set's templates: other
wording, raw continuations, gendered subjects and hostile, firm or polite tones in every domain. HumanEval's
problems, when their answers are graded, add outside code queries and outside `passes:<expert>` labels. A feature
ships only with an outside AUROC of at least `MIN_OUTSIDE_AUROC`; of two features whose directions have a cosine
of `MAX_COSINE` or more, only the one with the higher outside AUROC ships.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from steer.datasets import read_text
from steer.router import DATA
from steer.router.features import FeatureSet

OUTSIDE_SET = DATA / "probe_set.jsonl"
MIN_OUTSIDE_AUROC = 0.9
MAX_COSINE = 0.9
PROPERTY_KEYS = {"gendered_subject": "gendered_subject", "hostile_tone": "hostile"}


@dataclass(frozen=True)
class OutsideSet:
    """Queries and, per feature name, a label per query (NaN where the label is not defined for it)."""

    queries: list[str]
    labels: dict[str, np.ndarray]

    def __add__(self, other: OutsideSet) -> OutsideSet:
        n, m = len(self.queries), len(other.queries)
        names = sorted(set(self.labels) | set(other.labels))
        pad = lambda labels, k, name: labels.get(name, np.full(k, np.nan))  # noqa: E731
        return OutsideSet(self.queries + other.queries,
                          {name: np.concatenate([pad(self.labels, n, name), pad(other.labels, m, name)]) for name in names})


def load_outside_set(path: str | Path = OUTSIDE_SET, domains: Sequence[str] = ()) -> OutsideSet:
    """The probe set with `domain:<d>` labels for every domain in `domains` and the property labels."""
    rows = [json.loads(line) for line in read_text(Path(path)).splitlines() if line.strip()]
    labels = {f"domain:{d}": np.array([float(r["domain"] == d) for r in rows]) for d in domains}
    labels |= {name: np.array([float(r[key]) for r in rows]) for name, key in PROPERTY_KEYS.items()}
    return OutsideSet([r["query"] for r in rows], labels)


def outside_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AUROC where the label is defined and both classes occur; None otherwise."""
    from sklearn.metrics import roc_auc_score

    defined = ~np.isnan(labels)
    if len(set(labels[defined].tolist())) < 2:
        return None
    return float(roc_auc_score(labels[defined], scores[defined]))


def cosines(features: FeatureSet) -> np.ndarray:
    unit = features.directions / features.directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (unit @ unit.T).numpy()


def select_features(features: FeatureSet, h_outside: torch.Tensor, outside: OutsideSet,
                    min_auroc: float = MIN_OUTSIDE_AUROC, max_cosine: float = MAX_COSINE) -> tuple[FeatureSet, list[dict]]:
    """The features that pass (outside AUROC recorded on each) and a row per feature saying why it ships or not."""
    acts = features.activations(h_outside).double().numpy()
    aurocs = [outside_auroc(acts[:, j], outside.labels[f.name]) if f.name in outside.labels else None
              for j, f in enumerate(features.features)]
    cos = cosines(features)
    report, keep = [], []
    for j, feature in enumerate(features.features):
        auroc = aurocs[j]
        row = {"feature": feature.name, "heldout_auroc": feature.heldout_auroc, "outside_auroc": auroc,
               "n_outside": int((~np.isnan(outside.labels[feature.name])).sum()) if feature.name in outside.labels else 0}
        if min_auroc > 0 and (auroc is None or auroc < min_auroc):
            row["ships"], row["why"] = False, ("no outside labels" if auroc is None else f"outside AUROC below {min_auroc}")
        else:
            twins = [i for i in keep if cos[i, j] >= max_cosine]
            better = [i for i in twins if (aurocs[i] or 0) >= (auroc or 0)]
            if better:
                row["ships"] = False
                row["why"] = f"direction cosine {cos[better[0], j]:.2f} with {features.features[better[0]].name}"
            else:
                keep = [i for i in keep if i not in twins] + [j]
                row["ships"], row["why"] = True, "passes"
        report.append(row)
    for row in report:  # a feature displaced later by a better twin
        if row["ships"] and features.names.index(row["feature"]) not in keep:
            row["ships"], row["why"] = False, f"a better twin with direction cosine >= {max_cosine}"
    keep.sort()
    kept = [replace(features.features[j], outside_auroc=aurocs[j]) for j in keep]
    return replace(features, features=kept, directions=features.directions[keep], biases=features.biases[keep]), report

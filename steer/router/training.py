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
from steer.router.validation import MIN_OUTSIDE_AUROC, OutsideSet, load_outside_set, select_features

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


TIE_BREAK = 1e-3  # utility taken per unit of relative cost: between equal grades the cheaper expert is best


def quality_matrix(quality: pd.DataFrame, tasks: Sequence[Task], experts: Sequence[str], column: str = "score") -> np.ndarray:
    """(tasks, experts) values of one quality column (default: the grade of the expert's answer)."""
    table = quality.pivot_table(index="task_id", columns="expert", values=column, dropna=False)
    missing = [e for e in experts if e not in table.columns] + [t.id for t in tasks if t.id not in table.index]
    if missing:
        raise SteerlabError(f"the quality table lacks {', '.join(map(str, missing[:5]))}")
    return table.loc[[t.id for t in tasks], list(experts)].to_numpy(dtype=float)


def relative_costs(quality: pd.DataFrame, experts: Sequence[str]) -> np.ndarray:
    """Each expert's parameters over the largest one's (the cost a routed call pays, per token)."""
    params = quality.groupby("expert").n_params.first().reindex(list(experts)).to_numpy(dtype=float)
    return params / params.max()


def answer_costs(quality: pd.DataFrame, tasks: Sequence[Task], experts: Sequence[str]) -> np.ndarray:
    """(tasks, experts) cost of each expert's own answer: its parameters × (prompt + answer tokens)."""
    params = quality.groupby("expert").n_params.first().reindex(list(experts)).to_numpy(dtype=float)
    return params * (quality_matrix(quality, tasks, experts, "prompt_tokens")
                     + quality_matrix(quality, tasks, experts, "answer_tokens"))


def utility_matrix(quality: pd.DataFrame, tasks: Sequence[Task], experts: Sequence[str]) -> np.ndarray:
    """What routing maximizes: the grade of the expert's own answer; between equal grades, the cheaper expert."""
    return quality_matrix(quality, tasks, experts) - TIE_BREAK * relative_costs(quality, experts)


PASS_GRADE = 0.5  # an answer graded at least this passes (the `passes:<expert>` features' label)


def graded_outside_set(tasks: Sequence[Task], quality: pd.DataFrame, experts: Sequence[str],
                       domains: Sequence[str]) -> OutsideSet:
    """Outside queries whose answers were graded (e.g. HumanEval): their domain labels, no gendered subject or hostile
    tone (HumanEval's problems have neither), and `passes:<expert>` from the grades."""
    labels = {f"domain:{d}": np.array([float(t.domain == d) for t in tasks]) for d in domains}
    labels |= {"gendered_subject": np.zeros(len(tasks)), "hostile_tone": np.zeros(len(tasks))}
    labels |= {name: y.astype(float) for name, (_, y) in pass_labels(quality_matrix(quality, tasks, experts), experts).items()}
    return OutsideSet([t.query for t in tasks], labels)


def pass_labels(grades: np.ndarray, experts: Sequence[str]) -> dict[str, tuple[str, np.ndarray]]:
    """Named labels `passes:<expert>`: the expert's own answer to the query is graded at least PASS_GRADE."""
    return {f"passes:{e}": (f"{e}'s answer passes (graded >= {PASS_GRADE:g})", (grades[:, i] >= PASS_GRADE).astype(int))
            for i, e in enumerate(experts)}


def routed_grades(coef: np.ndarray, intercept: np.ndarray, z: np.ndarray, utility: np.ndarray) -> np.ndarray:
    """The utility of the expert each row's highest expected grade picks."""
    choice = (z @ coef.T + intercept).argmax(1)  # the sigmoid is monotone: the highest logit is the highest grade
    return utility[np.arange(len(z)), choice]


def choose_penalty(z: np.ndarray, grades: np.ndarray, utility: np.ndarray, rows: np.ndarray, c_grid: Sequence[float],
                   folds: int = 5, seed: int = 0) -> tuple[float, dict[float, float]]:
    """The L1 strength with the best mean routed utility over k-fold cross-validation on `rows`, stratified by the
    best expert (ties go to the stronger penalty, the sparser model), and every candidate's score."""
    from sklearn.model_selection import StratifiedKFold

    best = utility.argmax(1)
    n_splits = max(2, min(folds, int(np.bincount(best[rows]).max())))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = {}
    for c in c_grid:
        routed = []
        for fit, held in splitter.split(rows, best[rows]):
            fit, held = rows[fit], rows[held]
            coef, intercept = fit_decision_model(z[fit], grades[fit], c, seed)
            routed.append(routed_grades(coef, intercept, z[held], utility[held]))
        scores[float(c)] = float(np.concatenate(routed).mean())
    chosen = max(scores, key=lambda c: (round(scores[c], 9), -c))
    return chosen, scores


def train_router(reader: Expert, tasks: Sequence[Task], quality: pd.DataFrame, experts: Sequence[str], *,
                 fingerprints: dict[str, str], costs: dict[str, float], layer: int = 12, seed: int = 0,
                 rules: Sequence[Rule] = (), threshold: float = 0.0, outside: OutsideSet | None = None,
                 min_outside_auroc: float = MIN_OUTSIDE_AUROC,
                 c_grid: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0)) -> Router:
    """Named features on the train split (AUROC on val): the domains, the properties, and one `passes:<expert>`
    probe per expert. Only features that pass on the `outside` set ship (`select_features`; default: the probe set
    written apart), and only the `rules` on shipped features. The decision model (each expert's expected grade) has
    its L1 strength chosen by cross-validated routed utility on train + val, then is fitted on train + val; the
    test split is never seen."""
    if not 0 <= layer < reader.n_layers:
        raise SteerlabError(f"reader layer {layer} is out of range; {reader.name} has layers 0..{reader.n_layers - 1}")
    h = read(reader, [t.query for t in tasks], layer).activations
    split = np.array([t.split for t in tasks])
    train, val = split == "train", split == "val"
    grades, q = quality_matrix(quality, tasks, experts), utility_matrix(quality, tasks, experts)
    labels = feature_labels(tasks)
    labels |= {name: (desc, y) for name, (desc, y) in pass_labels(grades, experts).items() if len(set(y[train])) == 2}
    candidates = train_features(reader, layer, h[train], h[val],
                                {name: (desc, y[train], y[val]) for name, (desc, y) in labels.items()}, seed=seed)
    outside = outside or load_outside_set(domains=sorted({t.domain for t in tasks}))
    features, validation = select_features(candidates, read(reader, outside.queries, layer).activations, outside,
                                           min_auroc=min_outside_auroc)
    if not features.features:
        raise SteerlabError(f"no feature passed on the outside set (outside AUROC >= {min_outside_auroc}): "
                            + "; ".join(f"{r['feature']} {r['why']}" for r in validation))
    why = {r["feature"]: r["why"] for r in validation}
    dropped = [{"when": r.when, "file": r.file, "why": f"its feature is not shipped ({why.get(r.when, 'unknown feature')})"}
               for r in rules if r.when not in features.names]
    rules = [r for r in rules if r.when in features.names]
    acts = features.activations(h).double().numpy()
    fit = np.flatnonzero(train | val)
    mean, scale = acts[fit].mean(0), acts[fit].std(0) + 1e-6
    z = (acts - mean) / scale
    c, scores = choose_penalty(z, grades, q, fit, c_grid, seed=seed)
    coef, intercept = fit_decision_model(z[fit], grades[fit], c, seed)
    fallback = list(experts)[int(q[fit].mean(0).argmax())]
    return Router(features, list(experts), dict(fingerprints), coef, intercept, mean, scale, fallback,
                  threshold=threshold, costs=dict(costs), rules=list(rules),
                  notes={"c": c, "cv_utility": scores, "seed": seed, "n_fit": int(len(fit)), "layer": layer,
                         "feature_validation": validation, "min_outside_auroc": min_outside_auroc,
                         "dropped_rules": dropped,
                         "n_outside": len(outside.queries)})

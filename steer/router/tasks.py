"""The router's task set: queries with reference answers (code tasks also with unit tests), near
duplicates removed, split train/val/test within each domain."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steer.datasets import read_text
from steer.errors import BadDataError
from steer.router import DATA, DEFAULT_ROUTER  # noqa: F401 (re-exported: where the shipped data and router are)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    id: str
    domain: str
    query: str
    reference: str
    gendered_subject: int = 0
    hostile: int = 0
    function: str = ""
    tests: str = ""
    split: str = ""
    template: str = ""  # the wording the query comes from: splits keep templates apart


def load_tasks(path: str | Path = DATA / "tasks.jsonl") -> list[Task]:
    """JSONL tasks (`id`, `domain`, `query`, `reference`, optional labels and `tests`)."""
    known = set(Task.__dataclass_fields__)
    tasks = []
    for number, line in enumerate(read_text(Path(path)).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            task = Task(**{k: v for k, v in row.items() if k in known})  # other keys are notes for people
        except (json.JSONDecodeError, TypeError) as error:
            raise BadDataError(f"{path}:{number}: not a task ({error})") from None
        if not task.query.strip() or not task.reference.strip():
            raise BadDataError(f"{path}:{number}: task {task.id!r} needs a query and a reference")
        tasks.append(task)
    if len({t.id for t in tasks}) != len(tasks):
        raise BadDataError(f"{path}: task ids are not unique")
    return tasks


def remove_near_duplicates(tasks: Sequence[Task], threshold: float = 0.9) -> list[Task]:
    """Drop each task whose query's TF-IDF cosine with an earlier kept query is ≥ `threshold`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer(ngram_range=(1, 2)).fit_transform([t.query for t in tasks])
    similarity = (matrix @ matrix.T).toarray()
    kept: list[int] = []
    for i in range(len(tasks)):
        if all(similarity[i, j] < threshold for j in kept):
            kept.append(i)
    return [tasks[i] for i in kept]


def split_tasks(tasks: Sequence[Task], fractions: tuple[float, float] = (0.6, 0.2), seed: int = 0) -> list[Task]:
    """Assign train/val/test within each domain, by template where tasks name one (no template in two splits:
    templates are shuffled, then given to train until it holds `fractions[0]` of the domain's tasks, then to val,
    the rest to test; each split gets at least one template when the domain has three), else task by task."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    out: dict[str, Task] = {}
    for domain in sorted({t.domain for t in tasks}):
        group = [t for t in tasks if t.domain == domain]
        templated = all(t.template for t in group)
        key = (lambda t: t.template) if templated else (lambda t: t.id)
        units = sorted({t.template for t in group}) if templated else [t.id for t in group]
        sizes = {u: sum(key(t) == u for t in group) for u in units}
        order = [units[i] for i in rng.permutation(len(units))]
        split_of, seen = {}, 0
        for rank, unit in enumerate(order):
            left = len(order) - rank
            if seen < fractions[0] * len(group) and not (len(order) >= 3 and left <= 2 and "train" in split_of.values()):
                split_of[unit] = "train"
            elif seen < sum(fractions) * len(group) and not (left <= 1 and "val" in split_of.values()):
                split_of[unit] = "val"
            else:
                split_of[unit] = "test"
            seen += sizes[unit]
        for t in group:
            out[t.id] = replace(t, split=split_of[key(t)])
    return [out[t.id] for t in tasks]


def task_set(path: str | Path = DATA / "tasks.jsonl", seed: int = 0) -> list[Task]:
    """Load, de-duplicate and split."""
    return split_tasks(remove_near_duplicates(load_tasks(path)), seed=seed)


def load_paraphrases(path: str | Path = DATA / "paraphrases.jsonl") -> dict[str, str]:
    """Task id -> a paraphrased query."""
    rows = [json.loads(line) for line in read_text(Path(path)).splitlines() if line.strip()]
    return {r["id"]: r["query"] for r in rows}

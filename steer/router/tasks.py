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
    """Assign train/val/test within each domain (the rest after train and val is test)."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    out: dict[str, Task] = {}
    for domain in sorted({t.domain for t in tasks}):
        group = [t for t in tasks if t.domain == domain]
        order = rng.permutation(len(group))
        n_train, n_val = round(fractions[0] * len(group)), round(fractions[1] * len(group))
        for rank, index in enumerate(order):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            out[group[index].id] = replace(group[index], split=split)
    return [out[t.id] for t in tasks]


def task_set(path: str | Path = DATA / "tasks.jsonl", seed: int = 0) -> list[Task]:
    """Load, de-duplicate and split."""
    return split_tasks(remove_near_duplicates(load_tasks(path)), seed=seed)


def load_paraphrases(path: str | Path = DATA / "paraphrases.jsonl") -> dict[str, str]:
    """Task id -> a paraphrased query."""
    rows = [json.loads(line) for line in read_text(Path(path)).splitlines() if line.strip()]
    return {r["id"]: r["query"] for r in rows}

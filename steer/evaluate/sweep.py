"""Honest evaluation of a steering vector over coefficients, with baselines.

For each coefficient c: the behaviour score of continuations of neutral prompts, their
perplexity under the unsteered expert, the KL from the unsteered next-token distribution, and
paired statistics against c = 0 per prompt (bootstrap CI, d_z, Wilcoxon, the share of prompts
moved the wrong way). Baselines on the same prompts and seeds: a random vector of equal norm at
each layer, and prompting (an instruction prefix for each direction).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from experts.errors import EmptyPromptsError
from experts.expert import Expert
from experts.generate import GenerationSettings, row_seed
from experts.likelihood import continuation_nll, next_token_logprobs
from steer.evaluate.scorers import Scorer
from steer.evaluate.stats import paired_summary
from steer.scale.checkpoint import run_grid
from steer.scale.jobs import Executor, Shard, carried_files, saved_bytes, worker_expert
from steer.vectors.apply import Steering, apply, default_sweep_coefs
from steer.vectors.vector import SteeringVector


@dataclass(frozen=True)
class SweepConfig:
    coefs: tuple[float, ...] | None = None  # None: `default_sweep_coefs(operator)`
    max_new_tokens: int = 48
    samples: int = 1
    seed: int = 0
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.9
    positions: str = "all"
    operator: str = "add"
    batch_size: int = 8
    random_baseline: bool = True
    instructions: tuple[str, str] | None = None  # (towards positive, towards negative) for prompting

    def __post_init__(self) -> None:
        if self.coefs is None:
            object.__setattr__(self, "coefs", default_sweep_coefs(self.operator))


def random_like(vector: SteeringVector, seed: int) -> SteeringVector:
    """A random direction with the same norm at each layer."""
    g = torch.Generator().manual_seed(seed)
    directions = {}
    for layer, direction in vector.directions.items():
        r = torch.randn(direction.shape, generator=g)
        directions[layer] = r / r.norm() * direction.norm()
    return replace(vector, directions=directions, provenance=replace(vector.provenance, method=f"random(seed={seed})"))


ROWS = "sweep_rows.jsonl"  # the checkpoint: rows as their shards finish, in a resumable folder
COLUMNS = ["condition", "coef", "prompt_id", "prompt", "sample", "score", "perplexity", "kl_first_token", "n_tokens", "text"]


def sweep_settings(config: SweepConfig) -> list[dict[str, Any]]:
    """Every (condition, coef) run: the unsteered baseline, the vector and a random vector at each coefficient
    other than 0, and prompting towards each direction."""
    settings = [{"condition": "baseline", "coef": 0.0}]
    for c in config.coefs:
        if c != 0:
            settings.append({"condition": "vector", "coef": float(c)})
            if config.random_baseline:
                settings.append({"condition": "random", "coef": float(c)})
    if config.instructions:
        settings += [{"condition": "prompting", "coef": 1.0}, {"condition": "prompting", "coef": -1.0}]
    return settings


@dataclass(frozen=True)
class _SweepState:
    expert: Expert
    vectors: dict[str, SteeringVector]  # "vector" and "random"
    base_formatted: list[str]
    base_logprobs: torch.Tensor


@dataclass(frozen=True)
class SweepJob:
    """A sweep as a job for any executor; it carries the vector file's bytes."""

    expert: str
    fingerprint: str
    vector: bytes
    prompts: tuple[str, ...]
    config: SweepConfig

    def setup(self, expert: Expert | None = None) -> _SweepState:
        expert = worker_expert(self.expert, self.fingerprint, expert)
        with carried_files({"vector": self.vector}) as paths:
            vector = SteeringVector.load(paths["vector"], expert, force=True)  # the caller checked it, or forced it
        base_formatted = expert.format_prompts(list(self.prompts))
        return _SweepState(expert, {"vector": vector, "random": random_like(vector, self.config.seed + 1)},
                           base_formatted, next_token_logprobs(expert, base_formatted))

    def _prompt(self, condition: str, coef: float, i: int) -> str:
        if condition != "prompting":
            return self.prompts[i]
        positive, negative = self.config.instructions
        return f"{positive if coef > 0 else negative} {self.prompts[i]}"

    def run(self, state: _SweepState, shard: Shard) -> list[dict[str, Any]]:
        """Generate a shard's (prompt, sample) rows under its condition; perplexity under the unsteered expert
        and the first-token KL from it. Scores are added by the caller."""
        config, expert, items = self.config, state.expert, shard["items"]
        condition, coef = shard["condition"], shard["coef"]
        ids = sorted({i for i, _ in items})
        formatted = dict(zip(ids, expert.format_prompts([self._prompt(condition, coef, i) for i in ids])))
        settings = GenerationSettings(max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                                    temperature=config.temperature, top_p=config.top_p, seed=config.seed)
        seeds = [row_seed(config.seed, self._prompt(condition, coef, i), s) for i, s in items]
        steered = condition in state.vectors
        context = apply(expert, Steering(state.vectors[condition], coef=coef, operator=config.operator,
                                         positions=config.positions), force=True) if steered else nullcontext()
        with context:
            tokens, _ = expert.generate_batch([formatted[i] for i, _ in items], settings, seeds)
            logprobs = next_token_logprobs(expert, [formatted[i] for i in ids])
        base = state.base_logprobs[ids]
        kl = dict(zip(ids, (base.exp() * (base - logprobs)).sum(-1).clamp_min(0).tolist()))
        nll = continuation_nll(expert, [state.base_formatted[i] for i, _ in items], tokens)
        return [{"condition": condition, "coef": coef, "prompt_id": i, "prompt": self.prompts[i], "sample": s,
                 "perplexity": math.exp(nll[r]) if not math.isnan(nll[r]) else float("nan"), "kl_first_token": kl[i],
                 "n_tokens": len(tokens[r]), "text": expert.tokenizer.decode(tokens[r], skip_special_tokens=True)}
                for r, (i, s) in enumerate(items)]


def sweep(expert: Expert, vector: SteeringVector, prompts: Sequence[str], scorer: Scorer, config: SweepConfig,
          *, progress: bool = True, out: Path | None = None, executor: Executor | None = None,
          settings: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (one per condition × coefficient × prompt × sample) and a per-condition summary.

    Generation runs in shards on `executor` (default: this process); scores are computed here. With `out`,
    rows are checkpointed to `out/sweep_rows.jsonl` and a killed sweep resumes there; `settings` (e.g. the
    scorer's name) join the config in naming the run, so another sweep cannot resume into that folder."""
    prompts = list(prompts)
    if not prompts or any(not p.strip() for p in prompts):
        raise EmptyPromptsError()
    job = SweepJob(expert.name, expert.fingerprint, saved_bytes(vector), tuple(prompts), config)
    plan = sweep_settings(config)
    items = [(i, s) for i in range(len(prompts)) for s in range(config.samples)]

    def scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**row, "score": score} for row, score in zip(rows, scorer([r["text"] for r in rows]))]

    identity = {**config_dict(config), "prompts": prompts, "vector_sha256": hashlib.sha256(job.vector).hexdigest(),
                **(settings or {})}
    rows = run_grid(job, expert, out, ROWS, identity, plan, items, config.batch_size, executor=executor, finish=scored,
                    progress=progress, desc="sweep")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame, summarize(frame, config.seed)


def summarize(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per (condition, coef): mean score and paired difference from the unsteered run, with CI."""
    per_prompt = frame.groupby(["condition", "coef", "prompt_id"])["score"].mean()
    baseline = per_prompt.loc["baseline", 0.0]
    out = []
    for (condition, coef), group in frame.groupby(["condition", "coef"], sort=False):
        diffs = (per_prompt.loc[condition, coef] - baseline).to_numpy()
        summary = paired_summary(diffs, seed=seed)
        direction = np.sign(coef)
        out.append({
            "condition": condition, "coef": coef, "n_prompts": summary.n,
            "score": group["score"].mean(),
            "diff_vs_unsteered": summary.mean_diff, "ci_low": summary.ci_low, "ci_high": summary.ci_high,
            "d_z": summary.d_z, "wilcoxon_p": summary.wilcoxon_p, "ci_excludes_0": summary.excludes_zero,
            "spread_sd": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan"),
            "frac_wrong_way": float(np.mean(np.sign(diffs) == -direction)) if direction else float("nan"),
            "perplexity": group["perplexity"].median(), "kl_first_token": group["kl_first_token"].mean(),
        })
    return pd.DataFrame(out)


def config_dict(config: SweepConfig) -> dict:
    return asdict(config)

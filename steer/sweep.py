"""Honest evaluation of a steering vector over coefficients, with baselines.

For each coefficient c: the behaviour score of continuations of neutral prompts, their
perplexity under the unsteered expert, the KL from the unsteered next-token distribution, and
paired statistics against c = 0 per prompt (bootstrap CI, d_z, Wilcoxon, the share of prompts
moved the wrong way). Baselines on the same prompts and seeds: a random vector of equal norm at
each layer, and prompting (an instruction prefix for each direction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from experts.expert import Expert
from experts.likelihood import continuation_nll, next_token_logprobs
from steer.apply import Steering, apply
from steer.scorers import Scorer
from steer.stats import paired_summary
from steer.vector import SteeringVector


@dataclass(frozen=True)
class SweepConfig:
    coefs: tuple[float, ...] = (-8.0, -4.0, 0.0, 4.0, 8.0)
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


def random_like(vector: SteeringVector, seed: int) -> SteeringVector:
    """A random direction with the same norm at each layer."""
    g = torch.Generator().manual_seed(seed)
    directions = {}
    for layer, direction in vector.directions.items():
        r = torch.randn(direction.shape, generator=g)
        directions[layer] = r / r.norm() * direction.norm()
    return replace(vector, directions=directions, provenance=replace(vector.provenance, method=f"random(seed={seed})"))


def _run(expert: Expert, prompts: list[str], run_prompts: list[str], config: SweepConfig, steering: Steering | None,
         label: str, coef: float, scorer: Scorer, base_formatted: list[str], base_logprobs: torch.Tensor) -> list[dict]:
    """Generate for `run_prompts` (the prompts, or the prompts with an instruction) and score."""
    settings = dict(max_new_tokens=config.max_new_tokens, seed=config.seed, do_sample=config.do_sample,
                    temperature=config.temperature, top_p=config.top_p, num_samples=config.samples,
                    batch_size=config.batch_size)
    formatted = expert.format_prompts(run_prompts)
    if steering is None:
        result = expert.generate(run_prompts, **settings)
        logprobs = next_token_logprobs(expert, formatted)
    else:
        with apply(expert, steering, force=True):
            result = expert.generate(run_prompts, **settings)
            logprobs = next_token_logprobs(expert, formatted)
    kl = (base_logprobs.exp() * (base_logprobs - logprobs)).sum(-1).clamp_min(0).tolist()
    per_row_prompt = [i for i in range(len(prompts)) for _ in range(config.samples)]
    nll = continuation_nll(expert, [base_formatted[i] for i in per_row_prompt], result.token_ids)
    scores = scorer(result.texts)
    return [
        {"condition": label, "coef": coef, "prompt_id": i, "prompt": prompts[i], "sample": result.sample_index[r],
         "score": scores[r], "perplexity": math.exp(nll[r]) if not math.isnan(nll[r]) else float("nan"),
         "kl_first_token": kl[i], "n_tokens": len(result.token_ids[r]), "text": result.texts[r]}
        for r, i in enumerate(per_row_prompt)
    ]


def sweep(expert: Expert, vector: SteeringVector, prompts: Sequence[str], scorer: Scorer, config: SweepConfig,
          *, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (one per condition × coefficient × prompt × sample) and a per-condition summary."""
    prompts = list(prompts)
    base_formatted = expert.format_prompts(prompts)
    base_logprobs = next_token_logprobs(expert, base_formatted)
    runs: list[tuple[str, float, Steering | None, list[str]]] = [("baseline", 0.0, None, prompts)]
    random_vector = random_like(vector, config.seed + 1)
    for c in config.coefs:
        if c == 0:
            continue
        runs.append(("vector", c, Steering(vector, coef=c, operator=config.operator, positions=config.positions), prompts))
        if config.random_baseline:
            runs.append(("random", c, Steering(random_vector, coef=c, operator=config.operator, positions=config.positions), prompts))
    if config.instructions:
        positive, negative = config.instructions
        runs.append(("prompting", 1.0, None, [f"{positive} {p}" for p in prompts]))
        runs.append(("prompting", -1.0, None, [f"{negative} {p}" for p in prompts]))
    rows: list[dict] = []
    for label, coef, steering, run_prompts in tqdm(runs, disable=not progress, desc="sweep", unit="run"):
        rows += _run(expert, prompts, run_prompts, config, steering, label, coef, scorer, base_formatted, base_logprobs)
    frame = pd.DataFrame(rows)
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

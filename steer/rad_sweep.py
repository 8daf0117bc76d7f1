"""Evaluate controlled decoding over a grid of strengths, for one or several methods under one
decoding setting (top-k sampling, same prompts and seeds): reward-augmented decoding (β) with any
reward kind, and steering vectors (coefficient).

Per row: an evaluator independent of the reward, the perplexity of the text under the plain
expert, the total-variation distance between the decoding distribution and the plain top-k
distribution (every generated step; RAD only, since steering changes the forward pass itself) and
dist-1/2/3. Paired against strength 0 per prompt (plain top-k sampling, shared by all methods),
with bootstrap CIs. `matched_fluency` picks each method's strongest setting within a perplexity
budget, so methods are compared at equal fluency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from experts.expert import Expert
from experts.generate import DecodeState, GenerationConfig, LogitsHook, generate
from experts.likelihood import continuation_nll
from steer.apply import Steering, apply
from steer.rad import CandidateReward, reward_decoding
from steer.scorers import Scorer
from steer.stats import paired_summary
from steer.vector import SteeringVector

Decoding = Callable[[float], AbstractContextManager[LogitsHook | None]]


@dataclass(frozen=True)
class Method:
    """A named way to control decoding at a strength: yields a logits hook (or None) for `generate`."""

    name: str
    strength: str  # what the strength is called: "beta" or "coef"
    decoding: Decoding


def rad_method(expert: Expert, reward: CandidateReward, top_k: int, name: str | None = None) -> Method:
    return Method(name or getattr(reward, "kind", "reward"), "beta", lambda beta: reward_decoding(expert, reward, beta, top_k))


def steering_method(expert: Expert, vector: SteeringVector, name: str = "steering", positions: str = "all") -> Method:
    @contextmanager
    def steered(coef: float) -> Iterator[None]:
        with apply(expert, Steering(vector, coef=coef, positions=positions), force=True):
            yield None

    return Method(name, "coef", steered)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of the texts (higher = more diverse)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def _run(expert: Expert, prompts: list[str], hook: LogitsHook | None, config: GenerationConfig,
         batch_size: int) -> tuple[list[list[int]], list[str], list[float]]:
    """Generate; with a logits hook, also the mean TV distance to the plain top-k distribution per row."""
    per_batch: list[list[torch.Tensor]] = []

    def measured(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        out = hook(logits, state)
        if state.step == 0:
            per_batch.append([])
        plain = logits.float()
        if config.top_k:
            kth = plain.topk(config.top_k, dim=-1).values[:, -1:]
            plain = plain.masked_fill(plain < kth, float("-inf"))
        per_batch[-1].append(0.5 * (plain.softmax(-1) - out.float().softmax(-1)).abs().sum(-1).cpu())
        return out

    result = generate(expert, prompts, config, batch_size=batch_size, logits_hook=measured if hook else None)
    if hook is None:
        return result.token_ids, result.texts, [float("nan")] * len(result.texts)
    tv_rows = torch.cat([torch.stack(steps, dim=1) for steps in per_batch])  # (rows, steps)
    tv = [float(tv_rows[r, : max(len(ids), 1)].mean()) for r, ids in enumerate(result.token_ids)]
    return result.token_ids, result.texts, tv


def compare(expert: Expert, methods: Sequence[Method], strengths: dict[str, Sequence[float]], prompts: Sequence[str],
            evaluator: Scorer, *, top_k: int = 20, max_new_tokens: int = 48, samples: int = 1, seed: int = 0,
            batch_size: int = 8, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (method × strength × prompt × sample) and a per-(method, strength) summary. Strength 0
    of every method is plain top-k sampling, generated once and shared as the paired baseline."""
    prompts = list(prompts)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, top_k=top_k, seed=seed, num_samples=samples)
    formatted = expert.format_prompts(prompts)
    owners = [i for i in range(len(prompts)) for _ in range(samples)]
    runs = [(None, 0.0)] + [(m, float(s)) for m in methods for s in sorted(set(map(float, strengths[m.name]))) if s != 0]
    rows = []
    for method, strength in tqdm(runs, disable=not progress, desc="compare", unit="setting"):
        if method is None:
            ids, texts, tv = _run(expert, prompts, None, config, batch_size)
            tv = [0.0] * len(tv)  # plain top-k sampling against itself
        else:
            with method.decoding(strength) as hook:
                ids, texts, tv = _run(expert, prompts, hook, config, batch_size)
        nll = continuation_nll(expert, [formatted[i] for i in owners], ids)
        scores = evaluator(texts)
        names = [m.name for m in methods] if method is None else [method.name]
        rows += [{"method": name, "strength": strength, "prompt_id": i, "prompt": prompts[i], "sample": r % samples,
                  "score": scores[r], "perplexity": math.exp(nll[r]), "tv_distance": tv[r], "n_tokens": len(ids[r]),
                  "text": texts[r]} for name in names for r, i in enumerate(owners)]
    frame = pd.DataFrame(rows)
    return frame, summarize(frame, seed)


def summarize(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per (method, strength): mean score, paired Δ vs strength 0 with its CI, fluency and diversity."""
    per_prompt = frame.groupby(["method", "strength", "prompt_id"])["score"].mean()
    summary = []
    for (method, strength), part in frame.groupby(["method", "strength"], sort=False):
        diffs = per_prompt.loc[(method, strength)] - per_prompt.loc[(method, 0.0)]
        stats = paired_summary(diffs.to_numpy(), seed=seed)
        summary.append({"method": method, "strength": strength, "score": part.score.mean(), "diff": stats.mean_diff,
                        "ci_low": stats.ci_low, "ci_high": stats.ci_high, "d_z": stats.d_z,
                        "ci_excludes_0": stats.excludes_zero, "median_perplexity": part.perplexity.median(),
                        "tv_distance": part.tv_distance.mean(),
                        **{f"dist_{n}": distinct_n(part.text.tolist(), n) for n in (1, 2, 3)}})
    return pd.DataFrame(summary).sort_values(["method", "strength"], ignore_index=True)


def matched_fluency(summary: pd.DataFrame, max_perplexity: float) -> pd.DataFrame:
    """Each method's strongest setting whose median perplexity stays within `max_perplexity`."""
    within = summary[(summary.strength != 0) & (summary.median_perplexity <= max_perplexity)]
    best = within.sort_values("strength").groupby("method").tail(1)
    return best.sort_values("diff", ascending=False, ignore_index=True)


def rad_sweep(expert: Expert, reward: CandidateReward, prompts: Sequence[str], betas: Sequence[float],
              evaluator: Scorer, *, top_k: int = 20, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`compare` for one reward over β (0 always included); columns `beta` and `diff_vs_beta0` as well."""
    method = rad_method(expert, reward, top_k)
    rows, summary = compare(expert, [method], {method.name: betas}, prompts, evaluator, top_k=top_k, **kwargs)
    rename = {"strength": "beta", "diff": "diff_vs_beta0"}
    return rows.rename(columns={"strength": "beta"}), summary.rename(columns=rename)

"""Evaluation of reward-augmented decoding over β: an evaluator independent of the reward, the
perplexity of the text under the plain expert, the total-variation distance between the
decoding distribution and the plain next-token distribution (measured at every generated step),
and dist-1/2/3; paired against β = 0 per prompt, with bootstrap CIs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from experts.expert import Expert
from experts.generate import DecodeState, GenerationConfig, generate
from experts.likelihood import continuation_nll
from steer.rad import CandidateReward, reward_decoding
from steer.scorers import Scorer
from steer.stats import paired_summary


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of the texts (higher = more diverse)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def _run(expert: Expert, prompts: list[str], reward: CandidateReward, beta: float, top_k: int,
         config: GenerationConfig, batch_size: int) -> tuple[list[list[int]], list[str], list[float]]:
    per_batch: list[list[torch.Tensor]] = []
    with reward_decoding(expert, reward, beta, top_k) as augment:
        def measured(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
            out = augment(logits, state)
            if state.step == 0:
                per_batch.append([])
            per_batch[-1].append(0.5 * (logits.float().softmax(-1) - out.float().softmax(-1)).abs().sum(-1).cpu())
            return out

        result = generate(expert, prompts, config, batch_size=batch_size, logits_hook=measured)
    tv_rows = torch.cat([torch.stack(steps, dim=1) for steps in per_batch])  # (rows, steps)
    tv = [float(tv_rows[r, : max(len(ids), 1)].mean()) for r, ids in enumerate(result.token_ids)]
    return result.token_ids, result.texts, tv


def rad_sweep(expert: Expert, reward: CandidateReward, prompts: Sequence[str], betas: Sequence[float],
              evaluator: Scorer, *, top_k: int = 20, max_new_tokens: int = 48, samples: int = 1, seed: int = 0,
              batch_size: int = 8, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (β × prompt × sample) and a per-β summary; β = 0 (plain top-k sampling) is always included."""
    prompts = list(prompts)
    betas = sorted(set([0.0, *map(float, betas)]))
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, seed=seed, num_samples=samples)
    formatted = expert.format_prompts(prompts)
    rows = []
    for beta in tqdm(betas, disable=not progress, desc="rad sweep", unit="beta"):
        ids, texts, tv = _run(expert, prompts, reward, beta, top_k, config, batch_size)
        owners = [i for i in range(len(prompts)) for _ in range(samples)]
        nll = continuation_nll(expert, [formatted[i] for i in owners], ids)
        scores = evaluator(texts)
        rows += [{"beta": beta, "prompt_id": i, "prompt": prompts[i], "sample": r % samples, "score": scores[r],
                  "perplexity": math.exp(nll[r]), "tv_distance": tv[r], "n_tokens": len(ids[r]), "text": texts[r]}
                 for r, i in enumerate(owners)]
    frame = pd.DataFrame(rows)
    per_prompt = frame.groupby(["beta", "prompt_id"])["score"].mean()
    summary = []
    for beta, part in frame.groupby("beta"):
        stats = paired_summary((per_prompt.loc[beta] - per_prompt.loc[0.0]).to_numpy(), seed=seed)
        summary.append({"beta": beta, "score": part.score.mean(), "diff_vs_beta0": stats.mean_diff,
                        "ci_low": stats.ci_low, "ci_high": stats.ci_high, "d_z": stats.d_z,
                        "ci_excludes_0": stats.excludes_zero, "median_perplexity": part.perplexity.median(),
                        "tv_distance": part.tv_distance.mean(),
                        **{f"dist_{n}": distinct_n(part.text.tolist(), n) for n in (1, 2, 3)}})
    return frame, pd.DataFrame(summary)


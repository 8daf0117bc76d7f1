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

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from experts.errors import EmptyPromptsError, SteerlabError
from experts.expert import Expert
from experts.generate import DecodeState, GenerationSettings, LogitsHook, row_seed
from experts.likelihood import continuation_nll
from steer.evaluate.scorers import Scorer
from steer.evaluate.stats import paired_summary
from steer.rad.decoding import CandidateReward, reward_decoding
from steer.rad.rewards import load_reward
from steer.scale.checkpoint import run_grid
from steer.scale.jobs import Executor, LocalExecutor, Shard, carried_files, saved_bytes, worker_expert
from steer.vectors.apply import Steering, apply
from steer.vectors.vector import SteeringVector

Decoding = Callable[[float], AbstractContextManager[LogitsHook | None]]
ROWS = "compare_rows.jsonl"  # the checkpoint: rows as their shards finish, in a resumable folder
PLAIN = "plain top-k"  # strength 0 of every method: generated once, shared as the paired baseline
COLUMNS = ["method", "strength", "prompt_id", "prompt", "sample", "score", "perplexity", "tv_distance", "n_tokens", "text"]


@dataclass(frozen=True)
class Method:
    """A named way to control decoding at a strength: a reward (β of reward-augmented top-k decoding) or a
    steering vector (coefficient). `control` is the reward or vector itself, or its file's bytes."""

    name: str
    kind: str  # "reward" or "steering"
    control: Any
    top_k: int = 20
    positions: str = "all"

    @property
    def strength(self) -> str:
        """What the strength is called."""
        return "beta" if self.kind == "reward" else "coef"

    def portable(self) -> Method:
        """The same method with a file's bytes for a control that can be saved (what travels to other workers)."""
        if isinstance(self.control, bytes) or not hasattr(self.control, "save"):
            return self
        return replace(self, control=saved_bytes(self.control))

    def digest(self) -> str:
        control = self.portable().control
        return hashlib.sha256(control).hexdigest() if isinstance(control, bytes) else type(control).__name__

    def bind(self, expert: Expert) -> Decoding:
        """The decoding at a strength on `expert`: a context manager that yields a logits hook (or None)."""
        control = self.control
        if isinstance(control, bytes):
            with carried_files({"control": control}) as paths:  # the caller checked the file, or forced it
                load = load_reward if self.kind == "reward" else SteeringVector.load
                control = load(paths["control"], expert, force=True)
        if self.kind == "reward":
            return lambda beta: reward_decoding(expert, control, beta, self.top_k)

        @contextmanager
        def steered(coef: float) -> Iterator[None]:
            with apply(expert, Steering(control, coef=coef, positions=self.positions), force=True):
                yield None

        return steered


def rad_method(reward: CandidateReward, top_k: int = 20, name: str | None = None) -> Method:
    return Method(name or getattr(reward, "kind", "reward"), "reward", reward, top_k=top_k)


def steering_method(vector: SteeringVector, name: str = "steering", positions: str = "all") -> Method:
    return Method(name, "steering", vector, positions=positions)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of the texts (higher = more diverse)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


@dataclass(frozen=True)
class _CompareState:
    expert: Expert
    decodings: dict[str, Decoding]
    formatted: list[str]


@dataclass(frozen=True)
class CompareJob:
    """A comparison as a job for any executor: methods travel as file bytes (or picklable objects)."""

    expert: str
    fingerprint: str
    prompts: tuple[str, ...]
    methods: tuple[Method, ...]
    config: GenerationSettings

    def setup(self, expert: Expert | None = None) -> _CompareState:
        expert = worker_expert(self.expert, self.fingerprint, expert)
        return _CompareState(expert, {m.name: m.bind(expert) for m in self.methods},
                             expert.format_prompts(list(self.prompts)))

    def run(self, state: _CompareState, shard: Shard) -> list[dict[str, Any]]:
        """A shard's rows: perplexity under the plain expert and, for RAD, the mean TV distance to plain top-k.
        Scores are added by the caller."""
        expert, items, name, strength = state.expert, shard["items"], shard["method"], shard["strength"]
        formatted = [state.formatted[i] for i, _ in items]
        seeds = [row_seed(self.config.seed, self.prompts[i], s) for i, s in items]
        if name == PLAIN:
            tokens, tv = self._generate(expert, formatted, seeds, None)
            tv = [0.0] * len(tv)  # plain top-k sampling against itself
        else:
            with state.decodings[name](strength) as hook:
                tokens, tv = self._generate(expert, formatted, seeds, hook)
        nll = continuation_nll(expert, formatted, tokens)
        return [{"method": name, "strength": strength, "prompt_id": i, "prompt": self.prompts[i], "sample": s,
                 "perplexity": math.exp(nll[r]), "tv_distance": tv[r], "n_tokens": len(tokens[r]),
                 "text": expert.tokenizer.decode(tokens[r], skip_special_tokens=True)} for r, (i, s) in enumerate(items)]

    def _generate(self, expert: Expert, formatted: list[str], seeds: list[int],
                  hook: LogitsHook | None) -> tuple[list[list[int]], list[float]]:
        """Generate one batch; with a logits hook, also each row's mean TV distance to the plain top-k distribution."""
        steps: list[torch.Tensor] = []
        top_k = self.config.top_k

        def measured(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
            out = hook(logits, state)
            plain = logits.float()
            if top_k:
                kth = plain.topk(top_k, dim=-1).values[:, -1:]
                plain = plain.masked_fill(plain < kth, float("-inf"))
            steps.append(0.5 * (plain.softmax(-1) - out.float().softmax(-1)).abs().sum(-1).cpu())
            return out

        tokens, _ = expert.generate_batch(formatted, self.config, seeds, logits_hook=measured if hook else None)
        if hook is None:
            return tokens, [float("nan")] * len(tokens)
        tv_rows = torch.stack(steps, dim=1)  # (rows, steps)
        return tokens, [float(tv_rows[r, : max(len(ids), 1)].mean()) for r, ids in enumerate(tokens)]


def compare(expert: Expert, methods: Sequence[Method], strengths: dict[str, Sequence[float]], prompts: Sequence[str],
            evaluator: Scorer, *, top_k: int = 20, max_new_tokens: int = 48, samples: int = 1, seed: int = 0,
            batch_size: int = 8, progress: bool = True, out: Path | None = None, executor: Executor | None = None,
            settings: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (method × strength × prompt × sample) and a per-(method, strength) summary. Strength 0
    of every method is plain top-k sampling, generated once and shared as the paired baseline.

    Generation runs in shards on `executor` (default: this process); the evaluator scores here. Other backends
    get each method's file bytes, so their rows equal local rows for methods read from files. With `out`, rows
    are checkpointed to `out/compare_rows.jsonl` and a killed run resumes there."""
    prompts = list(prompts)
    if not prompts or any(not p.strip() for p in prompts):
        raise EmptyPromptsError()
    names = [m.name for m in methods]
    if len(set(names)) != len(names) or PLAIN in names:
        raise SteerlabError(f"method names must be distinct and not {PLAIN!r}; got {', '.join(names)}")
    if missing := [n for n in names if n not in strengths]:
        raise SteerlabError(f"no strengths given for {', '.join(missing)}")
    remote = not isinstance(executor or LocalExecutor(), LocalExecutor)
    config = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=True, top_k=top_k, seed=seed)
    job = CompareJob(expert.name, expert.fingerprint, tuple(prompts),
                     tuple(m.portable() if remote else m for m in methods), config)
    plan = [{"method": PLAIN, "strength": 0.0}] + [{"method": m.name, "strength": s} for m in methods
                                                   for s in sorted(set(map(float, strengths[m.name]))) if s != 0]
    items = [(i, s) for i in range(len(prompts)) for s in range(samples)]

    def scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**row, "score": score} for row, score in zip(rows, evaluator([r["text"] for r in rows]))]

    identity = {"prompts": prompts, "top_k": top_k, "max_new_tokens": max_new_tokens, "samples": samples, "seed": seed,
                "batch_size": batch_size, "plan": plan,
                "methods": {m.name: [m.kind, m.digest(), m.top_k, m.positions] for m in methods}, **(settings or {})}
    rows = run_grid(job, expert, out, ROWS, identity, plan, items, batch_size, executor=executor, finish=scored,
                    progress=progress, desc="compare")
    rows = [{**r, "method": name} for r in rows for name in (names if r["method"] == PLAIN else [r["method"]])]
    frame = pd.DataFrame(rows, columns=COLUMNS)
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
    method = rad_method(reward, top_k)
    rows, summary = compare(expert, [method], {method.name: betas}, prompts, evaluator, top_k=top_k, **kwargs)
    rename = {"strength": "beta", "diff": "diff_vs_beta0"}
    return rows.rename(columns={"strength": "beta"}), summary.rename(columns=rename)

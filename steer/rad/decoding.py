"""Reward-augmented decoding (RAD, Deng & Raffel 2023) on steerlab's generation loop.

At each step: the expert's top-k next tokens, a reward r ∈ [0, 1] for each, β·r added to those k
logits, every other token masked, then sampling (or greedy). The reward is any kind in
`steer.rad.rewards` (activation, look-ahead, external). Composes with steering (`steer.vectors.apply.apply`)
like any other generation, and is also usable as a transformers `LogitsProcessor`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor
from transformers import LogitsProcessor

from experts.errors import SteerlabError
from experts.generate import DecodeState, GenerationResult, GenerationSettings, LogitsHook
from steer.rad.rewards import StepScorer

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from experts.expert import Expert


class CandidateReward(Protocol):
    """Binds to the generating expert as a step scorer: (DecodeState, candidates (B, k)) -> (B, k)."""

    def bind(self, expert: Expert) -> AbstractContextManager[StepScorer]: ...

    def check_compatible(self, expert: Expert, force: bool = False) -> None: ...


Beta = float | Sequence[float]  # one β for every row, or one per prompt of the generate call


def check_settings(expert: Expert, beta: Beta, top_k: int, signed: bool = False) -> None:
    """β finite and ≥ 0 (per-row βs may be negative when `signed`: that row prefers low-reward tokens); top_k a
    vocabulary index."""
    vocab = expert.model.config.vocab_size
    values = [beta] if isinstance(beta, (int, float)) else list(beta)
    if not values or not all(math.isfinite(b) and (signed or b >= 0) for b in values):
        raise SteerlabError(f"beta must be finite and >= 0 (a reward raises its tokens), got {beta}")
    if not 1 <= top_k <= vocab:
        raise SteerlabError(f"top_k must be between 1 and the vocabulary size {vocab}, got {top_k}")


def _row_betas(beta: Beta) -> Callable[[Tensor, DecodeState], Tensor | float]:
    """β for each row of a step: the scalar, or (rows, 1) picked from the per-prompt βs."""
    if isinstance(beta, (int, float)):
        return lambda logits, state: float(beta)
    table = torch.tensor([float(b) for b in beta])

    def pick(logits: Tensor, state: DecodeState) -> Tensor:
        if state.n_prompts is not None and state.n_prompts != len(table):
            raise SteerlabError(f"{len(table)} per-row betas given for a call of {state.n_prompts} prompts")
        rows = state.rows if state.rows is not None else torch.arange(logits.shape[0])
        return table.to(device=logits.device, dtype=logits.dtype)[rows.to(logits.device)][:, None]

    return pick


@contextmanager
def reward_decoding(expert: Expert, reward: CandidateReward, beta: Beta, top_k: int = 20,
                    force: bool = False, signed: bool = False) -> Iterator[LogitsHook]:
    """Yield a logits hook for `generate`; whatever the reward needs (a reading hook, a reward
    expert's cache) lives exactly as long as the block. `beta` per prompt (a sequence) lets each row of one call
    decode with its own strength; with `signed`, a negative β makes its row prefer the low-reward tokens (β·r =
    |β|·(1 − r) − |β|: the same top-k ranking as the reward 1 − r)."""
    check_settings(expert, beta, top_k, signed)
    betas = _row_betas(beta)
    reward.check_compatible(expert, force=force)
    with reward.bind(expert) as scorer:
        def augment(logits: Tensor, state: DecodeState) -> Tensor:
            top = logits.topk(top_k, dim=-1)
            rewards = scorer(state, top.indices).to(logits.dtype)
            out = torch.full_like(logits, float("-inf"))
            return out.scatter(-1, top.indices, top.values + betas(logits, state) * rewards)

        yield augment


def rad_generate(expert: Expert, prompts: Sequence[str], reward: CandidateReward, *, beta: float, top_k: int = 20,
                 config: GenerationSettings | None = None, batch_size: int = 8, force: bool = False) -> GenerationResult:
    """`generate` with reward-augmented top-k decoding (sampling by default, as in RAD)."""
    config = config or GenerationSettings(do_sample=True)
    with reward_decoding(expert, reward, beta, top_k, force=force) as hook:
        return expert.generate(list(prompts), **config.keywords(), batch_size=batch_size, logits_hook=hook)


class RewardLogitsProcessor(LogitsProcessor):
    """RAD for `transformers` `model.generate(..., logits_processor=[processor])`.

    It tells a new `generate` call from the next step of the running one by whether the sequence
    it sees extends the previous one by one token. Look-ahead rewards need steerlab's loop.
    """

    def __init__(self, augment: LogitsHook) -> None:
        self.augment = augment
        self.previous: Tensor | None = None
        self.step = 0

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        prev = self.previous
        continues = prev is not None and input_ids.shape == (prev.shape[0], prev.shape[1] + 1) \
            and torch.equal(input_ids[:, :-1], prev)
        self.step = self.step + 1 if continues else 0
        self.previous = input_ids
        rows, width = input_ids.shape
        state = DecodeState(self.step, torch.full((rows, 1), width - 1, device=input_ids.device),
                            torch.ones((rows, 1), dtype=torch.bool, device=input_ids.device),
                            torch.full((rows,), width - self.step, device=input_ids.device),
                            all_valid=True, input_ids=input_ids[:, -1:])
        return self.augment(scores, state)


@contextmanager
def rad_logits_processor(expert: Expert, reward: CandidateReward, beta: float, top_k: int = 20,
                         force: bool = False) -> Iterator[RewardLogitsProcessor]:
    """A `RewardLogitsProcessor` whose hooks are removed when the block ends."""
    with reward_decoding(expert, reward, beta, top_k, force=force) as augment:
        yield RewardLogitsProcessor(augment)

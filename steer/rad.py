"""Reward-augmented decoding (RAD, Deng & Raffel 2023) on steerlab's generation loop.

At each step: the expert's top-k next tokens, a reward r ∈ [0, 1] for each, β·r added to those k
logits, every other token masked, then sampling (or greedy). With the activation reward the
hidden state comes from the same forward pass (a reading hook on `ln_final.hook_out`): no extra
pass. Composes with steering (`steer.apply.apply`) like any other generation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from experts.errors import SteerlabError
from experts.generate import DecodeState, GenerationConfig, GenerationResult, LogitsHook, generate, publish_state
from experts.hooks import hook_context
from steer.rewards import HOOK

if TYPE_CHECKING:
    from experts.expert import Expert


class CandidateReward(Protocol):
    """Scores (B, k) candidate tokens from the step's final hidden state (B, d)."""

    def score(self, hidden: Tensor, candidates: Tensor, embedding_matrix: Tensor) -> Tensor: ...

    def check_compatible(self, expert: Expert, force: bool = False) -> None: ...


def check_settings(expert: Expert, beta: float, top_k: int) -> None:
    vocab = expert.model.config.vocab_size
    if not beta >= 0:
        raise SteerlabError(f"beta must be >= 0 (a reward raises its tokens), got {beta}")
    if not 1 <= top_k <= vocab:
        raise SteerlabError(f"top_k must be between 1 and the vocabulary size {vocab}, got {top_k}")


@contextmanager
def reward_decoding(expert: Expert, reward: CandidateReward, beta: float, top_k: int = 20,
                    force: bool = False) -> Iterator[LogitsHook]:
    """Yield a logits hook for `generate`; the reading hook it needs lives exactly as long as the block."""
    check_settings(expert, beta, top_k)
    reward.check_compatible(expert, force=force)
    embeddings = expert.model.get_input_embeddings().weight.detach()
    last_hidden: dict[str, Tensor] = {}

    def read(h: Tensor) -> None:
        last_hidden["h"] = h[:, -1]  # left padding: the last position is every row's newest token

    lookahead = hasattr(reward, "probe")  # look-ahead: one batched step over the k candidates, no reading hook

    def augment(logits: Tensor, state: DecodeState) -> Tensor:
        top = logits.topk(top_k, dim=-1)
        if lookahead:
            rewards = _lookahead(expert, reward, state, top.indices).to(logits.dtype)
        else:
            rewards = reward.score(last_hidden["h"], top.indices, embeddings).to(logits.dtype)
        out = torch.full_like(logits, float("-inf"))
        return out.scatter(-1, top.indices, top.values + beta * rewards)

    with hook_context(expert.model, [] if lookahead else [(expert.hook_point(HOOK), read)]):
        yield augment


def _lookahead(expert: Expert, reward, state: DecodeState, candidates: Tensor) -> Tensor:
    """Score (B, k) candidates by the probe on the hidden state after reading each, on a tiled cache copy."""
    if state.past is None or state.attention_mask is None:
        raise SteerlabError("look-ahead rewards need steerlab's generation loop (its KV cache)")
    rows, k = candidates.shape
    cache = copy.deepcopy(state.past)
    cache.batch_repeat_interleave(k)
    mask = torch.cat([state.attention_mask, torch.ones_like(state.attention_mask[:, :1])], 1).repeat_interleave(k, 0)
    positions = (state.position_ids[:, -1:] + 1).repeat_interleave(k, 0)
    ahead = DecodeState(state.step + 1, positions, torch.ones_like(positions, dtype=torch.bool),
                        state.prompt_lengths.repeat_interleave(k, 0), all_valid=True)
    with publish_state(ahead):
        hidden = expert.model.model(input_ids=candidates.reshape(rows * k, 1), attention_mask=mask,
                                    position_ids=positions, past_key_values=cache, use_cache=True).last_hidden_state
    return reward.probe(hidden[:, -1]).reshape(rows, k)


def rad_generate(expert: Expert, prompts: Sequence[str], reward: CandidateReward, *, beta: float, top_k: int = 20,
                 config: GenerationConfig | None = None, batch_size: int = 8, force: bool = False) -> GenerationResult:
    """`generate` with reward-augmented top-k decoding (sampling by default, as in RAD)."""
    config = config or GenerationConfig(do_sample=True)
    with reward_decoding(expert, reward, beta, top_k, force=force) as hook:
        return generate(expert, list(prompts), config, batch_size=batch_size, logits_hook=hook)

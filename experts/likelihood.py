"""Likelihoods under an expert: per-token NLL of continuations and next-token distributions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from experts.generate import DecodeState, publish_state

if TYPE_CHECKING:
    from experts.expert import Expert


@torch.inference_mode()
def continuation_nll(
    expert: Expert, formatted_prompts: Sequence[str], continuations: Sequence[Sequence[int]], batch_size: int = 8
) -> list[float]:
    """Mean negative log-likelihood per continuation token (nan for an empty continuation)."""
    out: list[float] = []
    for start in range(0, len(continuations), batch_size):
        prompts = [expert.encode(p) for p in formatted_prompts[start : start + batch_size]]
        conts = [list(c) for c in continuations[start : start + batch_size]]
        batch = expert.pad([p + c for p, c in zip(prompts, conts)])
        width = batch.input_ids.shape[1]
        lengths = torch.tensor([len(p) for p in prompts], device=expert.device)
        with publish_state(DecodeState.for_batch(batch.attention_mask, prompt_lengths=lengths, input_ids=batch.input_ids)):
            logits = expert.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  position_ids=batch.position_ids).logits.float()
        logprobs = logits.log_softmax(-1)
        for i, (p, c) in enumerate(zip(prompts, conts)):
            if not c:
                out.append(float("nan"))
                continue
            first = width - len(c) - 1  # the position that predicts the first continuation token
            picked = logprobs[i, first : width - 1].gather(-1, torch.tensor(c, device=expert.device)[:, None])
            out.append(-picked.mean().item())
    return out


@torch.inference_mode()
def next_token_logprobs(expert: Expert, formatted_prompts: Sequence[str]) -> Tensor:
    """(batch, vocab) log-probabilities of the token after each prompt."""
    batch = expert.tokenize(formatted_prompts)
    with publish_state(DecodeState.for_batch(batch.attention_mask, input_ids=batch.input_ids)):
        logits = expert.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
            logits_to_keep=1,
        ).logits[:, -1].float()
    return logits.log_softmax(-1)

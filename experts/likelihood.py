"""Likelihoods under an expert: per-token NLL of continuations and next-token distributions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm.auto import tqdm

from experts.generate import DecodeState, publish_state

if TYPE_CHECKING:
    from experts.expert import Expert


@torch.inference_mode()
def continuation_nll(
    expert: Expert, formatted_prompts: Sequence[str], continuations: Sequence[Sequence[int]], batch_size: int = 8,
    progress: bool = False,
) -> list[float]:
    """Mean negative log-likelihood per continuation token (nan for an empty continuation).

    Rows are batched by length (less padding), and logits are computed only for the positions that predict a
    continuation token (left padding puts them last in every row), as logsumexp − the chosen logit."""
    prompts = [expert.encode(p) for p in formatted_prompts]
    conts = [list(c) for c in continuations]
    order = sorted(range(len(conts)), key=lambda i: len(prompts[i]) + len(conts[i]))
    out = [float("nan")] * len(conts)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="perplexity", unit="batch"):
        rows = [i for i in order[start : start + batch_size] if conts[i]]
        if not rows:
            continue
        batch = expert.pad([prompts[i] + conts[i] for i in rows])
        lengths = torch.tensor([len(prompts[i]) for i in rows], device=expert.device)
        keep = max(len(conts[i]) for i in rows) + 1  # the last `keep` positions hold every predicting position
        with publish_state(DecodeState.for_batch(batch.attention_mask, prompt_lengths=lengths, input_ids=batch.input_ids)):
            logits = expert.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  position_ids=batch.position_ids, logits_to_keep=keep).logits.float()
        for row, i in enumerate(rows):
            n = len(conts[i])
            predicting = logits[row, keep - n - 1 : keep - 1]  # the position before each continuation token
            chosen = predicting.gather(-1, torch.tensor(conts[i], device=predicting.device)[:, None])[:, 0]
            out[i] = (predicting.logsumexp(-1) - chosen).mean().item()
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

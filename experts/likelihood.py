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


def continuation_nll(
    expert: Expert, formatted_prompts: Sequence[str], continuations: Sequence[Sequence[int]], batch_size: int = 8,
    progress: bool = False,
) -> list[float]:
    """Mean negative log-likelihood per continuation token (nan for an empty continuation), given each prompt."""
    return _nll([expert.encode(p) for p in formatted_prompts], continuations, expert, batch_size, progress)


def text_nll(expert: Expert, texts: Sequence[str], batch_size: int = 8, max_tokens: int = 512,
             progress: bool = False) -> list[float]:
    """Mean negative log-likelihood per token of each text read as plain text (after the tokenizer's BOS token
    when it has one, else from its second token), its first `max_tokens` tokens: how fluent the text is to this
    expert. NaN for a text too short to have a predicted token."""
    bos = expert.tokenizer.bos_token_id
    ids = [expert.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens] for text in texts]
    prompts = [[bos] if bos is not None else row[:1] for row in ids]
    return _nll(prompts, [row if bos is not None else row[1:] for row in ids], expert, batch_size, progress)


def text_continuation_nll(expert: Expert, prefixes: Sequence[str], continuations: Sequence[str], batch_size: int = 8,
                          max_tokens: int = 128, progress: bool = False) -> list[float]:
    """Mean NLL per token of each continuation read as plain text after its prefix (joined by one space, after
    the tokenizer's BOS token when it has one), its first `max_tokens` tokens: how naturally the text goes on to
    this expert. NaN for an empty continuation."""
    bos = [] if expert.tokenizer.bos_token_id is None else [expert.tokenizer.bos_token_id]
    prompts, conts = [], []
    for prefix, continuation in zip(prefixes, continuations):
        head = expert.tokenizer(prefix.rstrip(), add_special_tokens=False)["input_ids"]
        whole = expert.tokenizer(prefix.rstrip() + " " + continuation.strip(), add_special_tokens=False)["input_ids"]
        shared = next((i for i, (a, b) in enumerate(zip(head, whole)) if a != b), min(len(head), len(whole)))
        prompts.append(bos + whole[:shared])
        conts.append(whole[shared:][:max_tokens] if continuation.strip() else [])
    return _nll(prompts, conts, expert, batch_size, progress)


@torch.inference_mode()
def _nll(prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], expert: Expert, batch_size: int,
         progress: bool) -> list[float]:
    """Rows are batched by length (less padding), and logits are computed only for the positions that predict a
    continuation token (left padding puts them last in every row), as logsumexp − the chosen logit."""
    prompts = [list(p) for p in prompts]
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

"""Per-row logit bias on chosen words: the decoding-time analogue of per-row steering.

`word_tokens` finds the vocabulary entries that begin a word with one of a lexicon's stems (" Confident",
" confidence", " assertive"...); `row_bias_hook` adds a (prompt × vocabulary) bias to every step's logits,
indexed by which prompt each row is, so a batch can push some rows one way and others the other way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from experts.errors import SteerlabError
from experts.generate import DecodeState, LogitsHook

WORD_START = ("Ġ", "▁")  # the marks byte-level BPE and SentencePiece put on a token that begins a word


def word_tokens(tokenizer, stems: Sequence[str]) -> list[int]:
    """Ids of the tokens that begin a word (after a space) whose letters start with one of `stems` (lower case).
    A word split into pieces counts only when its first piece already carries a whole stem."""
    stems = tuple(s.lower() for s in stems)
    out = []
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token and token.startswith(WORD_START):
            word = token[1:].lower()
            if word.isalpha() and word.startswith(stems):
                out.append(token_id)
    return out


def signed_bias(vocab_size: int, raise_ids: Sequence[int], lower_ids: Sequence[int], strength: float) -> Tensor:
    """A vocabulary vector: +strength on `raise_ids`, −strength on `lower_ids` (a token in both gets 0)."""
    if not torch.isfinite(torch.tensor(strength)):
        raise SteerlabError(f"a logit bias strength must be finite, got {strength!r}")
    bias = torch.zeros(vocab_size)
    bias[list(raise_ids)] += strength
    bias[list(lower_ids)] -= strength
    return bias


def row_bias_hook(biases: Tensor) -> LogitsHook:
    """A logits hook adding `biases[prompt]` (prompts × vocabulary) to each row's logits at every step."""
    if biases.ndim != 2:
        raise SteerlabError(f"row biases must be (prompts, vocabulary), got shape {tuple(biases.shape)}")

    def add(logits: Tensor, state: DecodeState) -> Tensor:
        rows = state.rows if state.rows is not None else torch.arange(logits.shape[0])
        if state.n_prompts is not None and state.n_prompts != biases.shape[0]:
            raise SteerlabError(f"{biases.shape[0]} row biases given for a call of {state.n_prompts} prompts")
        return logits + biases.to(device=logits.device, dtype=logits.dtype)[rows.to(logits.device), : logits.shape[-1]]

    return add

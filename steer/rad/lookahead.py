"""Score the k candidate tokens of a decoding step by reading each one token ahead.

`lookahead_scores` runs the candidates through the generating expert itself, as one batched
one-token step on a tiled copy of the generation's KV cache. `ExternalScorer` does the same with
a separate reward expert that reads only the generated text (RAD): its own cache is tiled k times
for the candidates, and the next step keeps the tile row of the token that was chosen, so each step
costs one batched pass over k one-token rows. Uncached, it re-reads the whole text for every
candidate instead (what RAD's cache saves).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers import DynamicCache

from experts.errors import SteerlabError
from experts.generate import DecodeState, publish_state

if TYPE_CHECKING:
    from experts.expert import Expert

Probe = Callable[[Tensor], Tensor]


def lookahead_scores(expert: Expert, probe: Probe, state: DecodeState, candidates: Tensor) -> Tensor:
    """Score (B, k) candidates by `probe` on the expert's hidden state after reading each."""
    if state.past is None or state.attention_mask is None:
        raise SteerlabError("look-ahead rewards need steerlab's generation loop (its KV cache); "
                            "use an activation or external reward with transformers' generate")
    rows, k = candidates.shape
    cache = copy.deepcopy(state.past)
    cache.batch_repeat_interleave(k)
    mask = torch.cat([state.attention_mask, torch.ones_like(state.attention_mask[:, :1])], 1).repeat_interleave(k, 0)
    positions = (state.position_ids[:, -1:] + 1).repeat_interleave(k, 0)
    ahead = DecodeState(state.step + 1, positions, torch.ones_like(positions, dtype=torch.bool),
                        state.prompt_lengths.repeat_interleave(k, 0), all_valid=True,
                        rows=None if state.rows is None else state.rows.repeat_interleave(k, 0), n_prompts=state.n_prompts)
    with publish_state(ahead):
        hidden = expert.model.model(input_ids=candidates.reshape(rows * k, 1), attention_mask=mask,
                                    position_ids=positions, cache=cache, use_cache=True).last_hidden_state
    return probe(hidden[:, -1]).reshape(rows, k)


class ExternalScorer:
    """A reward expert that follows the generated text; call once per decoding step.

    At step 0 it starts from the reward expert's own text prefix (its BOS, if it adds one). At step
    s >= 1 `state.input_ids` holds the token chosen at step s-1, one of the previous candidates.
    """

    def __init__(self, reward_expert: Expert, probe: Probe, *, cached: bool = True) -> None:
        self.expert, self.probe, self.cached = reward_expert, probe, cached
        self.prefix = reward_expert.encode("")
        self.cache: DynamicCache | None = None
        self.text: Tensor | None = None  # (B, length) what the reward expert has read (uncached form)
        self.candidates: Tensor | None = None

    @torch.inference_mode()
    def __call__(self, state: DecodeState, candidates: Tensor) -> Tensor:
        if state.input_ids is None:
            raise SteerlabError("external rewards need the decode state's input tokens")
        candidates = candidates.to(self.expert.device)
        if state.step == 0:
            self._start(len(candidates))
        else:
            self._keep_chosen(state.input_ids[:, -1].to(self.expert.device))
        scores = self._score_cached(candidates) if self.cached else self._score_uncached(candidates)
        self.candidates = candidates
        return scores.to(state.input_ids.device)

    def _start(self, rows: int) -> None:
        device = self.expert.device
        self.text = torch.tensor([self.prefix] * rows, dtype=torch.long, device=device).reshape(rows, len(self.prefix))
        self.cache = DynamicCache(config=self.expert.model.config)
        if self.prefix:
            self._forward(self.text, self.cache)

    def _keep_chosen(self, chosen: Tensor) -> None:
        """Keep, for each row, the tile of the candidate that was chosen (a finished row keeps any)."""
        rows, k = self.candidates.shape
        index = (self.candidates == chosen[:, None]).int().argmax(-1)
        if self.cached:
            self.cache.batch_select_indices(torch.arange(rows, device=chosen.device) * k + index)
        self.text = torch.cat([self.text, chosen[:, None]], dim=1)

    def _score_cached(self, candidates: Tensor) -> Tensor:
        rows, k = candidates.shape
        if self.text.shape[1]:
            self.cache.batch_repeat_interleave(k)
        hidden = self._forward(candidates.reshape(rows * k, 1), self.cache, start=self.text.shape[1])
        return self.probe(hidden).reshape(rows, k)

    def _score_uncached(self, candidates: Tensor) -> Tensor:
        rows, k = candidates.shape
        full = torch.cat([self.text.repeat_interleave(k, 0), candidates.reshape(rows * k, 1)], dim=1)
        return self.probe(self._forward(full, None)).reshape(rows, k)

    def _forward(self, ids: Tensor, cache: DynamicCache | None, start: int = 0) -> Tensor:
        """Final hidden state at the last position; rows have no padding, so no attention mask."""
        positions = torch.arange(start, start + ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        out = self.expert.model.model(input_ids=ids, position_ids=positions, cache=cache,
                                      use_cache=cache is not None)
        return out.last_hidden_state[:, -1]

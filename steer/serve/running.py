"""Continuous batching: requests join a running decode batch and leave it at token boundaries.

A `RunningBatch` decodes the rows it holds one token per `step()`. Rows `join()` between two steps: their
prompts' forward runs on its own (with their own steering), their first token comes from it, and their KV cache
joins the batch's (`experts.kv`). A row leaves as soon as it finishes, or before the next forward once its caller
has gone (asked before every step), and the columns no remaining row needs are cut. Every row keeps its own
steering strengths, reward β, seed, sampling settings, repetition penalty, budget, stop strings and
log-probabilities (`steer.serve.batch`), so a short request never waits for a long one to end, and a row's answer
is the one it gets alone, up to float rounding (padding; the packed kernel's, which depends on the batch).

Rewards that follow the generated text in a reward expert of their own (`external`) keep per-step state that
rows joining would break, and this loop does not end rows at paragraphs (`end_at_paragraph_after`):
`needs_own_batch` tells the caller to answer such requests with `answer_rows`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from experts.errors import NonFiniteError
from experts.expert import Expert
from experts.generate import DecodeState, NgramBan, next_tokens_per_row, penalise_repeats, publish_state
from experts.inline import InlineSteps
from experts.kv import join_rows, keep_rows, new_cache
from experts.packed import packed_decoding, packs_batch
from steer.rad.rewards import ExternalReward
from steer.router.answer import load_control
from steer.router.router import Rule
from steer.serve.batch import Delta, RowRequest, RowText, adjusted


@dataclass(frozen=True)
class Joining:
    """A request that asks to join: where its deltas go (`emit`, called on the decoding thread) and whether its
    caller has gone (`cancelled`, asked before every step). An exception for the request alone is emitted as is."""

    request: RowRequest
    emit: Callable[[Delta | BaseException], None]
    cancelled: Callable[[], bool]
    left: Callable[[], None] = lambda: None  # called once a cancelled row has left the batch


class _Live:
    """One row of the running batch: its text, sampler, penalties, and the token it feeds next."""

    def __init__(self, expert: Expert, joining: Joining, prompt_tokens: int) -> None:
        self.joining, self.text = joining, RowText(expert, joining.request)
        self.settings = joining.request.settings
        self.generator = torch.Generator(device=expert.device).manual_seed(joining.request.seed)
        self.prompt_tokens = prompt_tokens
        self.ngrams = NgramBan([self.settings.no_repeat_ngram_size]) if self.settings.no_repeat_ngram_size else None
        self.seen: Tensor | None = None  # the tokens it generated, for its repetition penalty
        self.last = 0  # the token it feeds at the next step


def needs_own_batch(request: RowRequest, rules: Sequence[Rule], folder: Path, expert: Expert,
                    loaded: dict[str, Any]) -> bool:
    """Whether `request` uses a reward that follows the text in its own reward expert (no joining mid-way) or ends
    at a paragraph."""
    if request.settings.end_at_paragraph_after > 0:
        return True
    return any(isinstance(load_control(a.kind, a.file, folder, expert, loaded), ExternalReward)
               for a in request.adjustments if a.kind != "steer")


class RunningBatch:
    """The rows an expert replica is decoding. Not thread-safe: one thread calls `join` and `step`."""

    def __init__(self, expert: Expert, rules: Sequence[Rule], folder: Path, *, top_k: int = 20,
                 loaded: dict[str, Any] | None = None) -> None:
        self.expert, self.rules, self.folder, self.top_k = expert, list(rules), folder, top_k
        self.loaded = {} if loaded is None else loaded
        self.rows: list[_Live] = []
        self.cache: DynamicCache | None = None
        self.mask: Tensor | None = None  # (rows, columns) 1 on each row's tokens, 0 on its left padding
        self.steps = 0  # decode steps taken since the batch was last empty
        self.forwards = 0  # forward passes (prompts' and steps'), for tests and metrics
        self._adjusted = ExitStack()
        self._hook: Callable[[Tensor, DecodeState], Tensor] | None = None
        self._inline: InlineSteps | None = None  # its steps written out (`experts.inline`), read anew when rows join

    def __len__(self) -> int:
        return len(self.rows)

    def close(self) -> None:
        """Detach the batch's steering and rewards (a batch can be re-used: the next `join` attaches them again)."""
        self._adjusted.close()
        self._hook = self._inline = None

    @torch.inference_mode()
    def join(self, joining: Sequence[Joining]) -> list[Joining]:
        """Run the prompts of `joining` (those whose callers are still there), give each its first token, and add
        the rows that go on to the batch. Returns those it does not take: the requests that need a batch of their
        own (`needs_own_batch`)."""
        own = [j for j in joining if needs_own_batch(j.request, self.rules, self.folder, self.expert, self.loaded)]
        joining = [j for j in joining if not j.cancelled() and j not in own]
        if not joining:
            return own
        self.close()  # the running rows' hooks must not touch the new prompts
        try:
            batch = self.expert.tokenize([j.request.formatted for j in joining])
            live = [_Live(self.expert, j, int(n)) for j, n in zip(joining, batch.attention_mask.sum(-1).tolist())]
            cache, mask = new_cache(self.expert.model.config), batch.attention_mask
            state = replace(DecodeState.for_batch(mask, input_ids=batch.input_ids), past=cache, attention_mask=mask)
            with adjusted(self.expert, [j.request for j in joining], self.rules, self.folder, top_k=self.top_k,
                          loaded=self.loaded) as hook, packed_decoding(packs_batch(len(live)), prompts=True):
                kept = self._advance(live, state, hook)
            if kept:
                mask = keep_rows(cache, mask, torch.tensor(kept, device=mask.device)) if len(kept) < len(live) else mask
                if self.rows:
                    self.mask = join_rows(self.cache, self.mask, cache, mask)
                else:
                    self.cache, self.mask = cache, mask
                self.rows += [live[i] for i in kept]
        finally:
            self._attach()
        return own

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every row; rows whose callers have gone leave first, finished rows leave after."""
        gone = [r for r in self.rows if r.joining.cancelled()]
        self._leave([i for i, r in enumerate(self.rows) if r in gone])
        for row in gone:
            row.joining.left()
        if not self.rows:
            return
        self.steps += 1
        device = self.mask.device
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        lengths = torch.tensor([r.prompt_tokens + len(r.text.ids) for r in self.rows], device=device)
        positions = (lengths - 1)[:, None]  # the fed token is each row's newest
        inputs = torch.tensor([[r.last] for r in self.rows], device=device)
        state = DecodeState(self.steps, positions, torch.ones_like(inputs, dtype=torch.bool),
                            torch.tensor([r.prompt_tokens for r in self.rows], device=device), all_valid=True,
                            past=self.cache, attention_mask=self.mask, input_ids=inputs,
                            rows=torch.arange(len(self.rows), device=device), n_prompts=len(self.rows))
        with packed_decoding(packs_batch(len(self.rows))):
            kept = self._advance(self.rows, state, self._hook)
        self._leave([i for i in range(len(self.rows)) if i not in set(kept)])

    def _advance(self, live: list[_Live], state: DecodeState, hook) -> list[int]:
        """The forward `state` describes, each row's next token, its delta emitted; returns the rows that go on."""
        with publish_state(state):
            if self._inline is None:
                self._inline = InlineSteps(self.expert.model)
            logits = self._inline.logits(state.input_ids, state.attention_mask, state.position_ids, state.past)
            self.forwards += 1
            finite = torch.isfinite(logits).all(-1).tolist()
            logits = self._penalised(live, logits)
            if hook is not None:
                logits = hook(logits, state)
        safe = torch.where(torch.tensor(finite, device=logits.device)[:, None], logits, torch.zeros_like(logits))
        tokens = next_tokens_per_row(safe, [r.settings for r in live], [r.generator for r in live],
                                     torch.zeros((), dtype=torch.bool)).tolist()
        kept = []
        for i, (row, token) in enumerate(zip(live, tokens)):
            if not finite[i]:  # a steering strength out of range: this request fails, the others go on
                row.joining.emit(NonFiniteError())
                continue
            delta = row.text.take(token, logits[i], row.prompt_tokens, len(live))
            row.last = token
            if row.seen is not None or row.settings.repetition_penalty != 1.0:
                row.seen = torch.zeros(logits.shape[-1], dtype=torch.bool) if row.seen is None else row.seen
                row.seen[token] = True
            if row.ngrams is not None:
                row.ngrams.add([token])
            row.joining.emit(delta)
            if not row.text.done:
                kept.append(i)
        return kept

    @staticmethod
    def _penalised(live: list[_Live], logits: Tensor) -> Tensor:
        """Each row's repetition penalty and n-gram ban, as `experts.generate.decode` applies them."""
        penalties = [r.settings.repetition_penalty for r in live]
        if any(p != 1.0 for p in penalties):
            seen = torch.stack([r.seen if r.seen is not None else torch.zeros(logits.shape[-1], dtype=torch.bool)
                                for r in live]).to(logits.device)
            logits = penalise_repeats(logits, seen, torch.tensor(penalties, device=logits.device)[:, None])
        if any(r.ngrams is not None for r in live):
            logits = logits.clone()
            for i, row in enumerate(live):
                if row.ngrams is not None:
                    logits[i : i + 1] = row.ngrams.apply(logits[i : i + 1])
        return logits

    def _leave(self, leaving: list[int]) -> None:
        if not leaving:
            return
        keep = [i for i in range(len(self.rows)) if i not in set(leaving)]
        self.rows = [self.rows[i] for i in keep]
        if self.rows:
            self.mask = keep_rows(self.cache, self.mask, torch.tensor(keep, device=self.mask.device))
        else:
            self.cache = self.mask = None
            self.steps = 0
        self._attach()

    def _attach(self) -> None:
        """Steering and rewards for the rows the batch holds now, row i with request i's strengths."""
        self.close()
        if self.rows:
            self._hook = self._adjusted.enter_context(adjusted(
                self.expert, [r.joining.request for r in self.rows], self.rules, self.folder, top_k=self.top_k,
                loaded=self.loaded))

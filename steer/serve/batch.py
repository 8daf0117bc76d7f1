"""Answer several served requests in one decode batch, each with its own steering strengths, RAD β, seed,
sampling settings, token budget, stop strings and log-probabilities, and each finishing on its own.

`answer_rows` is plain torch (no server): an expert replica calls it on a batch of requests, and a row's
answer is the same as that request answered alone (`answer_rows` on a batch of one). Steering files that some
rows use are applied to the whole batch with a coefficient of 0 on the other rows (bit-identical for them); a
reward re-weights only the rows that ask for it. It reports every step as one `Delta` per row, so a caller can
stream the text as it grows; the text never shows a stop string, nor the start of one it may still complete.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from experts.expert import Expert
from experts.generate import DecodeState, GenerationSettings, row_seed
from steer.rad.decoding import reward_decoding
from steer.router.answer import load_control
from steer.router.decision import Adjustment
from steer.router.router import Rule
from steer.vectors.apply import Steering, apply

MAX_TOP_LOGPROBS = 20
LOGPROB_FLOOR = -9999.0  # what a token outside the decoded distribution (RAD's top-k) reports, as OpenAI does


@dataclass(frozen=True)
class RowRequest:
    """One request of a batch: the expert's formatted prompt and how to answer it."""

    formatted: str
    adjustments: tuple[Adjustment, ...] = ()
    settings: GenerationSettings = GenerationSettings()
    stops: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no log-probabilities; k: the chosen token's and the k most likely

    @property
    def seed(self) -> int:
        return row_seed(self.settings.seed, self.formatted, 0)


@dataclass
class Delta:
    """What one step added to one row: new text, its tokens' log-probabilities, and once the row has finished,
    why and how many tokens it took (`finish_reason` "stop" for EOS or a stop string, else "length")."""

    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_size: int = 1

    def add(self, step: Delta, tokens: int) -> None:
        """Grow this whole answer by one step's `Delta`; `tokens`: the row's tokens so far."""
        self.text += step.text
        self.logprobs += step.logprobs
        self.finish_reason = step.finish_reason
        self.completion_tokens = tokens


class RowText:
    """One row's text as it grows: what has been sent, and what is held back (a partial character, or the start
    of a stop string)."""

    def __init__(self, expert: Expert, request: RowRequest) -> None:
        self.expert, self.request = expert, request
        self.ids: list[int] = []
        self.sent = ""
        self.done = False

    def visible(self) -> tuple[str, bool]:
        """The text so far, cut before a stop string, and whether one occurred."""
        text = self.expert.decode(self.ids)
        hits = [i for i in (text.find(s) for s in self.request.stops) if i >= 0]
        return (text[: min(hits)], True) if hits else (text, False)

    def safe(self, text: str) -> str:
        """The part of `text` that can be sent now: no trailing partial character, nor a stop string's start."""
        text = text.rstrip("\ufffd")
        for stop in self.request.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    text = text[:-k]
                    break
        return text

    def advance(self, text: str) -> str:
        new = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent += new
        return new

    def take(self, token: int, logits: Tensor, prompt_tokens: int, batch_size: int) -> Delta:
        """Add the token chosen from `logits` (this row's) and say what it adds; `self.done` once the row ends (EOS,
        a stop string, its budget)."""
        delta = Delta(batch_size=batch_size)
        settings = self.request.settings
        finished = token in self.expert.eos_ids and settings.stop_at_eos
        if not finished:
            self.ids.append(token)
            if self.request.top_logprobs is not None:
                delta.logprobs.append(_logprobs(self.expert, logits, token, self.request.top_logprobs))
        text, stopped = self.visible()
        if finished or stopped or len(self.ids) >= settings.max_new_tokens:
            self.done = True
            delta.finish_reason = "stop" if finished or stopped else "length"
            delta.prompt_tokens, delta.completion_tokens = prompt_tokens, len(self.ids)
            delta.text = self.advance(text)
        else:
            delta.text = self.advance(self.safe(text))
        return delta


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(expert: Expert, token: int) -> bytes:
    """The bytes a token stands for, also when it is part of a character (byte-level BPE, or byte fallback)."""
    text = expert.tokenizer.decode([token])
    if "\ufffd" not in text:
        return text.encode("utf-8")
    piece = expert.tokenizer.convert_ids_to_tokens(token)
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
        return bytes([int(piece[3:5], 16)])
    table = _byte_of_char()
    return bytes(table[c] for c in piece) if all(c in table for c in piece) else text.encode("utf-8")


def _logprobs(expert: Expert, logits: Tensor, token: int, k: int) -> dict[str, Any]:
    """OpenAI's log-probability entry for `token`: its log-probability under `logits`, and the `k` most likely."""
    logp = logits.float().log_softmax(-1)

    def entry(i: int, value: float) -> dict[str, Any]:
        return {"token": expert.tokenizer.decode([i]), "logprob": max(float(value), LOGPROB_FLOOR),
                "bytes": list(token_bytes(expert, i))}

    top = logp.topk(k) if k else None
    return {**entry(token, logp[token]),
            "top_logprobs": [] if top is None else [entry(int(i), v) for v, i in zip(top.values, top.indices)]}


def _only_rows(hook: Callable[[Tensor, DecodeState], Tensor], rows: Tensor) -> Callable[[Tensor, DecodeState], Tensor]:
    """A logits hook that changes only the rows marked in `rows` (a reward's top-k cut stays off the others)."""

    def restricted(logits: Tensor, state: DecodeState) -> Tensor:
        picked = rows.to(logits.device)[state.rows.to(logits.device)] if state.rows is not None else rows
        return torch.where(picked[:, None], hook(logits, state), logits)

    return restricted


@contextmanager
def adjusted(expert: Expert, requests: Sequence[RowRequest], rules: Sequence[Rule], folder: Path, *, top_k: int,
             loaded: dict[str, Any]) -> Iterator[Callable[[Tensor, DecodeState], Tensor] | None]:
    """Steer and reward-decode a batch whose row i is `requests[i]`, each row with its own strengths, for the
    duration of the block: steering files that some rows use are applied with a coefficient of 0 on the other
    rows (bit-identical for them); a reward re-weights only the rows that ask for it. Yields the logits hook of
    the rewards (None without one)."""
    by_file = {(r.kind, r.file): r for r in rules}
    with ExitStack() as stack:
        hooks = []
        for kind, file in dict.fromkeys((a.kind, a.file) for r in requests for a in r.adjustments):
            rule = by_file[(kind, file)]
            strengths = [next((a.strength for a in r.adjustments if (a.kind, a.file) == (kind, file)), 0.0)
                         for r in requests]
            control = load_control(kind, file, folder, expert, loaded)
            if kind == "steer":
                stack.enter_context(apply(expert, Steering(control, coef=strengths, operator=rule.operator,
                                                           positions=rule.positions)))
            else:
                hook = stack.enter_context(reward_decoding(expert, control, strengths, top_k))
                hooks.append(_only_rows(hook, torch.tensor([s != 0 for s in strengths])))
        if not hooks:
            yield None
            return

        def logits_hook(logits: Tensor, state: DecodeState) -> Tensor:
            for hook in hooks:
                logits = hook(logits, state)
            return logits

        yield logits_hook


def answer_rows(expert: Expert, requests: Sequence[RowRequest], rules: Sequence[Rule], folder: Path, *,
                top_k: int = 20, loaded: dict[str, Any] | None = None,
                emit: Callable[[list[Delta | None]], None] | None = None,
                cancelled: Callable[[int], bool] | None = None) -> list[Delta]:
    """Answer `requests` in one batch; `emit` receives, after each step, one `Delta` per row (None for rows that
    finished earlier). `cancelled(row)`, asked at every step, stops a row whose caller has gone (nothing more is
    emitted for it; its whole answer keeps `finish_reason` None). Returns each row's whole answer as one `Delta`."""
    loaded = {} if loaded is None else loaded
    rows = [RowText(expert, r) for r in requests]
    formatted = [r.formatted for r in requests]
    prompt_tokens = [len(expert.encode(f)) for f in formatted]
    totals = [Delta(batch_size=len(requests), prompt_tokens=n) for n in prompt_tokens]

    def on_step(step: int, logits: Tensor, tokens: Tensor) -> Tensor:
        ended = torch.zeros(len(rows), dtype=torch.bool)
        deltas: list[Delta | None] = []
        for i, (row, token) in enumerate(zip(rows, tokens.tolist())):
            if row.done or (cancelled is not None and cancelled(i)):
                row.done = ended[i] = True
                deltas.append(None)
                continue
            delta = row.take(token, logits[i], prompt_tokens[i], len(rows))
            ended[i] = row.done
            totals[i].add(delta, len(row.ids))
            deltas.append(delta)
        if emit is not None:
            emit(deltas)
        return ended

    with adjusted(expert, requests, rules, folder, top_k=top_k, loaded=loaded) as logits_hook:
        expert.generate_batch(formatted, [r.settings for r in requests], [r.seed for r in requests],
                              logits_hook=logits_hook, on_step=on_step)
    return totals

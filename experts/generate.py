"""The generation loop on the plain HF model, over token ids that `Expert` has already formatted and
tokenized: attention masks, KV cache, greedy or seeded sampling, stop on EOS.

Each row samples from its own `torch.Generator`, seeded from (seed, prompt, sample index), so a
row's text does not depend on which other prompts share its batch, but for rounding (padding moves the last bits of
a row's attention; see `experts.packed` for packed decoding). A batch of up to 16 rows may decode with packed
weights (`experts.packed`: an expert loaded with them runs its 4-bit linears in the int4 kernel at each step, and
its prompts' forward in bfloat16 where the CPU has it); its steps run as one compiled graph with compiled decoding
(`experts.compiled`), else with their blocks written out where they can be (`experts.inline`: the modules' own
numbers without the module calls). While the loop runs,
`current_decode_state()` tells hooks which step is running and where the padding is.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from experts import compiled
from experts.errors import NonFiniteError, SteerlabError
from experts.hooks import count_forward_hooks
from experts.inline import InlineSteps
from experts.kv import new_cache
from experts.packed import packed_decoding, packs_batch
from experts.tokens import TokenBatch


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings. `do_sample=False` is greedy; `top_k=0` and `top_p=1` disable those filters.
    `repetition_penalty` > 1 is the CTRL penalty (Keskar et al. 2019, as in transformers): the logit of a token
    the row has already generated is divided by it (multiplied when negative); unlike transformers, prompt
    tokens are not penalised (a letter may repeat the candidate's name). 1 leaves decoding bit-identical.
    `no_repeat_ngram_size` n > 0 forbids a row to generate any token n-gram it has generated before (as in
    transformers, but over the generated tokens only); 0 is off. `end_at_paragraph_after` t > 0 is a length limit
    that never cuts a paragraph: after t generated tokens a row ends at its next paragraph break (a blank line),
    with the finish reason "paragraph"; `max_new_tokens` still caps it."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    num_samples: int = 1
    stop_at_eos: bool = True
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    end_at_paragraph_after: int = 0

    def keywords(self) -> dict[str, Any]:
        """These settings as `Expert.generate` keywords: `expert.generate(prompts, **settings.keywords())`."""
        return asdict(self)

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": self.temperature > 0,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "num_samples": self.num_samples >= 1,
            "repetition_penalty": self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty),
            "no_repeat_ngram_size": self.no_repeat_ngram_size >= 0,
            "end_at_paragraph_after": self.end_at_paragraph_after >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise SteerlabError(f"invalid generation setting {name}={getattr(self, name)!r}")


@dataclass(frozen=True)
class DecodeState:
    """Where the tokens of the running forward pass sit, for position-aware hooks.

    `position_ids` and `valid` cover this forward's input: the padded prompts at step 0, one new
    token per row at step s >= 1, or a whole sequence in a no-cache pass. A position is generated
    when its position id is at least its row's prompt length.
    """

    step: int
    position_ids: Tensor  # (batch, pos), 0 = first real token of the row
    valid: Tensor  # (batch, pos) bool, False on padding
    prompt_lengths: Tensor  # (batch,)
    all_valid: bool = False  # no padding in this forward (lets hooks skip masking)
    past: Any = None  # the KV cache of the generation loop (after this forward), for look-ahead rewards
    attention_mask: Tensor | None = None  # every position so far, this forward's included
    input_ids: Tensor | None = None  # this forward's input tokens (at step s >= 1: the token chosen at step s-1)
    rows: Tensor | None = None  # (batch,) which prompt of the call each row is (per-prompt settings index it)
    n_prompts: int | None = None  # how many prompts the call has (host-side, for checks)

    def generated(self) -> Tensor:
        return self.valid & (self.position_ids >= self.prompt_lengths[:, None])

    @classmethod
    def for_batch(
        cls, attention_mask: Tensor, prompt_lengths: Tensor | None = None, first_row: int = 0, n_prompts: int | None = None,
        input_ids: Tensor | None = None,
    ) -> DecodeState:
        """State of a plain forward over left-padded rows (every real token a prompt token by default);
        the rows are prompts `first_row`, `first_row + 1`, ... of the call."""
        valid = attention_mask.bool()
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        lengths = attention_mask.sum(-1) if prompt_lengths is None else prompt_lengths
        rows = torch.arange(first_row, first_row + attention_mask.shape[0], device=attention_mask.device)
        return cls(0, positions, valid, lengths, all_valid=bool(valid.all()), rows=rows, input_ids=input_ids,
                   n_prompts=first_row + attention_mask.shape[0] if n_prompts is None else n_prompts)


_DECODE_STATE: ContextVar[DecodeState | None] = ContextVar("steerlab_decode_state", default=None)


def current_decode_state() -> DecodeState | None:
    return _DECODE_STATE.get()


@contextmanager
def publish_state(state: DecodeState) -> Iterator[None]:
    """Make `state` visible to hooks (via `current_decode_state()`) for the duration of the block."""
    token = _DECODE_STATE.set(state)
    try:
        yield
    finally:
        _DECODE_STATE.reset(token)


@dataclass
class GenerationResult:
    """One row per (prompt, sample): texts, generated token ids and why each row stopped."""

    prompts: list[str]
    formatted_prompts: list[str]
    sample_index: list[int]
    texts: list[str]
    token_ids: list[list[int]]
    finish_reasons: list[str]
    config: GenerationSettings
    expert: str

    def records(self) -> list[dict[str, Any]]:
        return [
            {
                "prompt": p,
                "sample": s,
                "text": t,
                "n_tokens": len(ids),
                "finish_reason": r,
            }
            for p, s, t, ids, r in zip(
                self.prompts, self.sample_index, self.texts, self.token_ids, self.finish_reasons
            )
        ]

    def settings(self) -> dict[str, Any]:
        return {"expert": self.expert, **asdict(self.config)}


@dataclass(frozen=True)
class ParagraphTokens:
    """Which tokens of a vocabulary hold a blank line, or begin or end with a line break (a paragraph break is a
    token that holds a blank line, or a line break right after a token that ends with one)."""

    blank: Tensor  # (vocab,) bool
    starts_newline: Tensor
    ends_newline: Tensor

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> ParagraphTokens:
        return cls(torch.tensor(["\n\n" in t for t in texts]), torch.tensor([t.startswith("\n") for t in texts]),
                   torch.tensor([t.endswith("\n") for t in texts]))

    def breaks(self, previous: Tensor | None, tokens: Tensor) -> Tensor:
        """Per row: does `tokens` (after `previous`, None at the first step) complete a paragraph break?"""
        blank = self.blank.to(tokens.device)[tokens]
        if previous is None:
            return blank
        return blank | (self.ends_newline.to(tokens.device)[previous] & self.starts_newline.to(tokens.device)[tokens])


class NgramBan:
    """Per row, the token n-grams it has generated, to forbid a repeat (`no_repeat_ngram_size`)."""

    def __init__(self, sizes: Sequence[int]):
        self.sizes = list(sizes)
        self.seen: list[dict[tuple[int, ...], set[int]]] = [{} for _ in self.sizes]
        self.history: list[list[int]] = [[] for _ in self.sizes]

    def apply(self, logits: Tensor) -> Tensor:
        for row, n in enumerate(self.sizes):
            if n and len(self.history[row]) >= n - 1:
                banned = self.seen[row].get(tuple(self.history[row][len(self.history[row]) - n + 1 :]))
                if banned:
                    logits[row, list(banned)] = float("-inf")
        return logits

    def add(self, tokens: list[int]) -> None:
        for row, (n, token) in enumerate(zip(self.sizes, tokens)):
            if n:
                prefix = tuple(self.history[row][len(self.history[row]) - n + 1 :]) if n > 1 else ()
                if len(prefix) == n - 1:
                    self.seen[row].setdefault(prefix, set()).add(token)
            self.history[row].append(token)


LogitsHook = Callable[[Tensor, DecodeState], Tensor]
# Called after each step with (step, the logits the tokens were chosen from, the tokens); may return a bool mask of
# rows to finish now (a stop string completed): their reason is "stop" and their ids end with this step's token.
StepHook = Callable[[int, Tensor, Tensor], "Tensor | None"]


@dataclass(frozen=True)
class Prefill:
    """The prompts' forward pass, already run elsewhere (a router's reader): the KV cache after the
    formatted prompts and the logits at their last position, for `generate_batch` to continue from."""

    formatted: tuple[str, ...]
    cache: Any
    logits: Tensor  # (rows, vocab)


def row_seed(seed: int, prompt: str, sample: int) -> int:
    digest = hashlib.sha256(f"{seed}\x00{sample}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _filter_logits(logits: Tensor, config: GenerationSettings) -> Tensor:
    logits = logits / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= config.top_p  # keep the token that crosses p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def penalise_repeats(logits: Tensor, seen: Tensor, penalty: float | Tensor) -> Tensor:
    """The CTRL repetition penalty on the tokens marked in `seen` (rows x vocabulary); `penalty` one number, or
    (rows, 1) of them."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def _next_tokens(logits: Tensor, config: GenerationSettings, generators: list[torch.Generator], non_finite: Tensor) -> Tensor:
    if not config.do_sample:
        return logits.argmax(-1)
    if bool(non_finite):  # sampling from NaN probabilities would fail with an opaque error
        raise NonFiniteError()
    probs = _filter_logits(logits.float(), config).softmax(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def next_tokens_per_row(logits: Tensor, configs: Sequence[GenerationSettings], generators: list[torch.Generator],
                        non_finite: Tensor) -> Tensor:
    """Each row with its own settings: the same operations on that row as `_next_tokens` on a batch of one."""
    tokens = logits.argmax(-1)
    for i, config in enumerate(configs):
        if config.do_sample:
            tokens[i] = _next_tokens(logits[i : i + 1], config, generators[i : i + 1], non_finite)[0]
    return tokens


def _shared(configs: Sequence[GenerationSettings]) -> GenerationSettings:
    """The settings every row of one batch must share (EOS handling and the repetition penalty)."""
    first = configs[0]
    for name in ("stop_at_eos", "repetition_penalty"):
        values = {getattr(c, name) for c in configs}
        if len(values) > 1:
            raise SteerlabError(f"rows of one batch must share {name}; got {sorted(values)}")
    return replace(first, max_new_tokens=max(c.max_new_tokens for c in configs))


@torch.inference_mode()
def decode(
    model: torch.nn.Module,
    batch: TokenBatch,
    config: GenerationSettings | Sequence[GenerationSettings],
    seeds: Sequence[int],
    *,
    stop_ids: set[int],
    pad_id: int,
    logits_hook: LogitsHook | None = None,
    prefill: Prefill | None = None,
    rows: Sequence[int] | None = None,
    n_prompts: int | None = None,
    on_step: StepHook | None = None,
    paragraph: ParagraphTokens | None = None,
) -> tuple[list[list[int]], list[str]]:
    """Generate for one batch of prompt tokens; returns the new token ids and finish reasons ("eos",
    "length", "paragraph" under `end_at_paragraph_after`, or "stop" when `on_step` finished the row). `config` is one setting for every row, or one per
    row (its own sampling, temperature, top-p and token budget; a row stops at its own budget).
    With `prefill`, step 0 reuses that forward pass instead of running the prompts again. `rows`
    says which prompt of the caller each row is (default: row i is prompt i), so per-prompt
    steering coefficients follow prompts, not batches; `n_prompts` is how many prompts the caller has.

    Raises `NonFiniteError` if the model's logits were ever NaN or infinite (a steering
    coefficient or schedule out of range, or corrupt weights): such text would be garbage.
    """
    device = batch.input_ids.device
    per_row = not isinstance(config, GenerationSettings)
    configs = list(config) if per_row else [config] * batch.input_ids.shape[0]
    if len(configs) != batch.input_ids.shape[0]:
        raise SteerlabError(f"{len(configs)} generation settings given for a batch of {batch.input_ids.shape[0]} rows")
    config = _shared(configs)
    limits = torch.tensor([c.max_new_tokens for c in configs], device=device)
    stopped_at: list[tuple[int, str] | None] = [None] * len(configs)
    paragraph_after = torch.tensor([c.end_at_paragraph_after for c in configs], device=device)
    if bool((paragraph_after > 0).any()) and paragraph is None:
        raise SteerlabError("end_at_paragraph_after needs the vocabulary's paragraph tokens (Expert passes them)")
    sizes = [c.no_repeat_ngram_size for c in configs]
    ngrams = NgramBan(sizes) if any(sizes) else None
    if prefill is not None and count_forward_hooks(model):
        raise SteerlabError("a reused prefill ran without the hooks now attached (steering); run the prompts again")
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    stop = torch.tensor(sorted(stop_ids), device=device)
    mask, positions = batch.attention_mask, batch.position_ids
    cache = new_cache(model.config) if prefill is None else prefill.cache
    finished = torch.zeros(mask.shape[0], dtype=torch.bool, device=device)
    generated: list[Tensor] = []
    step_input = batch.input_ids
    prompt_lengths = mask.sum(-1)
    step_valid = mask.bool()
    if rows is not None and len(rows) != mask.shape[0]:
        raise SteerlabError(f"{len(rows)} row indices given for a batch of {mask.shape[0]} rows")
    row_index = torch.tensor(list(range(mask.shape[0]) if rows is None else rows), device=device)
    n_prompts = mask.shape[0] if rows is None else (n_prompts or max(rows) + 1)
    non_finite = torch.zeros((), dtype=torch.bool, device=device)
    packed = packs_batch(mask.shape[0])
    steps = compiled.steps_for(model, mask.shape[0], mask.shape[1] + config.max_new_tokens, packs=packed,
                               logits_hook=logits_hook)
    inline = InlineSteps(model)  # the steps that compiled steps leave, written out where they can be
    seen = None  # (rows, vocabulary): tokens each row has generated, for the repetition penalty
    for step in range(config.max_new_tokens):
        state = DecodeState(step, positions, step_valid, prompt_lengths, all_valid=step > 0 or bool(step_valid.all()),
                            past=cache, attention_mask=mask, input_ids=step_input, rows=row_index,
                            n_prompts=n_prompts)
        with publish_state(state), packed_decoding(packed, prompts=step == 0):
            logits = None
            if step == 0 and prefill is not None:
                logits = prefill.logits
            elif step > 0 and steps is not None:
                logits = steps.step(step_input, positions, cache, state)
                steps = steps if logits is not None else None  # its compile failed: eager from here
            if logits is None:
                logits = inline.logits(step_input, mask, positions, cache)
            non_finite |= ~torch.isfinite(logits).all()
            if config.repetition_penalty != 1.0:
                seen = torch.zeros_like(logits, dtype=torch.bool) if seen is None else seen
                logits = penalise_repeats(logits, seen, config.repetition_penalty)
            if ngrams is not None:
                logits = ngrams.apply(logits.clone())
            if logits_hook is not None:
                logits = logits_hook(logits, state)
        if per_row:
            tokens = next_tokens_per_row(logits, configs, generators, non_finite)
        else:
            tokens = _next_tokens(logits, config, generators, non_finite)
        tokens = torch.where(finished, torch.full_like(tokens, pad_id), tokens)
        generated.append(tokens)
        if seen is not None:
            seen[torch.arange(tokens.shape[0], device=device), tokens] = True
        if ngrams is not None:
            ngrams.add(tokens.tolist())
        if on_step is not None and (ended := on_step(step, logits, tokens)) is not None:
            for i in torch.nonzero(ended & ~finished).flatten().tolist():
                stopped_at[i] = (step, "stop")
            finished |= ended
        if paragraph is not None:
            ended = (paragraph_after > 0) & (step + 1 >= paragraph_after) & paragraph.breaks(
                generated[-2] if step else None, tokens)
            for i in torch.nonzero(ended & ~finished).flatten().tolist():
                stopped_at[i] = (step, "paragraph")
            finished |= ended
        if config.stop_at_eos:
            finished |= torch.isin(tokens, stop)
        finished |= limits <= step + 1
        if bool(finished.all()):
            break
        step_input = tokens[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        step_valid = torch.ones_like(step_input, dtype=torch.bool)
    if bool(non_finite):
        raise NonFiniteError()
    return _trim(torch.stack(generated, dim=1).tolist(), stop_ids, configs, stopped_at)


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SteerlabError(f"invalid batch size {batch_size!r}; it must be an integer >= 1")


def _trim(rows: list[list[int]], stop_ids: set[int], configs: Sequence[GenerationSettings],
          stopped_at: Sequence[tuple[int, str] | None]) -> tuple[list[list[int]], list[str]]:
    """Cut each row at its budget, after its first EOS (kept out of the ids) or after the step that finished it
    (a stop string, a paragraph break), and say why it stopped."""
    token_ids, reasons = [], []
    for row, config, stop in zip(rows, configs, stopped_at):
        row = row[: config.max_new_tokens if stop is None else stop[0] + 1]
        cut = next((i for i, t in enumerate(row) if t in stop_ids), None) if config.stop_at_eos else None
        token_ids.append(row if cut is None else row[:cut])
        reasons.append("eos" if cut is not None else stop[1] if stop is not None else "length")
    return token_ids, reasons


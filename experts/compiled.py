"""Decode steps compiled whole (`Expert.load(..., decoding="compiled")`): packed decoding's steps as one
`torch.compile` (inductor) graph over a static KV cache, with steering inside the graph as tensors.

The prompts' forward runs eagerly with every hook, as in packed decoding. Then, for a batch that decodes
packed, its KV cache is copied into transformers' `StaticCache` (prompt plus budget, rounded up to `LENGTH_STEP`
columns) and each step runs the compiled graph of (rows, cache length, hooked points), compiled at its first use:
tens of seconds on two cores, once per shape and process (inductor keeps its kernels on disk, so a later process
compiles faster). Each live steering edit that adds an offset at a decode step (`StepAddition`: steerlab's `add`
with a constant, per-prompt or scheduled coefficient, at any positions rule) becomes a hook of the graph's own that
adds a per-row buffer, refilled before each step, so a new coefficient or prompt does not recompile. The model's
own hooks are set aside while a graph runs and put back after it (`experts.hooks.HookSet`), whatever happens.
While a step is traced, its attention is transformers' eager one-token SDPA (`_one_token_attention`): traced, theirs
would copy the whole cache once per query head at every step. It reads the cache's filled columns only: the mask's
width is the graph's one dynamic size (at 16 rows, reading the whole static cache took 13 ms of a 58 ms step).
Dynamo's guards and inductor's size asserts are skipped (a fifth of a step); what they would check is fixed by the
plan's key or checked on the host.

Every other case decodes eagerly, and `report(model)` counts why: another edit (ablation, norm-preserving, gates)
or a hook that reads, a logits hook (reward-augmented decoding reads the cache), a batch that decodes exactly, a
call off the main thread (a step swaps the model's hooks, which another thread, a server's reader, may be using),
weights edited since they were packed, sliding-window layers (Gemma), a failed compile, or a batch of
`packed.WIDE_ROWS` rows or more whose packed weights keep bfloat16 copies (on a CPU with native bfloat16: there the
copies beat the kernel, and their oneDNN layout cannot enter a graph, inside which every packed linear runs the
kernel). The graph computes what the eager packed step computes, but inductor fuses and rounds some operations
differently, so its tokens may part from eager packed decoding's; `benchmarks/RESULTS.md` states how often.
"""

from __future__ import annotations

import logging
import math
import threading
import types
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import AttentionInterface, StaticCache
from transformers.integrations.sdpa_attention import pack_gqa

from experts import packed
from experts.hooks import HookSet, SetAside, count_forward_hooks, live_edits, live_handles

log = logging.getLogger(__name__)

LENGTH_STEP = 128  # a static cache's length is the prompt plus the budget, rounded up to a multiple of this


@dataclass(frozen=True)
class StepAddition:
    """An activation edit that, at a decode step, adds an offset that does not depend on the activation: `edit` is
    the hook's function, `offset(state)` the (rows, 1, width) float32 tensor it adds at that step (None: nothing).
    `edit(h)` and `h + offset(state)` must be the same numbers; a compiled step runs the second."""

    edit: Callable[[Tensor], Tensor | None]
    offset: Callable[[Any], Tensor | None]  # Callable[[DecodeState], ...]

    def __call__(self, h: Tensor) -> Tensor | None:
        return self.edit(h)


ONE_TOKEN_ATTENTION = "steerlab_one_token_sdpa"


def _one_token_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                         dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """transformers' SDPA attention for one query token, as it runs eagerly: each key/value head attends for its
    group of query heads (`pack_gqa`). Traced by dynamo, transformers' own copies every cached key and value once
    per query head instead (`repeat_kv`), at every step of every layer."""
    q_length = query.shape[2]
    if attention_mask is not None and attention_mask.shape[-1] < key.shape[-2]:  # the static cache's filled columns
        key, value = key[:, :, : attention_mask.shape[-1]], value[:, :, : attention_mask.shape[-1]]
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        query = pack_gqa(query, groups)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=False)
    return out.reshape(out.shape[0], -1, q_length, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(ONE_TOKEN_ATTENTION, _one_token_attention)


@contextmanager
def _tracing(model: nn.Module) -> Iterator[None]:
    """What a step is traced with, and only then: packed linears use their code (`packed._IN_COMPILED_STEP`), and
    the attention is `_one_token_attention` where the model's is transformers' SDPA."""
    config = model.config
    before = config._attn_implementation
    if before == "sdpa":
        config._attn_implementation = ONE_TOKEN_ATTENTION
    packed._IN_COMPILED_STEP = True
    try:
        yield
    finally:
        packed._IN_COMPILED_STEP = False
        config._attn_implementation = before


def _step(model: nn.Module, input_ids: Tensor, position_ids: Tensor, mask: Tensor, cache: StaticCache) -> Tensor:
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True,
                logits_to_keep=1)
    return out.logits[:, -1]


def _own_step() -> Callable:
    """A copy of `_step` with a code object of its own, for one plan. Dynamo's guards are skipped (checking them cost
    a fifth of a step), so two plans must never share a code object: dynamo keeps its graphs on it. What the guards
    (and inductor's size asserts) would check is fixed by the plan's key (shapes, hooked points) and checked on the
    host before each batch (`_why_eager`: float32 on the CPU, packs current, hooks)."""
    return types.FunctionType(_step.__code__.replace(), _step.__globals__, _step.__name__)


@dataclass
class _Plan:
    """The compiled graph of one (rows, cache length, hooked points), its static cache, mask and offset buffers."""

    step: Callable
    cache: StaticCache
    mask: Tensor  # (rows, length) bool: the columns each row attends to
    offsets: list[Tensor]  # (rows, 1, width) float32, one per edit, in the order the edits run
    hooks: HookSet
    ran: bool = False
    failed: str = ""


@dataclass
class _State:
    plans: dict[tuple, _Plan] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)


_ENABLED: weakref.WeakKeyDictionary[nn.Module, _State] = weakref.WeakKeyDictionary()


def enable(model: nn.Module) -> None:
    """Compile `model`'s packed decode steps from now on (`Expert.load` does it for `decoding="compiled"`)."""
    _ENABLED.setdefault(model, _State())


def report(model: nn.Module) -> dict[str, int]:
    """How many batches of `model` decoded their steps compiled ("compiled") and eagerly (keyed by why)."""
    state = _ENABLED.get(model)
    return dict(state.counts) if state is not None else {}


def _sliding(model: nn.Module) -> bool:
    types_ = getattr(model.config.get_text_config(decoder=True), "layer_types", None) or ()
    return any(kind != "full_attention" for kind in types_)


def _why_eager(model: nn.Module, rows: int, length: int, packs: bool, logits_hook: object) -> str:
    """Why a batch cannot decode compiled ("" when it can)."""
    if not packs:
        return "the batch decodes exactly"
    if rows >= packed.WIDE_ROWS and packed.has_bfloat16_copies(model):
        return "bfloat16 copies for its rows"  # faster than the kernel there, and a graph cannot hold their layout
    if threading.current_thread() is not threading.main_thread():
        return "off the main thread"  # a step swaps the model's hooks, which another thread may be using
    weight = next(model.parameters())
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        return "not float32 on the CPU"
    if logits_hook is not None:
        return "a logits hook"
    if _sliding(model):
        return "sliding-window layers"
    if length > getattr(model.config, "max_position_embeddings", length):
        return "longer than the model's positions"
    linears = [m for m in model.modules() if isinstance(m, packed.PackedLinear)]
    if not linears or not all(m.current() for m in linears):
        return "weights edited since they were packed" if linears else "nothing packed"
    handles = live_handles(model)
    if any(handle._handles and not handle.edits for handle in handles) or count_forward_hooks(model) != sum(
            len(handle._handles) for handle in handles):
        return "a hook that is not steering"
    if not all(isinstance(fn, StepAddition) for _, fn in live_edits(model)):
        return "an edit that is not an addition"
    return ""


class CompiledSteps:
    """One batch's decode steps through a plan: `step(...)` after the prompts' forward, once per step."""

    def __init__(self, model: nn.Module, plan: _Plan, edits: list[StepAddition], counts: Counter) -> None:
        self._model, self._plan, self._edits, self._counts = model, plan, edits, counts
        self._aside: SetAside | None = None
        self._filled = self._started = 0

    def _start(self, cache: Any, attention_mask: Tensor) -> None:
        plan = self._plan
        width = attention_mask.shape[1]
        for dynamic, static in zip(cache.layers, plan.cache.layers):
            if not static.is_initialized:
                static.lazy_initialization(dynamic.keys, dynamic.values)
            for mine, theirs in ((static.keys, dynamic.keys), (static.values, dynamic.values)):
                mine[:, :, :width].copy_(theirs)
                mine[:, :, width:].zero_()
            static.cumulative_length.fill_(width)
        plan.mask.zero_()
        plan.mask[:, :width] = attention_mask.bool()
        self._filled = self._started = width
        self._aside = plan.hooks.set_aside()

    def step(self, input_ids: Tensor, position_ids: Tensor, cache: Any, state: Any) -> Tensor | None:
        """The logits of this step, or None when the plan's first compile failed (the caller then decodes eagerly
        from `cache`, which compiled steps never touch)."""
        plan = self._plan
        if self._aside is None:
            self._start(cache, state.attention_mask[:, :-1])
        for buffer, edit in zip(plan.offsets, self._edits):
            offset = edit.offset(state)
            if offset is None:
                buffer.zero_()
            else:
                buffer.copy_(offset)
        plan.mask[:, self._filled] = True
        self._filled += 1
        first = not plan.ran
        mask = plan.mask[:, None, None, : self._filled]  # the filled columns: the graph's one dynamic size
        if first:
            torch._dynamo.mark_dynamic(mask, 3)  # a compile that would specialise on it fails, and the batch goes eager
        try:
            with self._aside.installed(), _tracing(self._model) if first else nullcontext():
                logits = plan.step(self._model, input_ids, position_ids, mask, plan.cache)
        except Exception as error:  # noqa: BLE001 - a compile that fails falls back, once, and says why
            if not first:
                raise
            plan.failed = f"compiling failed: {type(error).__name__}"
            log.warning("compiled decode steps failed to compile (%s: %s); decoding eagerly", type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "")
            self._counts[plan.failed] += 1
            return None
        if self._filled == self._started + 1:  # the batch's first step
            self._counts["compiled"] += 1
        plan.ran = True
        return logits


def steps_for(model: nn.Module, rows: int, length: int, *, packs: bool, logits_hook: object) -> CompiledSteps | None:
    """Compiled steps for a batch of `rows` rows that may reach `length` columns, or None (eager) when the model
    has no compiled decoding or the batch cannot have it (counted in `report`)."""
    state = _ENABLED.get(model)
    if state is None:
        return None
    why = _why_eager(model, rows, length, packs, logits_hook)
    if why:
        state.counts[why] += 1
        return None
    edits = live_edits(model)
    points = tuple(point for point, _ in edits)
    length = LENGTH_STEP * math.ceil(length / LENGTH_STEP)
    key = (rows, length, points)
    plan = state.plans.get(key)
    if plan is None:
        plan = state.plans[key] = _new_plan(model, rows, length, points)
    if plan.failed:
        state.counts[plan.failed] += 1
        return None
    return CompiledSteps(model, plan, [fn for _, fn in edits], state.counts)


def _adds(buffer: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda h: h + buffer


def _new_plan(model: nn.Module, rows: int, length: int, points: tuple) -> _Plan:
    log.info("compiling decode steps for %d rows and %d columns (once per shape: tens of seconds)", rows, length)
    width = model.config.get_text_config(decoder=True).hidden_size
    offsets = [torch.zeros(rows, 1, width) for _ in points]
    step = torch.compile(_own_step(), dynamic=False, fullgraph=True,
                         options={"guard_filter_fn": torch.compiler.skip_all_guards_unsafe, "size_asserts": False})
    cache = StaticCache(config=model.config, max_cache_len=length)
    return _Plan(step, cache, torch.zeros(rows, length, dtype=torch.bool),
                 offsets, HookSet(model, [(point, _adds(buffer)) for point, buffer in zip(points, offsets)]))

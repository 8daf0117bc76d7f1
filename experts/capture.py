"""Activation capture at TL-named hooks, with padding handled, stopping the forward pass early.

Names with an HF boundary are read by plain torch hooks on the expert's own model; other names
(attention internals) are read through the TransformerBridge on the same padded batch, with the
steering edits now attached to the expert replayed on it, so both see one computation.

Each batch is padded to its own longest prompt. A reduction (`reduce="last"`, `"mean"` or a list
of token positions) keeps only what it returns, `(prompts, d_model)` or `(prompts, k, d_model)`
(and, with `keep_norms`, each position's norm); the full `(prompts, pos, d_model)` tensor is never
built for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from experts import hookpoints
from experts.errors import EmptyPromptsError, SteerlabError, UnknownHookError
from experts.files import atomic_path
from experts.generate import DecodeState, check_batch_size, publish_state
from experts.hooks import hook_context, live_edits

if TYPE_CHECKING:
    from experts.expert import Expert, TokenBatch

Reduce = str | Sequence[int]
REDUCTIONS = ("none", "last", "mean", "[positions]")


class _StopForward(Exception):
    """Raised by the last capturing hook: nothing after it is needed."""


@dataclass
class ActivationCache:
    """Activations by TL name; index as `cache[name]` or `cache["resid_post", 3]` (negative layers count
    from the end). Unreduced activations are left-padded like `tokens` (zeros on padding); reduced
    ones have no position axis; with `keep_norms`, `norms[name]` holds each position's norm (zeros on padding)."""

    activations: dict[str, Tensor]
    tokens: Tensor  # (batch, pos)
    attention_mask: Tensor  # (batch, pos)
    prompts: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    reduce: Reduce = "none"
    norms: dict[str, Tensor] = field(default_factory=dict)  # (batch, pos) per name, with keep_norms

    def _name(self, key: str | tuple[str, int]) -> str:
        if not isinstance(key, tuple):
            return key
        kind, layer = key
        n_layers = self.metadata.get("n_layers")
        if layer < 0 and n_layers:
            layer += n_layers
        return hookpoints.act_name(kind, layer)

    def __getitem__(self, key: str | tuple[str, int]) -> Tensor:
        name = self._name(key)
        if name not in self.activations:
            raise UnknownHookError(name, list(self.activations))
        return self.activations[name]

    def __contains__(self, name: str) -> bool:
        return name in self.activations

    def __iter__(self) -> Iterator[str]:
        return iter(self.activations)

    def __len__(self) -> int:
        return len(self.activations)

    def keys(self):
        return self.activations.keys()

    def values(self):
        return self.activations.values()

    def items(self):
        return self.activations.items()

    @property
    def names(self) -> list[str]:
        return list(self.activations)

    def stack_activation(self, kind: str, layer: int = -1) -> Tensor:
        """`(layers, ...)`: `kind` (e.g. `"resid_post"`) at every captured layer before `layer` (all if -1),
        as TransformerLens's `ActivationCache.stack_activation`."""
        layers = sorted(int(n.split(".")[1]) for n in self.activations if n.startswith("blocks.")
                        and n.endswith(f".hook_{kind.removeprefix('hook_')}") and n.count(".") == 2)
        chosen = [i for i in layers if layer < 0 or i < layer]
        if not chosen:
            raise UnknownHookError(hookpoints.act_name(kind, max(layer, 0)), list(self.activations))
        return torch.stack([self.activations[hookpoints.act_name(kind, i)] for i in chosen])

    def last_token(self, name: str) -> Tensor:
        """(batch, d_model) at each prompt's last token (left padding puts it at -1)."""
        acts = self[name]
        return acts if self.reduce == "last" else acts[:, -1]

    def unpadded(self, name: str) -> list[Tensor]:
        """One (len_i, ...) tensor per prompt, padding removed (unreduced captures only)."""
        if self.reduce != "none":
            raise SteerlabError(f"this cache was reduced ({self.reduce!r}); capture with reduce='none' for positions")
        acts, mask = self[name], self.attention_mask.bool()
        return [acts[row][mask[row]] for row in range(acts.shape[0])]

    def save(self, path: str | Path) -> Path:
        """Write activations, tokens and mask to safetensors (atomically), metadata as JSON inside."""
        path = Path(path)
        tensors = {f"act.{n}": t.detach().contiguous().cpu() for n, t in self.activations.items()}
        tensors |= {f"norm.{n}": t.detach().contiguous().cpu() for n, t in self.norms.items()}
        tensors["tokens"] = self.tokens.cpu()
        tensors["attention_mask"] = self.attention_mask.cpu()
        reduce = self.reduce if isinstance(self.reduce, str) else list(self.reduce)
        meta = {"steerlab": json.dumps({**self.metadata, "prompts": self.prompts, "reduce": reduce})}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path


def _split_names(expert: Expert, names: Sequence[str]) -> tuple[list[hookpoints.HookPoint], list[str]]:
    fast, slow = [], []
    for name in dict.fromkeys(names):
        point = hookpoints.resolve_hook(name, expert.architecture, expert.n_layers)
        if point is not None:
            fast.append(point)
            continue
        if name not in expert.bridge.hook_dict:
            raise UnknownHookError(name, expert.hook_names() + expert.bridge_hook_names())
        slow.append(name)
    order = {n: i for i, n in enumerate(expert.hook_names())}
    return sorted(fast, key=lambda p: order[p.name]), slow


def _check_reduce(reduce: Reduce) -> Reduce:
    if isinstance(reduce, str):
        if reduce not in ("none", "last", "mean"):
            raise SteerlabError(f"unknown reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
        return reduce
    positions = tuple(reduce)
    if not positions or not all(isinstance(p, int) for p in positions):
        raise SteerlabError(f"reduce positions must be a non-empty list of integers, got {reduce!r}")
    return positions


class _Reducer:
    """Turns one batch's (batch, pos, d) activation into what the cache keeps."""

    def __init__(self, reduce: Reduce, mask: Tensor, mean_from: Tensor):
        self.reduce, self.mask = reduce, mask.bool()
        lengths = self.mask.sum(-1)
        width = mask.shape[1]
        self.first = width - lengths  # column of each row's first real token
        if isinstance(reduce, tuple):
            index = torch.tensor(reduce, device=mask.device)[None, :].expand(len(lengths), -1)
            index = torch.where(index < 0, index + lengths[:, None], index)
            if bool(((index < 0) | (index >= lengths[:, None])).any()):
                raise SteerlabError(f"reduce positions {list(reduce)} do not fit a prompt of {int(lengths.min())} tokens")
            self.columns = index + self.first[:, None]
        if reduce == "mean":
            offset = torch.arange(width, device=mask.device)[None, :] - self.first[:, None]
            self.weights = (self.mask & (offset >= mean_from[:, None])).float()
            if bool((self.weights.sum(-1) == 0).any()):
                raise SteerlabError("reduce='mean': a prompt has no tokens at or after its mean_from offset")

    def __call__(self, acts: Tensor) -> Tensor:
        if self.reduce == "last":
            return acts[:, -1].clone()
        if self.reduce == "mean":
            w = self.weights.to(acts.device)
            return ((acts.float() * w[..., None]).sum(1) / w.sum(1, keepdim=True)).to(acts.dtype)
        rows = torch.arange(acts.shape[0], device=acts.device)[:, None]
        return acts[rows, self.columns.to(acts.device)].clone()


def _token_norms(acts: Tensor, mask: Tensor) -> Tensor:
    """(batch, pos) norm of each position's activation, zeros on padding."""
    return acts.float().norm(dim=-1) * mask.to(acts.device)


def _trim(full: TokenBatch, rows: slice) -> TokenBatch:
    """The rows of a globally padded batch, cut to their own longest prompt (left padding)."""
    mask = full.attention_mask[rows]
    width = int(mask.sum(-1).max())
    cut = slice(mask.shape[1] - width, None)
    return type(full)(full.input_ids[rows, cut], mask[:, cut], full.position_ids[rows, cut])


@torch.inference_mode()
def _capture_fast(expert: Expert, batch: TokenBatch, points: list[hookpoints.HookPoint], reducer: _Reducer | None,
                  logits: bool, keep_norms: bool) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]:
    store: dict[str, Tensor] = {}
    norms: dict[str, Tensor] = {}
    last = points[-1].name if points and not logits else None

    def reader(name: str):
        def read(activation: Tensor) -> None:
            if reducer is None:
                store[name] = activation.detach().clone()
            else:
                store[name] = reducer(activation.detach())
            if keep_norms:
                norms[name] = _token_norms(activation.detach(), batch.attention_mask)
            if name == last:
                raise _StopForward

        return read

    out = None
    with hook_context(expert.model, [(p, reader(p.name)) for p in points], owner="capture"):
        try:
            out = expert.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, use_cache=False, logits_to_keep=0 if logits else 1)
        except _StopForward:
            pass
    return store, norms, (out.logits if logits else None)


def _bridge_hook(fn):
    def hook(activation: Tensor, hook: Any) -> Tensor | None:
        return fn(activation)

    return hook


@torch.inference_mode()
def _capture_bridge(expert: Expert, batch: TokenBatch, names: list[str]) -> dict[str, Tensor]:
    """Bridge-served names, with the steering attached to the expert replayed on the bridge."""
    edits = [(point.name, _bridge_hook(fn)) for point, fn in live_edits(expert.model)]
    with expert.bridge.hooks(fwd_hooks=edits):
        _, cache = expert.bridge.run_with_cache(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            names_filter=names,
        )
    return {n: cache[n].detach().clone() for n in names}


def _place(target: Tensor, rows: slice, value: Tensor, mask: Tensor) -> None:
    """Write a batch's (rows, width, ...) values, zeroed on padding, right-aligned into the padded target."""
    width = value.shape[1]
    keep = mask.to(value.device).reshape(*mask.shape, *([1] * (value.ndim - 2)))
    target[rows, target.shape[1] - width :] = (value * keep).to(target.device)


def run_with_cache(
    expert: Expert,
    prompts: Sequence[str],
    names: Sequence[str],
    *,
    chat: bool = False,
    batch_size: int = 16,
    progress: bool = False,
    reduce: Reduce = "none",
    mean_from: Sequence[int] | None = None,
    return_logits: bool = False,
    keep_norms: bool = False,
) -> ActivationCache | tuple[Tensor, ActivationCache]:
    """Run `prompts` (raw text, or chat-formatted with `chat=True`) and keep the named activations.

    `reduce`: `"none"` (left-padded `(prompts, pos, ...)`), `"last"` (each prompt's last token),
    `"mean"` (mean over each prompt's tokens from its `mean_from` offset, default 0), or a list of
    token positions (negative from the end). With `return_logits`, returns `(logits, cache)` as
    TransformerLens does (logits left-padded, zeros on padding; the forward then runs to the end).
    `keep_norms` also keeps each position's norm (`cache.norms`), e.g. to calibrate by the typical norm.
    """
    prompts = list(prompts)
    if not prompts or any(not p.strip() for p in prompts):
        raise EmptyPromptsError()
    if not names:
        raise EmptyPromptsError("hook names")
    check_batch_size(batch_size)
    reduce = _check_reduce(reduce)
    if mean_from is not None and (reduce != "mean" or len(mean_from) != len(prompts)):
        raise SteerlabError("mean_from needs reduce='mean' and one offset per prompt")
    fast, slow = _split_names(expert, names)
    if slow and reduce != "none":
        raise SteerlabError(f"names inside attention ({slow[0]}) are captured whole; use reduce='none' for them")
    full = expert.tokenize(expert.format_prompts(prompts, chat=chat))
    offsets = torch.tensor(list(mean_from) if mean_from is not None else [0] * len(prompts), device=expert.device)
    kept: dict[str, Tensor] = {}
    norms: dict[str, list[Tensor]] = {}
    logits: Tensor | None = None
    n, width = full.input_ids.shape
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="capture", unit="batch"):
        rows = slice(start, start + batch_size)
        batch = _trim(full, rows)
        reducer = None if reduce == "none" else _Reducer(reduce, batch.attention_mask, offsets[rows])
        state = DecodeState.for_batch(batch.attention_mask, first_row=start, n_prompts=n)
        with publish_state(state):
            acts, batch_norms, batch_logits = _capture_fast(expert, batch, fast, reducer, return_logits, keep_norms) \
                if fast or return_logits else ({}, {}, None)
            if slow:
                whole = type(full)(full.input_ids[rows], full.attention_mask[rows], full.position_ids[rows])
                acts |= _capture_bridge(expert, whole, slow)
        for name, value in acts.items():
            if name not in kept:
                shape = (n, *value.shape[1:]) if reducer is not None or name in slow else (n, width, *value.shape[2:])
                kept[name] = torch.zeros(shape, dtype=value.dtype, device=value.device)
            if reducer is not None or name in slow:
                kept[name][rows] = value
            else:
                _place(kept[name], rows, value, batch.attention_mask)
        for name, value in batch_norms.items():
            norms.setdefault(name, []).append(torch.nn.functional.pad(value, (width - value.shape[1], 0)))
        if batch_logits is not None:
            if logits is None:
                logits = torch.zeros((n, width, batch_logits.shape[-1]), dtype=batch_logits.dtype, device=batch_logits.device)
            _place(logits, rows, batch_logits, batch.attention_mask)
    cache = ActivationCache(
        activations={name: kept[name] for name in dict.fromkeys(names)},
        tokens=full.input_ids,
        attention_mask=full.attention_mask,
        prompts=prompts,
        metadata={"expert": expert.name, "names": list(dict.fromkeys(names)), "chat": chat, "n_layers": expert.n_layers},
        reduce=reduce,
        norms={name: torch.cat(parts) for name, parts in norms.items()},
    )
    return (logits, cache) if return_logits else cache

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
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from experts import hookpoints
from experts.errors import SteerlabError, UnknownHookError
from experts.files import atomic_path
from experts.generate import DecodeState, publish_state
from experts.hooks import hook_context, live_edits
from experts.tokens import TokenBatch

Reduce = str | Sequence[int]
REDUCTIONS = ("none", "last", "mean", "[positions]")


class StopForward(Exception):
    """Raised by the last reading hook: nothing after it is needed (the caller catches it)."""


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


def check_reduce(reduce: Reduce) -> Reduce:
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


@torch.inference_mode()
def _capture_fast(model: torch.nn.Module, batch: TokenBatch, points: list[hookpoints.HookPoint], reducer: _Reducer | None,
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
                raise StopForward

        return read

    out = None
    with hook_context(model, [(p, reader(p.name)) for p in points], owner="capture"):
        try:
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, use_cache=False, logits_to_keep=0 if logits else 1)
        except StopForward:
            pass
    return store, norms, (out.logits if logits else None)


def _bridge_hook(fn):
    def hook(activation: Tensor, hook: Any) -> Tensor | None:
        return fn(activation)

    return hook


@torch.inference_mode()
def _capture_bridge(model: torch.nn.Module, bridge: Any, batch: TokenBatch, names: list[str]) -> dict[str, Tensor]:
    """Bridge-served names, with the steering attached to the HF model replayed on the bridge."""
    edits = [(point.name, _bridge_hook(fn)) for point, fn in live_edits(model)]
    with bridge.hooks(fwd_hooks=edits):
        _, cache = bridge.run_with_cache(
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


@dataclass(frozen=True)
class CaptureRequest:
    """What to keep: fast names (torch hooks on the HF model), bridge-served names, and how to reduce."""

    fast: list[hookpoints.HookPoint]
    slow: list[str]
    reduce: Reduce = "none"
    mean_from: Sequence[int] | None = None
    return_logits: bool = False
    keep_norms: bool = False


def capture(model: torch.nn.Module, full: TokenBatch, request: CaptureRequest, *, bridge: Any = None,
            batch_size: int = 16, progress: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]:
    """Run the tokenized prompts `batch_size` rows at a time and keep what `request` asks for: the activations
    by name (left-padded like `full`, zeros on padding, or reduced), per-position norms, and the logits."""
    reduce, fast, slow = request.reduce, request.fast, request.slow
    offsets = torch.tensor(list(request.mean_from) if request.mean_from is not None else [0] * len(full),
                           device=full.input_ids.device)
    kept: dict[str, Tensor] = {}
    norms: dict[str, list[Tensor]] = {}
    logits: Tensor | None = None
    n, width = full.input_ids.shape
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="capture", unit="batch"):
        rows = slice(start, start + batch_size)
        batch = full.rows(rows)
        reducer = None if reduce == "none" else _Reducer(reduce, batch.attention_mask, offsets[rows])
        state = DecodeState.for_batch(batch.attention_mask, first_row=start, n_prompts=n, input_ids=batch.input_ids)
        with publish_state(state):
            acts, batch_norms, batch_logits = _capture_fast(model, batch, fast, reducer, request.return_logits,
                                                            request.keep_norms) \
                if fast or request.return_logits else ({}, {}, None)
            if slow:
                whole = TokenBatch(full.input_ids[rows], full.attention_mask[rows], full.position_ids[rows])
                acts |= _capture_bridge(model, bridge, whole, slow)
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
    return kept, {name: torch.cat(parts) for name, parts in norms.items()}, logits

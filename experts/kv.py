"""The generation loop's KV cache (`new_cache`), and its rows joining and leaving a running batch (continuous
batching).

`new_cache` is transformers' `DynamicCache` whose full-attention layers keep their keys and values in buffers with
room for more columns (`GrowingLayer`): a decode step writes its new column in place, where `DynamicLayer` copies
the whole cache into a new tensor (`torch.cat`) at every step of every layer. The layer's keys and values are the
same numbers either way, views of the buffers.

The batch is left-padded: every row's tokens end at the last column, and the attention mask marks padding with 0.
Rows that join are padded on the left to the batch's width (or the batch to theirs); when rows leave, the
columns that only padding fills are cut. Full-attention layers hold every column; sliding-window layers hold the
last columns up to their window, as transformers' `DynamicSlidingWindowLayer` does.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from experts.errors import SteerlabError

ROOM = 64  # a new buffer has room for twice the columns it must hold, and for at least ROOM more


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with room to grow: `update` writes the new
    columns in place (the buffer is doubled when full). Keys or values set from outside (joining rows, a copy
    repeated for look-ahead) are taken as they are, into a new buffer, at the next update."""

    def __init__(self) -> None:
        super().__init__()
        self._buffers: list[Tensor | None] = [None, None]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = self._append(0, self.keys, key_states)
        self.values = self._append(1, self.values, value_states)
        return self.keys, self.values

    def _append(self, which: int, held: Tensor, new: Tensor) -> Tensor:
        start = held.shape[-2] if held.numel() else 0
        width = start + new.shape[-2]
        buffer = self._buffers[which]
        fits = (buffer is not None and held.numel() and held.data_ptr() == buffer.data_ptr()  # held is the buffer's
                and held.shape[:2] == buffer.shape[:2] and held.stride() == buffer.stride()  # first columns, and
                and buffer.shape[2] >= width)  # the new ones fit after them
        if not fits:
            buffer = new.new_empty(*new.shape[:2], max(2 * width, width + ROOM), new.shape[3])
            if start:
                buffer[:, :, :start] = held
            self._buffers[which] = buffer
        buffer[:, :, start:width] = new
        return buffer[:, :, :width]

    def reset(self) -> None:
        self._buffers = [None, None]
        super().reset()

    def __deepcopy__(self, memo: dict) -> GrowingLayer:
        """A copy holds only the columns in use, not the room to grow (a look-ahead copies the cache every step)."""
        twin = copy.copy(self)
        twin._buffers = [None, None]
        if self.is_initialized:
            twin.keys, twin.values = self.keys.clone(), self.values.clone()
        memo[id(self)] = twin
        return twin


def new_cache(config) -> DynamicCache:
    """An empty cache for a model with `config`: transformers' `DynamicCache` with `GrowingLayer`s for its
    full-attention layers (sliding-window layers stay as transformers makes them)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _check(cache: DynamicCache) -> None:
    kinds = {type(layer).__name__ for layer in cache.layers} - {"DynamicLayer", "DynamicSlidingWindowLayer",
                                                                "GrowingLayer"}
    if kinds:
        raise SteerlabError(f"rows cannot join or leave a cache with {', '.join(sorted(kinds))} layers")


def _pad_left(t: Tensor, columns: int) -> Tensor:
    return t if columns == 0 else torch.cat([t.new_zeros(*t.shape[:2], columns, t.shape[3]), t], dim=2)


def _held(layer: DynamicLayer, width: int) -> int:
    """How many of `width` columns the layer holds."""
    if isinstance(layer, DynamicSlidingWindowLayer):
        return min(width, layer.sliding_window - 1)
    return width


def _widen(layer: DynamicLayer, width: int) -> tuple[Tensor, Tensor]:
    """The layer's keys and values, padded on the left as if its rows were `width` columns wide."""
    pad = _held(layer, width) - layer.keys.shape[2]
    return _pad_left(layer.keys, pad), _pad_left(layer.values, pad)


def _pad_mask(mask: Tensor, width: int) -> Tensor:
    return torch.cat([mask.new_zeros(mask.shape[0], width - mask.shape[1]), mask], dim=1)


def join_rows(cache: DynamicCache, mask: Tensor, joining: DynamicCache, joining_mask: Tensor) -> Tensor:
    """Append the rows of `joining` (its cache and attention mask) to `cache`'s, in place; returns the batch's new
    attention mask."""
    _check(cache)
    _check(joining)
    width = max(mask.shape[1], joining_mask.shape[1])
    for layer, other in zip(cache.layers, joining.layers):
        keys, values = _widen(layer, width)
        other_keys, other_values = _widen(other, width)
        layer.keys, layer.values = torch.cat([keys, other_keys]), torch.cat([values, other_values])
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = width
    return torch.cat([_pad_mask(mask, width), _pad_mask(joining_mask, width)])


def keep_rows(cache: DynamicCache, mask: Tensor, keep: Tensor) -> Tensor:
    """Keep only the rows `keep` (indices, at least one) of `cache`, in place, and cut the leading columns that
    are padding in every row kept; returns the new attention mask."""
    _check(cache)
    mask = mask[keep]
    cut = int((mask.sum(0) == 0).int().cumprod(0).sum())
    width = mask.shape[1] - cut
    for layer in cache.layers:
        held = _held(layer, width)
        layer.keys = layer.keys[keep][:, :, layer.keys.shape[2] - held:]
        layer.values = layer.values[keep][:, :, layer.values.shape[2] - held:]
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = width
    return mask[:, cut:]

"""Rows of a KV cache joining and leaving a running batch (continuous batching).

The batch is left-padded: every row's tokens end at the last column, and the attention mask marks padding with 0.
Rows that join are padded on the left to the batch's width (or the batch to theirs); when rows leave, the
columns that only padding fills are cut. Full-attention layers hold every column; sliding-window layers hold the
last columns up to their window, as transformers' `DynamicSlidingWindowLayer` does.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from experts.errors import SteerlabError


def _check(cache: DynamicCache) -> None:
    kinds = {type(layer).__name__ for layer in cache.layers} - {"DynamicLayer", "DynamicSlidingWindowLayer"}
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

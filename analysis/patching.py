"""Activation patching: run the corrupted prompt, put back one piece of the clean run, see how much of
the clean behaviour returns.

The behaviour is a `LogitDiff` at the last position (e.g. " she" minus " he" after "Kelly" vs "Joseph").
`patch_residual` patches the residual stream at each layer × position (plain hooks, one batched forward
per layer); `patch_heads` patches each attention head's output `hook_z` at each layer (through the
TransformerBridge, where those names live). A normalised effect of 1 restores the clean metric, 0 does
nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from analysis.plots import subplots
from analysis.tokens import UnalignedPromptsError, check_layers, single_token_ids, token_labels
from experts.expert import Expert
from experts.hookpoints import BLOCK_HOOKS, act_name, attn_name, check_known
from experts.hooks import hook_context


@dataclass(frozen=True)
class LogitDiff:
    """logit(correct) − logit(incorrect) at the last position; both must be single tokens."""

    correct: str
    incorrect: str

    def __call__(self, expert: Expert, last_logits: Tensor) -> Tensor:
        good, bad = single_token_ids(expert, [self.correct, self.incorrect])
        return (last_logits[:, good] - last_logits[:, bad]).float()


@dataclass(frozen=True)
class PatchingResult:
    """`effects`: one row per patched piece (layer × position, or layer × head) with the raw metric and
    the normalised effect (patched − corrupted) / (clean − corrupted)."""

    effects: pd.DataFrame
    clean: float
    corrupted: float
    tokens: list[str]
    over: str  # "position" or "head"


def _aligned(expert: Expert, clean: str, corrupted: str, chat: bool) -> tuple[str, Tensor, Tensor]:
    """The clean text as formatted, and both prompts' token ids (which must have equal lengths)."""
    texts = expert.format_prompts([clean, corrupted], chat=chat)
    ids = [expert.encode(text) for text in texts]
    if len(ids[0]) != len(ids[1]):
        raise UnalignedPromptsError(
            f"clean prompt is {len(ids[0])} tokens and corrupted is {len(ids[1])}; patching needs equal lengths "
            "(swap words that are one token each, e.g. ' Kelly' and ' Joseph')"
        )
    return texts[0], torch.tensor([ids[0]], device=expert.device), torch.tensor([ids[1]], device=expert.device)


@torch.inference_mode()
def _last_logits(expert: Expert, input_ids: Tensor) -> Tensor:
    return expert.model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[:, -1]


def _result(rows: list[dict], clean: float, corrupted: float, tokens: list[str], over: str) -> PatchingResult:
    frame = pd.DataFrame(rows)
    gap = clean - corrupted
    frame["effect"] = (frame["patched"] - corrupted) / gap if abs(gap) > 1e-6 else np.nan
    return PatchingResult(frame, clean, corrupted, tokens, over)


def first_difference(clean_ids: Tensor, corrupt_ids: Tensor) -> int:
    """The first position where the two prompts differ; earlier positions are identical in both runs."""
    differs = (clean_ids[0] != corrupt_ids[0]).nonzero()
    if len(differs) == 0:
        raise UnalignedPromptsError("clean and corrupted prompts are the same tokens; nothing to patch")
    return int(differs[0])


@torch.inference_mode()
def _run_keeping_prefix(expert: Expert, input_ids: Tensor, prefix: int):
    """Last-position logits of a full run, and its KV cache cut to the first `prefix` positions (None for 0)."""
    out = expert.model(input_ids=input_ids, use_cache=prefix > 0, logits_to_keep=1)
    if prefix == 0:
        return out.logits[:, -1], None
    out.cache.crop(prefix - input_ids.shape[1])  # negative: drop that many final positions
    return out.logits[:, -1], out.cache


@torch.inference_mode()
def patch_residual(
    expert: Expert,
    clean: str,
    corrupted: str,
    metric: LogitDiff,
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    hook: str = "resid_pre",
    chat: bool = False,
) -> PatchingResult:
    """Patch `blocks.L.hook_{hook}` at one position at a time from the clean run into the corrupted run.

    Positions default to the first differing token onwards: before it both runs are identical, so a
    patch there changes nothing. Each layer is one batched forward (a row per position) that reuses the
    corrupted run's KV cache for the unpatched prefix.
    """
    check_known(f"hook_{hook.removeprefix('hook_')}", BLOCK_HOOKS)
    layers = check_layers(expert, layers)
    clean_text, clean_ids, corrupt_ids = _aligned(expert, clean, corrupted, chat)
    n_positions = clean_ids.shape[1]
    start = first_difference(clean_ids, corrupt_ids)
    positions = list(range(start, n_positions)) if positions is None else sorted({p % n_positions for p in positions})
    names = [act_name(hook, layer) for layer in layers]
    clean_cache = expert.run_with_cache(clean_text, names)
    clean_value = float(metric(expert, _last_logits(expert, clean_ids))[0])
    prefix = min(positions)
    corrupted_logits, prefix_cache = _run_keeping_prefix(expert, corrupt_ids, prefix)
    corrupted_value = float(metric(expert, corrupted_logits)[0])
    suffix = corrupt_ids[:, prefix:].expand(len(positions), -1)
    position_ids = torch.arange(prefix, n_positions, device=expert.device).expand(len(positions), -1)
    rows_index = torch.arange(len(positions), device=expert.device)
    position_index = torch.tensor(positions, device=expert.device)
    tokens = token_labels(expert, clean_ids[0].tolist())
    rows = []
    for layer, name in zip(layers, names):
        source = clean_cache[name][0, position_index]

        def put_back(h: Tensor, source: Tensor = source) -> Tensor:
            out = h.clone()
            out[rows_index, position_index - prefix] = source.to(out.dtype)
            return out

        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(positions))
        with hook_context(expert.model, [(expert.hook_point(name), put_back)]):
            logits = expert.model(input_ids=suffix, position_ids=position_ids, cache=cache,
                                  use_cache=cache is not None, logits_to_keep=1).logits[:, -1]
        rows += [{"layer": layer, "position": p, "token": tokens[p], "patched": float(v)}
                 for p, v in zip(positions, metric(expert, logits))]
    return _result(rows, clean_value, corrupted_value, tokens, "position")


@torch.inference_mode()
def patch_heads(
    expert: Expert,
    clean: str,
    corrupted: str,
    metric: LogitDiff,
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    chat: bool = False,
) -> PatchingResult:
    """Patch each head's `blocks.L.attn.hook_z` (at `positions`, default all) from the clean run."""
    layers = check_layers(expert, layers)
    clean_text, clean_ids, corrupt_ids = _aligned(expert, clean, corrupted, chat)
    n_positions = clean_ids.shape[1]
    position_index = torch.arange(n_positions) if positions is None else torch.tensor([p % n_positions for p in positions])
    names = [attn_name("z", layer) for layer in layers]
    clean_cache = expert.run_with_cache(clean_text, names)
    # the bridge's eager attention differs from sdpa in the last bits: take both ends from the bridge too
    clean_value = float(metric(expert, expert.bridge.run_with_hooks(clean_ids, fwd_hooks=[])[:, -1])[0])
    corrupted_value = float(metric(expert, expert.bridge.run_with_hooks(corrupt_ids, fwd_hooks=[])[:, -1])[0])
    tokens = token_labels(expert, clean_ids[0].tolist())
    rows = []
    for layer, name in zip(layers, names):
        source = clean_cache[name][0]  # (pos, heads, d_head)
        n_heads = source.shape[1]

        def put_back(z: Tensor, hook=None, source: Tensor = source, n_heads: int = n_heads) -> Tensor:
            out = z.clone()
            for head in range(n_heads):
                out[head, position_index.to(out.device), head] = source[position_index, head].to(out.dtype)
            return out

        logits = expert.bridge.run_with_hooks(corrupt_ids.expand(n_heads, -1), fwd_hooks=[(name, put_back)])
        values = metric(expert, logits[:, -1])
        rows += [{"layer": layer, "head": head, "patched": float(v)} for head, v in enumerate(values)]
    return _result(rows, clean_value, corrupted_value, tokens, "head")


def patching_plot(result: PatchingResult, title: str = "Activation patching") -> Figure:
    """Heatmap of the normalised effect: layers × positions (token labels) or layers × heads."""
    grid = result.effects.pivot(index="layer", columns=result.over, values="effect")
    fig, ax = subplots(figsize=(max(5.0, 0.32 * grid.shape[1] + 2.5), max(3.5, 0.22 * grid.shape[0] + 1.5)))
    limit = max(1.0, float(np.nanmax(np.abs(grid.to_numpy())))) if grid.notna().any().any() else 1.0
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu", vmin=-limit, vmax=limit, origin="lower")
    fig.colorbar(image, ax=ax, label="normalised effect (1 = clean restored)")
    if result.over == "position":
        ax.set_xticks(range(grid.shape[1]), [repr(result.tokens[p])[1:-1][:10] for p in grid.columns], rotation=70, fontsize=6)
        ax.set_xlabel("patched position")
    else:
        ax.set_xticks(range(grid.shape[1]), [str(h) for h in grid.columns], fontsize=7)
        ax.set_xlabel("patched head (hook_z)")
    ax.set_yticks(range(grid.shape[0]), [str(layer) for layer in grid.index], fontsize=6)
    ax.set_ylabel("layer")
    ax.set_title(f"{title} (clean {result.clean:+.2f}, corrupted {result.corrupted:+.2f})")
    return fig

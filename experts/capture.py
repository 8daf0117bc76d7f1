"""Activation capture at TL-named hooks, with padding handled, stopping the forward pass early.

Names with an HF boundary are read by plain torch hooks on the expert's own model; other names
(attention internals) are read through the TransformerBridge on the same padded batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from experts import hookpoints
from experts.errors import EmptyPromptsError, UnknownHookError
from experts.files import atomic_path
from experts.generate import DecodeState, publish_state
from experts.hooks import hook_context

if TYPE_CHECKING:
    from experts.expert import Expert


class _StopForward(Exception):
    """Raised by the last capturing hook: nothing after it is needed."""


@dataclass
class ActivationCache:
    """Activations by TL name, left-padded like `tokens`; index as `cache[name]` or `cache["resid_post", 3]`."""

    activations: dict[str, Tensor]
    tokens: Tensor  # (batch, pos)
    attention_mask: Tensor  # (batch, pos)
    prompts: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str | tuple[str, int]) -> Tensor:
        name = hookpoints.act_name(*key) if isinstance(key, tuple) else key
        if name not in self.activations:
            raise UnknownHookError(name, list(self.activations))
        return self.activations[name]

    def __contains__(self, name: str) -> bool:
        return name in self.activations

    @property
    def names(self) -> list[str]:
        return list(self.activations)

    def last_token(self, name: str) -> Tensor:
        """(batch, d_model) at each prompt's last token (left padding puts it at -1)."""
        return self[name][:, -1]

    def unpadded(self, name: str) -> list[Tensor]:
        """One (len_i, ...) tensor per prompt, padding removed."""
        acts, mask = self[name], self.attention_mask.bool()
        return [acts[row][mask[row]] for row in range(acts.shape[0])]

    def save(self, path: str | Path) -> Path:
        """Write activations, tokens and mask to safetensors (atomically), metadata as JSON inside."""
        path = Path(path)
        tensors = {f"act.{n}": t.detach().contiguous().cpu() for n, t in self.activations.items()}
        tensors["tokens"] = self.tokens.cpu()
        tensors["attention_mask"] = self.attention_mask.cpu()
        meta = {"steerlab": json.dumps({**self.metadata, "prompts": self.prompts})}
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
    return fast, slow


def _forward_order(expert: Expert, points: list[hookpoints.HookPoint]) -> list[hookpoints.HookPoint]:
    order = {n: i for i, n in enumerate(expert.hook_names())}
    return sorted(points, key=lambda p: order[p.name])


@torch.inference_mode()
def _capture_fast(expert: Expert, batch, points: list[hookpoints.HookPoint]) -> dict[str, Tensor]:
    store: dict[str, Tensor] = {}
    last = _forward_order(expert, points)[-1].name

    def reader(name: str):
        def read(activation: Tensor) -> None:
            store[name] = activation.detach().clone()
            if name == last:
                raise _StopForward

        return read

    state = DecodeState.for_batch(batch.attention_mask)
    with hook_context(expert.model, [(p, reader(p.name)) for p in points]), publish_state(state):
        try:
            expert.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
                logits_to_keep=1,
            )
        except _StopForward:
            pass
    return store


@torch.inference_mode()
def _capture_bridge(expert: Expert, batch, names: list[str]) -> dict[str, Tensor]:
    _, cache = expert.bridge.run_with_cache(
        batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        names_filter=names,
    )
    return {n: cache[n].detach().clone() for n in names}


def run_with_cache(
    expert: Expert,
    prompts: Sequence[str],
    names: Sequence[str],
    *,
    chat: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> ActivationCache:
    """Run `prompts` (raw text, or chat-formatted with `chat=True`) and keep the named activations.

    All prompts share one left padding, so batches concatenate; `cache.unpadded(name)` drops it.
    """
    prompts = list(prompts)
    if not prompts or any(not p.strip() for p in prompts):
        raise EmptyPromptsError()
    if not names:
        raise EmptyPromptsError("hook names")
    fast, slow = _split_names(expert, names)
    texts = expert.format_prompts(prompts, chat=chat)
    full = expert.tokenize(texts)
    chunks: list[dict[str, Tensor]] = []
    for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="capture", unit="batch"):
        rows = slice(start, start + batch_size)
        batch = type(full)(full.input_ids[rows], full.attention_mask[rows], full.position_ids[rows])
        acts = _capture_fast(expert, batch, fast) if fast else {}
        if slow:
            acts |= _capture_bridge(expert, batch, slow)
        chunks.append(acts)
    activations = {n: torch.cat([c[n] for c in chunks]) for n in dict.fromkeys(names)}
    return ActivationCache(
        activations=activations,
        tokens=full.input_ids,
        attention_mask=full.attention_mask,
        prompts=prompts,
        metadata={"expert": expert.name, "names": list(activations), "chat": chat},
    )

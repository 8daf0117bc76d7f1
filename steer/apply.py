"""Apply steering vectors through scoped hooks: operators, token positions, schedules, gates.

`patch(expert, steering)` returns a handle (notebooks); `apply(expert, steering)` is a context
manager (scripts). Both register the same hooks through `experts.hooks`. Positions are read from
the `DecodeState` that generation (and capture) publish, so `prompt`, `generated` and `from:k`
stay correct under KV-cached, left-padded, batched decoding, and padding is never steered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from experts.errors import SteerlabError
from experts.generate import DecodeState, current_decode_state
from experts.hooks import ActivationFn, HookHandle, attach
from steer.vector import SteeringVector

if TYPE_CHECKING:
    from experts.expert import Expert
    from experts.hookpoints import HookPoint

Coefficient = float | Sequence[float] | Callable[[int], float]


def _add(h: Tensor, v: Tensor, c: float | Tensor) -> Tensor:
    return h + c * v


def _ablate(h: Tensor, v: Tensor, c: float | Tensor) -> Tensor:
    """Remove `c` times the component along v (c = 1 projects it out entirely)."""
    unit = v / v.norm().clamp_min(1e-12)
    return h - c * (h @ unit)[..., None] * unit


def _norm_preserving_add(h: Tensor, v: Tensor, c: float | Tensor) -> Tensor:
    out = h + c * v
    return out * (h.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-12))


OPERATORS: dict[str, Callable[[Tensor, Tensor, float | Tensor], Tensor]] = {
    "add": _add,
    "ablate": _ablate,
    "norm_preserving": _norm_preserving_add,
}

_FROM = re.compile(r"^from:(\d+)$")
POSITION_RULES = ("all", "prompt", "generated", "from:K")


def check_positions(rule: str) -> str:
    if rule in ("all", "prompt", "generated") or _FROM.match(rule):
        return rule
    raise SteerlabError(f"unknown positions rule {rule!r}; choose one of {', '.join(POSITION_RULES)} (K an integer)")


def position_mask(rule: str, state: DecodeState | None, shape: tuple[int, int]) -> Tensor | None:
    """Bool (batch, pos) of positions to steer, or None for every position.

    Without a published state (a bare forward call), every position counts as a prompt position.
    """
    if state is None:
        if rule in ("all", "prompt"):
            return None
        if rule == "generated":
            return torch.zeros(shape, dtype=torch.bool)
        start = int(_FROM.match(rule).group(1))
        return (torch.arange(shape[1]) >= start).expand(shape)
    if rule == "all":
        return None if state.all_valid else state.valid
    if rule == "prompt":
        return state.valid & ~state.generated()
    if rule == "generated":
        return None if state.step > 0 else state.generated()  # a decode step feeds only generated tokens
    return state.valid & (state.position_ids >= int(_FROM.match(rule).group(1)))


@dataclass(frozen=True)
class ProbeGate:
    """Closed-loop gate: steer a position only while σ(w·h + b) > threshold, read at the steered hook."""

    direction: Tensor
    bias: float = 0.0
    threshold: float = 0.5

    def open(self, h: Tensor) -> Tensor:
        w = self.direction.to(device=h.device, dtype=h.dtype)
        return torch.sigmoid(h @ w + self.bias) > self.threshold


@dataclass(frozen=True)
class Steering:
    """One vector applied with an operator at chosen positions.

    `coef` is a number, one number per batch row, or a schedule `coef(step)` (step 0 = prefill).
    """

    vector: SteeringVector
    coef: Coefficient = 1.0
    operator: str = "add"
    positions: str = "all"
    gate: ProbeGate | None = None

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise SteerlabError(f"unknown operator {self.operator!r}; choose one of {', '.join(OPERATORS)}")
        check_positions(self.positions)
        if isinstance(self.coef, (int, float)) and not torch.isfinite(torch.tensor(float(self.coef))):
            raise SteerlabError(f"coefficient must be finite, got {self.coef!r}")

    def coefficient(self, step: int, rows: int) -> float | Tensor:
        if callable(self.coef):
            return float(self.coef(step))
        if isinstance(self.coef, (int, float)):
            return float(self.coef)
        if len(self.coef) != rows:
            raise SteerlabError(f"{len(self.coef)} per-row coefficients given for a batch of {rows} rows")
        return torch.tensor([float(c) for c in self.coef])


def _steering_fn(steering: Steering, layer: int) -> ActivationFn:
    operator = OPERATORS[steering.operator]
    direction = steering.vector.directions[layer]
    cast: dict[tuple, Tensor] = {}  # the direction on each (device, dtype) it has met

    def steer(h: Tensor) -> Tensor | None:
        state = current_decode_state()
        coef = steering.coefficient(state.step if state else 0, h.shape[0])
        if isinstance(coef, float):
            if coef == 0.0:
                return None
            c: float | Tensor = coef
        else:
            if not coef.any():
                return None
            c = coef.to(dtype=h.dtype, device=h.device)[:, None, None]
        mask = position_mask(steering.positions, state, tuple(h.shape[:2]))
        if steering.gate is not None:
            gate = steering.gate.open(h)
            mask = gate if mask is None else mask.to(h.device) & gate
        if mask is not None:
            mask = mask.to(h.device)
            if not mask.any():
                return None
        key = (h.device, h.dtype)
        if key not in cast:
            cast[key] = direction.to(device=h.device, dtype=h.dtype)
        edited = operator(h, cast[key], c)
        return edited if mask is None else torch.where(mask[..., None], edited, h)

    return steer


def _hooks(expert: Expert, steerings: Sequence[Steering], force: bool) -> list[tuple[HookPoint, ActivationFn]]:
    hooks = []
    for steering in steerings:
        steering.vector.check_compatible(expert, force=force)
        for layer in steering.vector.layers:
            hooks.append((expert.hook_point(steering.vector.hook_name(layer)), _steering_fn(steering, layer)))
    return hooks


def patch(expert: Expert, steering: Steering | Sequence[Steering], *, force: bool = False) -> HookHandle:
    """Attach steering hooks and return their handle (`handle.remove()` is idempotent)."""
    steerings = [steering] if isinstance(steering, Steering) else list(steering)
    return attach(expert.model, _hooks(expert, steerings, force))


@contextmanager
def apply(expert: Expert, steering: Steering | Sequence[Steering], *, force: bool = False) -> Iterator[HookHandle]:
    """Steer for the duration of the block; nothing stays attached afterwards, whatever happens."""
    handle = patch(expert, steering, force=force)
    try:
        yield handle
    finally:
        handle.remove()

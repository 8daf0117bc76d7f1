"""Apply steering vectors through scoped hooks: operators, token positions, schedules, gates.

`patch(expert, steering)` returns a handle (notebooks); `apply(expert, steering)` is a context
manager (scripts). Both register the same hooks through `experts.hooks`. Positions are read from
the `DecodeState` that generation (and capture) publish, so `prompt`, `generated` and `from:k`
stay correct under KV-cached, left-padded, batched decoding, and padding is never steered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from experts.compiled import StepAddition
from experts.errors import NonFiniteError, SteerlabError
from experts.generate import DecodeState, current_decode_state
from experts.hooks import ActivationFn, HookHandle, attach

if TYPE_CHECKING:
    from experts.expert import Expert
    from experts.hookpoints import HookPoint

Coefficient = float | Sequence[float] | Callable[[int], float]


class Directions(Protocol):
    """What steering reads of a vector (`steer.vectors.vector.SteeringVector` is one): per-layer
    directions at one TL hook, their largest norm, and where they were made."""

    hook: str
    directions: dict[int, Tensor]
    provenance: Any  # .dataset, .fingerprint, .coef_range

    @property
    def layers(self) -> list[int]: ...

    @property
    def d_model(self) -> int: ...

    @property
    def max_norm(self) -> float: ...

    def hook_name(self, layer: int) -> str: ...

    def check_compatible(self, expert: Expert, force: bool = False) -> None: ...


def _add(h: Tensor, v: Tensor, c: float | Tensor) -> Tensor:
    return h + c * v


def _ablate(h: Tensor, v: Tensor, c: float | Tensor) -> Tensor:
    """Remove `c` times the component along v (c = 1 projects it out entirely), in float32: a
    projection computed in bf16 leaves about 1% of the component behind."""
    h32, v32 = h.float(), v.float()
    unit = v32 / v32.norm().clamp_min(1e-12)
    return (h32 - c * (h32 @ unit)[..., None] * unit).to(h.dtype)


def _norm_preserving_add(h: Tensor, v: Tensor, c: float | Tensor) -> Tensor:
    h32 = h.float()
    out = h32 + c * v.float()
    return (out * (h32.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-12))).to(h.dtype)


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

    def __post_init__(self) -> None:
        if not isinstance(self.direction, Tensor) or self.direction.ndim != 1:
            raise SteerlabError("a ProbeGate direction must be a 1-D tensor of width d_model")
        if not (math.isfinite(self.bias) and math.isfinite(self.threshold)):
            raise SteerlabError(f"ProbeGate bias and threshold must be finite, got {self.bias!r}, {self.threshold!r}")

    def open(self, h: Tensor, w: Tensor | None = None) -> Tensor:
        w = self.direction.to(device=h.device, dtype=h.dtype) if w is None else w
        return torch.sigmoid(h @ w + self.bias) > self.threshold


# Past these, activations overflow float32 where the next norm squares them (RMSNorm then returns
# zeros or NaN and the text is garbage): an edit of norm 1e15 at 1e3 positions already reaches 1e33.
MAX_EDIT_NORM = 1e15
MAX_ABLATE_COEF = 1e3


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise NonFiniteError(f"{what} ({value!r})")
    return value


@dataclass(frozen=True)
class Steering:
    """One vector applied with an operator at chosen positions.

    `coef` is a number, one number per prompt of each generate/capture call (rows follow their
    prompt whatever the batch size and sample count), or a schedule `coef(step)` (step 0 = prefill).
    """

    vector: Directions
    coef: Coefficient = 1.0
    operator: str = "add"
    positions: str = "all"
    gate: ProbeGate | None = None

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise SteerlabError(f"unknown operator {self.operator!r}; choose one of {', '.join(OPERATORS)}")
        check_positions(self.positions)
        if not callable(self.coef):
            values = [self.coef] if isinstance(self.coef, (int, float)) else list(self.coef)
            if not values:
                raise SteerlabError("per-prompt coefficients: the list is empty")
            for i, c in enumerate(values):
                what = "steering coefficient" if len(values) == 1 and not self.per_prompt else f"per-prompt coefficient {i}"
                if not isinstance(c, (int, float)):
                    raise SteerlabError(f"{what} is {c!r}, not a number")
                self._check_size(_finite(float(c), what))
        if self.gate is not None and self.gate.direction.shape[0] != self.vector.d_model:
            raise SteerlabError(
                f"ProbeGate direction has width {self.gate.direction.shape[0]}, the vector {self.vector.d_model}"
            )

    def _check_size(self, coef: float) -> float:
        if self.operator == "ablate":
            if abs(coef) > MAX_ABLATE_COEF:
                raise SteerlabError(f"ablation coefficient {coef:g} is out of range: it is the fraction of the "
                                    f"component removed (1 = all of it), at most ±{MAX_ABLATE_COEF:g}")
        elif abs(coef) * self.vector.max_norm > MAX_EDIT_NORM:
            raise SteerlabError(f"coefficient {coef:g} times the vector's norm exceeds {MAX_EDIT_NORM:g}: the steered "
                                "activations would overflow float32 (the calibrated range is in the vector's provenance)")
        return coef

    @property
    def per_prompt(self) -> bool:
        return not callable(self.coef) and not isinstance(self.coef, (int, float))

    def scalar(self, step: int) -> float:
        """The coefficient at `step` (a number or a schedule; not per-prompt)."""
        if callable(self.coef):
            return self._check_size(_finite(float(self.coef(step)), f"steering schedule at step {step}"))
        return float(self.coef)

    def describe(self) -> str:
        coef = "schedule" if callable(self.coef) else f"{len(self.coef)} per-prompt" if self.per_prompt else f"{self.coef:g}"
        return f"steering {self.vector.provenance.dataset or 'vector'}@{self.vector.hook}{self.vector.layers} " \
               f"{self.operator} coef={coef} positions={self.positions}"


def default_coef(operator: str, vector: Directions) -> float:
    """The coefficient used when none is given: all of the component for `ablate` (1), else the
    middle of the vector's calibrated range (1 without one)."""
    if operator == "ablate":
        return 1.0
    return sum(vector.provenance.coef_range) / 2 if vector.provenance.coef_range else 1.0


def default_sweep_coefs(operator: str) -> tuple[float, ...]:
    """Sweep coefficients when none are given: fractions removed for `ablate`, ± strengths otherwise."""
    return (0.0, 0.25, 0.5, 0.75, 1.0) if operator == "ablate" else (-8.0, -4.0, 0.0, 4.0, 8.0)


def _per_prompt(steering: Steering, state: DecodeState | None, rows: int, table: Tensor) -> Tensor:
    """Each row's coefficient, on the activation's device, without a host sync."""
    count = len(steering.coef)
    n_prompts = rows if state is None or state.n_prompts is None else state.n_prompts
    if count != n_prompts:
        raise SteerlabError(f"{count} per-prompt coefficients given for a call with {n_prompts} prompts")
    if state is None or state.rows is None:
        return table
    return table[state.rows.to(table.device)]


def _steering_fn(steering: Steering, layer: int) -> ActivationFn:
    operator = OPERATORS[steering.operator]
    direction = steering.vector.directions[layer]
    cast: dict[tuple, Tensor] = {}  # the direction, gate and coefficient table on each (device, dtype) met

    def on(key: tuple, make: Callable[[], Tensor]) -> Tensor:
        if key not in cast:
            cast[key] = make()
        return cast[key]

    def steer(h: Tensor) -> Tensor | None:
        state = current_decode_state()
        if state is not None and state.step > 0 and steering.positions == "prompt":
            return None  # a cached decode step feeds only generated tokens
        mask = position_mask(steering.positions, state, tuple(h.shape[:2]))
        if steering.per_prompt:
            table = on(("coef", h.device), lambda: torch.tensor([float(c) for c in steering.coef], device=h.device))
            coef = _per_prompt(steering, state, h.shape[0], table)
            c: float | Tensor = coef.to(torch.float32 if steering.operator != "add" else h.dtype)[:, None, None]
            moved = (coef != 0)[:, None]
            mask = moved if mask is None else mask.to(h.device) & moved
        else:
            c = steering.scalar(state.step if state else 0)
            if c == 0.0:
                return None
        if steering.gate is not None:
            w = on(("gate", h.device, h.dtype), lambda: steering.gate.direction.to(device=h.device, dtype=h.dtype))
            gate = steering.gate.open(h, w)
            mask = gate if mask is None else mask.to(h.device) & gate
        v = on(("v", h.device, h.dtype), lambda: direction.to(device=h.device, dtype=h.dtype))
        edited = operator(h, v, c)
        return edited if mask is None else torch.where(mask.to(h.device)[..., None], edited, h)

    def offset(state: DecodeState) -> Tensor | None:
        """What an `add` adds at a decode step (one generated token per row): the same numbers as `steer`'s."""
        if steering.positions == "prompt":
            return None
        v = on(("v", torch.device("cpu"), torch.float32), lambda: direction.to(device="cpu", dtype=torch.float32))
        if steering.per_prompt:
            table = on(("coef", torch.device("cpu")), lambda: torch.tensor([float(c) for c in steering.coef]))
            added = _per_prompt(steering, state, state.rows.shape[0], table)[:, None, None] * v
        else:
            c = steering.scalar(state.step)
            if c == 0.0:
                return None
            added = c * v
        start = _FROM.match(steering.positions)
        if start:
            added = torch.where((state.position_ids >= int(start.group(1)))[..., None], added, 0.0)
        return added

    additive = steering.operator == "add" and steering.gate is None
    constant_add = additive and isinstance(steering.coef, (int, float))
    if not (constant_add and steering.positions == "all"):
        return StepAddition(steer, offset) if additive else steer
    coef = float(steering.coef)

    def add_everywhere(h: Tensor) -> Tensor:
        """The hot path (a constant `add` at every position): one add of a cached c·v, padding masked."""
        cv = cast.get((h.device, h.dtype))
        if cv is None:
            cv = cast[(h.device, h.dtype)] = coef * direction.to(device=h.device, dtype=h.dtype)
        state = current_decode_state()
        if state is None or state.all_valid:
            return h + cv
        return torch.where(state.valid.to(h.device)[..., None], h + cv, h)

    return StepAddition(add_everywhere, offset)


def _hooks(expert: Expert, steerings: Sequence[Steering], force: bool) -> list[tuple[HookPoint, ActivationFn]]:
    hooks = []
    for steering in steerings:
        steering.vector.check_compatible(expert, force=force)
        if isinstance(steering.coef, (int, float)) and steering.coef == 0:
            continue  # a constant coefficient of 0 changes nothing: no hook, no cost
        for layer in steering.vector.layers:
            hooks.append((expert.hook_point(steering.vector.hook_name(layer)), _steering_fn(steering, layer)))
    return hooks


def patch(expert: Expert, steering: Steering | Sequence[Steering], *, force: bool = False) -> HookHandle:
    """Attach steering hooks and return their handle (`handle.remove()` is idempotent)."""
    steerings = [steering] if isinstance(steering, Steering) else list(steering)
    owner = "; ".join(s.describe() for s in steerings)
    return attach(expert.model, _hooks(expert, steerings, force), owner=owner, edits=True)


@contextmanager
def apply(expert: Expert, steering: Steering | Sequence[Steering], *, force: bool = False) -> Iterator[HookHandle]:
    """Steer for the duration of the block; nothing stays attached afterwards, whatever happens."""
    handle = patch(expert, steering, force=force)
    try:
        yield handle
    finally:
        handle.remove()

"""`SteeringVector`: per-layer directions at a TL hook point, with provenance and arithmetic.

Saved as safetensors (one tensor per layer, `layer.{i}`) with JSON metadata inside the file;
never pickled. Loading into an expert of another width or weights fingerprint is an error
unless forced.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from experts.files import atomic_path
from experts.hookpoints import BLOCK_ALIASES, BLOCK_HOOKS, block_hook
from steer.errors import BadVectorFileError, VectorMismatchError
from steer.vectors.apply import Steering, apply, patch

if TYPE_CHECKING:
    from experts.expert import Expert

FORMAT = "steerlab.vector/1"


def _library_version() -> str:
    try:
        return version("steerlab")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Provenance:
    """How a vector was made. `coef_range` is the calibrated range of useful coefficients."""

    expert: str = ""
    fingerprint: str = ""
    method: str = ""
    dataset: str = ""
    dataset_sha256: str = ""
    token_rule: str = ""
    seed: int | None = None
    n_pairs: int = 0
    typical_norms: dict[int, float] = field(default_factory=dict)
    coef_range: tuple[float, float] | None = None
    library_version: str = field(default_factory=_library_version)
    notes: str = ""


def provenance_from_json(record: dict) -> Provenance:
    record = dict(record)
    record["typical_norms"] = {int(k): v for k, v in record.get("typical_norms", {}).items()}
    if record.get("coef_range") is not None:
        record["coef_range"] = tuple(record["coef_range"])
    return Provenance(**record)


def check_fits(kind: str, d_model: int, layers: list[int], made: Provenance, expert: Expert, force: bool = False) -> None:
    """Raise `VectorMismatchError` unless a `kind` ("vector", "eraser") of this width, at these layers, made on
    the weights in `made`, fits `expert` (`force` accepts other weights of the same shape)."""
    if d_model != expert.d_model:
        raise VectorMismatchError(f"{kind} width {d_model} does not match expert {expert.name!r} (d_model {expert.d_model})")
    bad = [layer for layer in layers if not 0 <= layer < expert.n_layers]
    if bad:
        raise VectorMismatchError(f"{kind} layers {bad} are out of range for {expert.name!r} (0..{expert.n_layers - 1})")
    if made.fingerprint and made.fingerprint != expert.fingerprint and not force:
        raise VectorMismatchError(
            f"{kind} was made for {made.expert!r} (weights {made.fingerprint}), not {expert.name!r} "
            f"(weights {expert.fingerprint}); pass force=True (CLI: --force) to use it anyway"
        )


def write_file(path: str | Path, tensors: dict[str, Tensor], meta: dict) -> Path:
    """Atomically write float32 `tensors` with steerlab's JSON `meta` (holding its "format") as safetensors."""
    tensors = {key: t.detach().float().contiguous().cpu() for key, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"steerlab": json.dumps(meta)})
    return Path(path)


def read_file(path: str | Path, fmt: str, kind: str) -> tuple[dict, dict[str, Tensor]]:
    """A steerlab safetensors file's JSON metadata and tensors; `BadVectorFileError` unless it is one of `fmt`."""
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("steerlab")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise BadVectorFileError(f"{path} is not a readable safetensors file ({error})") from None
    try:
        meta = json.loads(raw)
        if meta.get("format") != fmt:
            raise ValueError(f"format {meta.get('format')!r}")
    except (TypeError, ValueError, AttributeError) as error:
        raise BadVectorFileError(f"{path} is not a steerlab {kind} file ({fmt}): {error}") from None
    return meta, tensors


@dataclass(frozen=True)
class SteeringVector:
    """Directions keyed by layer, all at `blocks.{layer}.{hook}`; `d_model` wide."""

    directions: dict[int, Tensor]
    hook: str = "hook_resid_post"
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        if not self.directions:
            raise BadVectorFileError("a steering vector needs at least one layer")
        object.__setattr__(self, "hook", block_hook(self.hook))  # TL 4's hook_out is stored as hook_resid_post
        # (the sublayers' TL 4 names depend on the architecture: `compute_vector` translates them)
        if self.hook not in BLOCK_HOOKS:
            raise BadVectorFileError(f"hook {self.hook!r} is not steerable; choose one of {', '.join(BLOCK_HOOKS)} "
                                     f"(or TL 4's {', '.join(BLOCK_ALIASES)})")
        widths = {t.shape for t in self.directions.values()}
        if len(widths) != 1 or len(next(iter(widths))) != 1:
            raise BadVectorFileError(f"directions must be 1-D and of one width, got shapes {sorted(map(tuple, widths))}")
        for layer, tensor in self.directions.items():
            if not torch.isfinite(tensor).all():
                raise BadVectorFileError(f"direction at layer {layer} has NaN or infinite values")

    # -- facts -------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def d_model(self) -> int:
        return next(iter(self.directions.values())).shape[0]

    @property
    def norms(self) -> dict[int, float]:
        return {layer: self.directions[layer].norm().item() for layer in self.layers}

    def __repr__(self) -> str:
        norms = ", ".join(f"{layer}: {norm:.3g}" for layer, norm in self.norms.items())
        made = self.provenance
        source = f", method={made.method!r}, dataset={made.dataset!r}, expert={made.expert!r}" if made.method else ""
        return f"SteeringVector({self.hook}, d_model={self.d_model}, norms={{{norms}}}{source})"

    @cached_property
    def max_norm(self) -> float:
        """The largest per-layer norm (bounds what a coefficient may add)."""
        return max(self.norms.values())

    def hook_name(self, layer: int) -> str:
        return f"blocks.{layer}.{self.hook}"

    # -- steering (thin conveniences over `steer.vectors.apply`) ----------------------------------------
    def apply(self, expert: Expert, coef=1.0, *, operator: str = "add", positions: str = "all", gate=None,
              force: bool = False):
        """Steer `expert` for the duration of a `with` block: `with v.apply(expert, coef=4): ...`."""
        return apply(expert, Steering(self, coef=coef, operator=operator, positions=positions, gate=gate), force=force)

    def patch(self, expert: Expert, coef=1.0, *, operator: str = "add", positions: str = "all", gate=None,
              force: bool = False):
        """Attach this vector's steering and return the handle (`handle.remove()`; or `expert.reset_hooks()`)."""
        return patch(expert, Steering(self, coef=coef, operator=operator, positions=positions, gate=gate), force=force)

    # -- arithmetic --------------------------------------------------------------------------
    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.hook != self.hook or other.d_model != self.d_model:
            raise VectorMismatchError(
                f"cannot combine vectors at {self.hook} (width {self.d_model}) and {other.hook} (width {other.d_model})"
            )
        directions = {layer: t.clone() for layer, t in self.directions.items()}
        for layer, tensor in other.directions.items():
            directions[layer] = directions[layer] + sign * tensor if layer in directions else sign * tensor
        return replace(self, directions=directions, provenance=replace(self.provenance, method="combination"))

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, scale: float) -> SteeringVector:
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            return NotImplemented
        return replace(self, directions={layer: t * scale for layer, t in self.directions.items()})

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def normalized(self) -> SteeringVector:
        """Unit norm at every layer."""
        return replace(self, directions={layer: t / t.norm().clamp_min(1e-12) for layer, t in self.directions.items()})

    def restrict(self, layers: list[int]) -> SteeringVector:
        missing = sorted(set(layers) - set(self.directions))
        if missing:
            raise VectorMismatchError(f"layers {missing} are not in this vector; it has {self.layers}")
        return replace(self, directions={layer: self.directions[layer] for layer in layers})

    # -- compatibility -----------------------------------------------------------------------
    def check_compatible(self, expert: Expert, force: bool = False) -> None:
        """Raise `VectorMismatchError` unless this vector fits `expert` (width, layers, fingerprint)."""
        check_fits("vector", self.d_model, self.layers, self.provenance, expert, force)

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        tensors = {f"layer.{layer}": t for layer, t in self.directions.items()}
        return write_file(path, tensors, {"format": FORMAT, "hook": self.hook, "provenance": asdict(self.provenance)})

    @classmethod
    def load(cls, path: str | Path, expert: Expert | None = None, *, force: bool = False) -> SteeringVector:
        """Read a vector file; with `expert`, check that it fits (see `check_compatible`)."""
        meta, tensors = read_file(path, FORMAT, "vector")
        try:
            directions = {int(key.removeprefix("layer.")): t for key, t in tensors.items()}
            vector = cls(directions=directions, hook=meta["hook"], provenance=provenance_from_json(meta["provenance"]))
        except (TypeError, ValueError, KeyError) as error:
            raise BadVectorFileError(f"{path} is not a steerlab vector file ({FORMAT}): {error}") from None
        if expert is not None:
            vector.check_compatible(expert, force=force)
        return vector

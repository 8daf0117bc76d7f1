"""Concept erasure: LEACE (Belrose et al., 2023) for a binary concept, fitted on activations and applied by hooks.

For a concept z ∈ {0, 1} and activations x with mean μ, covariance Σ and cross-covariance σ = Cov(x, z), the
least-squares eraser that leaves no linear information about z is

    r(x) = x − σ · (σᵀ Σ⁻¹ (x − μ)) / (σᵀ Σ⁻¹ σ)

(LEACE's x − W⁺ P W (x − μ) with W = Σ^(-1/2), written out for one concept dimension): after it, Cov(r(x), z) = 0,
so no linear classifier beats a constant on the fitted distribution, while every direction orthogonal (in the
Σ⁻¹ metric) to σ is left alone. Σ is the Ledoit–Wolf shrunk estimate (scikit-learn), since a few thousand tokens
do not pin down a d_model² covariance. Saved as safetensors with JSON metadata; never pickled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from experts.errors import SteerlabError
from experts.generate import DecodeState, current_decode_state
from experts.hookpoints import BLOCK_HOOKS, block_aliases, block_hook
from experts.hooks import ActivationFn, attach
from steer.datasets import ContrastPair
from steer.errors import BadVectorFileError
from steer.vectors.apply import check_positions, position_mask
from steer.vectors.extract import pair_texts
from steer.vectors.vector import Provenance, check_fits, provenance_from_json, read_file, write_file

if TYPE_CHECKING:
    from experts.expert import Expert

FORMAT = "steerlab.eraser/1"
PARTS = ("mean", "read", "write")


def leace(x: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    """The eraser's parts from activations `x` (n, d) and a binary concept `z` (n,): r(x) = x − write·(read·(x − mean))."""
    from sklearn.covariance import LedoitWolf  # the stats extra, like the other fitted parts

    z = np.asarray(z, dtype=float)
    if x.ndim != 2 or len(x) != len(z) or set(np.unique(z)) != {0.0, 1.0}:
        raise SteerlabError(f"LEACE needs (n, d) activations and a 0/1 label per row with both values; got shape "
                            f"{x.shape} and labels {sorted(set(np.unique(z)))}")
    mean = x.mean(axis=0)
    write = (x - mean).T @ (z - z.mean()) / len(z)  # σ = Cov(x, z)
    solved = np.linalg.solve(LedoitWolf().fit(x).covariance_, write)  # Σ⁻¹σ
    return {"mean": mean, "read": solved / float(write @ solved), "write": write}


@dataclass(frozen=True)
class ConceptEraser:
    """Per layer, the LEACE eraser of one binary concept at `blocks.{layer}.{hook}`."""

    parts: dict[int, dict[str, Tensor]]  # layer -> mean, read, write (each d_model)
    hook: str = "hook_resid_post"
    concept: str = ""  # what z = 1 means, e.g. "male (gender pairs)"
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def layers(self) -> list[int]:
        return sorted(self.parts)

    @property
    def d_model(self) -> int:
        return next(iter(self.parts.values()))["mean"].shape[0]

    def __call__(self, h: Tensor, layer: int) -> Tensor:
        """`h` (..., d_model) with the concept erased as fitted at `layer` (computed in float32)."""
        part = {k: v.to(device=h.device, dtype=torch.float32) for k, v in self.parts[layer].items()}
        h32 = h.float()
        return (h32 - ((h32 - part["mean"]) @ part["read"])[..., None] * part["write"]).to(h.dtype)

    def check_compatible(self, expert: Expert, force: bool = False) -> None:
        check_fits("eraser", self.d_model, self.layers, self.provenance, expert, force)

    def save(self, path: str | Path) -> Path:
        tensors = {f"{name}.{layer}": t for layer, part in self.parts.items() for name, t in part.items()}
        meta = {"format": FORMAT, "hook": self.hook, "concept": self.concept, "provenance": asdict(self.provenance)}
        return write_file(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, expert: Expert | None = None, *, force: bool = False) -> ConceptEraser:
        meta, tensors = read_file(path, FORMAT, "eraser")
        try:
            parts: dict[int, dict[str, Tensor]] = {}
            for key, tensor in tensors.items():
                name, layer = key.split(".")
                if name not in PARTS:
                    raise ValueError(f"unknown tensor {key!r}")
                parts.setdefault(int(layer), {})[name] = tensor
            if not parts or any(set(p) != set(PARTS) for p in parts.values()):
                raise ValueError("every layer needs mean, read and write")
            eraser = cls(parts, meta["hook"], meta.get("concept", ""), provenance_from_json(meta["provenance"]))
        except (TypeError, ValueError, KeyError) as error:
            raise BadVectorFileError(f"{path} is not a steerlab eraser file ({FORMAT}): {error}") from None
        if expert is not None:
            eraser.check_compatible(expert, force=force)
        return eraser


FIT_TOKENS = ("differing", "all")


def _differing(a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[int]]:
    """Indices of the tokens of `a` and of `b` outside their longest common runs (a pair's swapped words)."""
    only_a, only_b = [], []
    for tag, i1, i2, j1, j2 in SequenceMatcher(a=list(a), b=list(b), autojunk=False).get_opcodes():
        if tag != "equal":
            only_a += range(i1, i2)
            only_b += range(j1, j2)
    return only_a, only_b


def fit_eraser(expert: Expert, pairs: Sequence[ContrastPair], layers: Sequence[int], *, hook: str = "hook_resid_post",
               tokens: str = "differing", dataset: str = "", dataset_sha256: str = "", batch_size: int = 16) -> ConceptEraser:
    """Fit LEACE with z = 1 for the positive side of each pair and 0 for the negative, on the tokens where the two
    texts differ (`tokens="differing"`: for pairs that swap a name and its pronouns, exactly where gender lives)
    or on every token after the prompt (`"all"`)."""
    hook = block_hook(hook, expert.architecture)  # TL 4's spelling (hook_out) of TL 3's tensor (hook_resid_post)
    if hook not in BLOCK_HOOKS:
        raise SteerlabError(f"hook {hook!r} is not steerable; choose one of {', '.join(BLOCK_HOOKS)} "
                            f"(or TL 4's {', '.join(block_aliases(expert.architecture))})")
    if tokens not in FIT_TOKENS:
        raise SteerlabError(f"unknown eraser fitting tokens {tokens!r}; choose one of {', '.join(FIT_TOKENS)}")
    if not pairs:
        raise SteerlabError("fitting an eraser needs at least one contrast pair")
    texts, starts = pair_texts(expert, pairs)
    names = [f"blocks.{layer}.{hook}" for layer in layers]
    cache = expert.run_with_cache(texts, names, chat=False, batch_size=batch_size, reduce="none")
    mask = cache.attention_mask.bool()
    positions = mask.cumsum(-1) - 1
    keep = mask & (positions >= torch.tensor([max(s, 1) for s in starts])[:, None])
    if tokens == "differing":
        n, width = len(pairs), mask.shape[1]
        ids = [row[valid].tolist() for row, valid in zip(cache.tokens, mask)]
        keep = torch.zeros_like(mask)
        for i in range(n):
            for row, found in zip((i, i + n), _differing(ids[i], ids[i + n])):
                offset = width - len(ids[row])  # left padding
                keep[row, [offset + k for k in found if k >= max(starts[row], 1)]] = True
    if not keep.any():
        raise SteerlabError("the pairs leave no tokens to fit an eraser on (are their two sides identical?)")
    labels = torch.tensor([1.0] * len(pairs) + [0.0] * len(pairs))[:, None].expand_as(keep)[keep].numpy()
    parts = {}
    for layer, name in zip(layers, names):
        fitted = leace(cache[name][keep].double().numpy(), labels)
        parts[layer] = {k: torch.from_numpy(v).float() for k, v in fitted.items()}
    rule = "where the two sides differ" if tokens == "differing" else "every token after the prompt"
    provenance = Provenance(expert=expert.name, fingerprint=expert.fingerprint, method="leace", dataset=dataset,
                            dataset_sha256=dataset_sha256, token_rule=rule, n_pairs=len(pairs),
                            notes=f"{int(keep.sum())} tokens")
    return ConceptEraser(parts, hook, "positive side of the pairs", provenance)


def _token_mask(table: Tensor, state: DecodeState | None) -> Tensor:
    """Bool (batch, pos): where this forward's input token is one of its row's ids (`table`: prompts × k, −1 pads)."""
    if state is None or state.input_ids is None:
        raise SteerlabError("erasing at chosen tokens needs the decode state of generate or capture")
    rows = state.rows if state.rows is not None else torch.arange(state.input_ids.shape[0])
    ids = table.to(state.input_ids.device)[rows.to(state.input_ids.device)]
    return (state.input_ids[..., None] == ids[:, None, :]).any(-1)


def _erase_fn(eraser: ConceptEraser, layer: int, positions: str, table: Tensor | None) -> ActivationFn:
    def erase(h: Tensor) -> Tensor:
        state = current_decode_state()
        mask = position_mask(positions, state, tuple(h.shape[:2]))
        if table is not None:
            at_tokens = _token_mask(table, state)
            mask = at_tokens if mask is None else mask.to(h.device) & at_tokens.to(h.device)
        edited = eraser(h, layer)
        return edited if mask is None else torch.where(mask.to(h.device)[..., None], edited, h)

    return erase


@contextmanager
def erase(expert: Expert, eraser: ConceptEraser, *, positions: str = "from:1",
          tokens: Sequence[Sequence[int]] | None = None, force: bool = False) -> Iterator[None]:
    """Erase the concept at the eraser's layers for the duration of the block; nothing stays attached afterwards.
    Position 0 is left alone by default (the attention sink, far from the fitted distribution). With `tokens`
    (one list of token ids per prompt of each call, e.g. the tokens of its candidate's name) only the positions
    whose input token is in the row's list are erased, in the prompt and in what is generated."""
    check_positions(positions)
    eraser.check_compatible(expert, force=force)
    table = None
    if tokens is not None:
        if not tokens or not all(tokens):
            raise SteerlabError("erasing at chosen tokens needs a non-empty list of token ids for every prompt")
        width = max(len(t) for t in tokens)
        table = torch.tensor([list(t) + [-1] * (width - len(t)) for t in tokens])
    hooks = [(expert.hook_point(f"blocks.{layer}.{eraser.hook}"), _erase_fn(eraser, layer, positions, table))
             for layer in eraser.layers]
    handle = attach(expert.model, hooks, owner=f"LEACE eraser ({eraser.provenance.dataset}) at {eraser.layers}",
                    edits=True)
    try:
        yield
    finally:
        handle.remove()

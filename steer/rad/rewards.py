"""Rewards for reward-augmented decoding: three kinds behind one interface.

- `ActivationReward`: r(v) = σ(wᵀh + (Vᵀh)ᵀ(UᵀE[v]) + b), a token-aware probe on the final hidden
  state h that the decoding step already computed and the candidate's input embedding E[v]:
  no extra forward pass.
- `LookaheadReward`: r(v) = σ(wᵀh' + b), h' the expert's own final hidden state after reading v:
  the k candidates run as one batched one-token step on a tiled copy of the generation's KV cache.
- `ExternalReward`: RAD's form. A separate reward expert with a scalar head σ(wᵀh' + b) reads the
  generated text with its own KV cache, tiled over the k candidates (or, uncached, re-reads the
  whole text for every candidate at every step, to show what the cache buys).

Each kind `bind`s to the generating expert as a step scorer, (DecodeState, candidates (B, k)) ->
rewards (B, k) in [0, 1]. Files are safetensors with JSON metadata (format, kind, hook, info).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from experts.errors import SteerlabError
from experts.files import atomic_path
from experts.hooks import hook_context
from steer.errors import BadVectorFileError, VectorMismatchError
from steer.rad.lookahead import ExternalScorer, lookahead_scores

if TYPE_CHECKING:
    from experts.expert import Expert
    from experts.generate import DecodeState

FORMAT = "steerlab.reward/1"
HOOK = "ln_final.hook_out"
StepScorer = Callable[["DecodeState", Tensor], Tensor]


@dataclass(frozen=True)
class RewardInfo:
    expert: str = ""  # the expert whose activations the reward reads (the reward expert for `external`)
    fingerprint: str = ""
    dataset_sha256: str = ""
    seed: int = 0
    rank: int = 0
    heldout_auroc: float | None = None
    heldout_mse: float | None = None
    tokenizer: str = ""  # vocabulary fingerprint: an external reward needs the generating expert's
    load_as: str = ""  # registry name or folder that `Expert.load` accepts (external rewards)
    notes: dict = field(default_factory=dict)


def _check_expert(width: int, info: RewardInfo, expert: Expert, force: bool) -> None:
    if width != expert.d_model:
        raise VectorMismatchError(f"reward width {width} does not match expert {expert.name!r} (d_model {expert.d_model})")
    if info.fingerprint and info.fingerprint != expert.fingerprint and not force:
        raise VectorMismatchError(
            f"reward was trained on {info.expert!r} (weights {info.fingerprint}), not {expert.name!r} "
            f"(weights {expert.fingerprint}); pass force=True to use it anyway")


class HiddenStateReward(ABC):
    """A reward computed from the step's final hidden state (B, d) and the candidates' embeddings."""

    @abstractmethod
    def score(self, hidden: Tensor, candidates: Tensor, embedding_matrix: Tensor) -> Tensor:
        """(B, d) hidden states and (B, k) candidate ids -> (B, k) rewards in [0, 1]."""

    def check_compatible(self, expert: Expert, force: bool = False) -> None:
        """Any expert fits unless a subclass says otherwise."""

    @contextmanager
    def bind(self, expert: Expert) -> Iterator[StepScorer]:
        """A reading hook on `ln_final.hook_out` for exactly as long as the block runs."""
        embeddings = expert.model.get_input_embeddings().weight.detach()
        last: dict[str, Tensor] = {}

        def read(h: Tensor) -> None:
            last["h"] = h[:, -1]  # left padding: the last position is every row's newest token

        with hook_context(expert.model, [(expert.hook_point(HOOK), read)]):
            yield lambda state, candidates: self.score(last["h"], candidates, embeddings)


@dataclass(frozen=True)
class ActivationReward(HiddenStateReward):
    w: Tensor  # (d,)
    u: Tensor  # (d, r): projects candidate embeddings
    v: Tensor  # (d, r): projects the hidden state
    b: float
    info: RewardInfo = field(default_factory=RewardInfo)

    kind = "activation"

    def logits(self, hidden: Tensor, embeddings: Tensor) -> Tensor:
        """Pre-sigmoid scores: hidden (..., d) and candidate embeddings (..., k, d) -> (..., k)."""
        w, u, v = (t.to(device=hidden.device, dtype=hidden.dtype) for t in (self.w, self.u, self.v))
        base = hidden @ w + self.b
        return base[..., None] + ((embeddings @ u) * (hidden @ v)[..., None, :]).sum(-1)

    def score(self, hidden: Tensor, candidates: Tensor, embedding_matrix: Tensor) -> Tensor:
        """r ∈ [0, 1] for each candidate token: hidden (B, d), candidates (B, k) -> (B, k)."""
        return torch.sigmoid(self.logits(hidden, embedding_matrix[candidates]))

    def check_compatible(self, expert: Expert, force: bool = False) -> None:
        _check_expert(self.w.shape[0], self.info, expert, force)

    def save(self, path: str | Path) -> Path:
        return _write(path, self.kind, {"w": self.w, "u": self.u, "v": self.v}, self.b, self.info)

    @classmethod
    def load(cls, path: str | Path, expert: Expert | None = None, *, force: bool = False) -> ActivationReward:
        reward = load_reward(path, expert, force=force)
        if not isinstance(reward, cls):
            raise BadVectorFileError(f"{path} is a {reward.kind} reward, not an {cls.kind} reward")
        return reward


@dataclass(frozen=True)
class LinearProbe:
    """σ(wᵀh + b) on a final hidden state."""

    w: Tensor  # (d,)
    b: float

    def __call__(self, hidden: Tensor) -> Tensor:
        return torch.sigmoid(hidden @ self.w.to(device=hidden.device, dtype=hidden.dtype) + self.b)


@dataclass(frozen=True)
class LookaheadReward:
    """A probe on the expert's own final hidden state one token ahead, for each of the k candidates."""

    w: Tensor  # (d,)
    b: float
    info: RewardInfo = field(default_factory=RewardInfo)

    kind = "lookahead"

    @property
    def probe(self) -> LinearProbe:
        return LinearProbe(self.w, self.b)

    def check_compatible(self, expert: Expert, force: bool = False) -> None:
        _check_expert(self.w.shape[0], self.info, expert, force)

    @contextmanager
    def bind(self, expert: Expert) -> Iterator[StepScorer]:
        yield partial(lookahead_scores, expert, self.probe)

    def save(self, path: str | Path) -> Path:
        return _write(path, self.kind, {"w": self.w}, self.b, self.info)


@dataclass(frozen=True)
class ExternalReward:
    """RAD's reward model: `model` (a separate reward expert) with the scalar head σ(wᵀh' + b),
    reading only the generated text. `cached=False` re-reads the whole text at every step."""

    w: Tensor  # (d of the reward expert,)
    b: float
    info: RewardInfo = field(default_factory=RewardInfo)
    model: Expert | None = field(default=None, compare=False, repr=False)
    cached: bool = True

    kind = "external"

    @property
    def probe(self) -> LinearProbe:
        return LinearProbe(self.w, self.b)

    def uncached(self) -> ExternalReward:
        return replace(self, cached=False)

    def check_compatible(self, expert: Expert, force: bool = False) -> None:
        """The reward expert reads the generating expert's token ids, so their vocabularies must be equal."""
        if self.model is None:
            raise SteerlabError("this external reward has no reward expert attached; read it with load_reward")
        if self.model is expert:
            raise SteerlabError("the reward expert must be its own Expert instance (Expert.load it again): "
                                "steering the generating expert would otherwise steer the reward too")
        if self.info.tokenizer != expert.tokenizer_fingerprint:
            raise VectorMismatchError(
                f"reward expert {self.info.expert!r} reads another vocabulary (tokenizer {self.info.tokenizer}) than "
                f"{expert.name!r} (tokenizer {expert.tokenizer_fingerprint}); choose a reward expert with the same tokenizer")

    @contextmanager
    def bind(self, expert: Expert) -> Iterator[StepScorer]:
        yield ExternalScorer(self.model, self.probe, cached=self.cached)

    def save(self, path: str | Path) -> Path:
        return _write(path, self.kind, {"w": self.w}, self.b, self.info)


Reward = ActivationReward | LookaheadReward | ExternalReward


def _write(path: str | Path, kind: str, tensors: dict[str, Tensor], bias: float, info: RewardInfo) -> Path:
    """safetensors with the weights, the bias as tensor `b`, and JSON metadata (format, kind, hook, info)."""
    tensors = {name: t.float().contiguous() for name, t in tensors.items()} | {"b": torch.tensor([bias])}
    meta = {"format": FORMAT, "kind": kind, "hook": HOOK, "info": asdict(info)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"steerlab": json.dumps(meta)})
    return Path(path)


def load_reward(path: str | Path, expert: Expert | None = None, *, force: bool = False) -> Reward:
    """Read a reward file; with `expert` (the generating expert), check that it fits.

    An external reward also loads its reward expert (on `expert`'s device and dtype) and checks
    that those are the weights it was trained on.
    """
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["steerlab"])
            t = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        info, bias, kind = RewardInfo(**meta["info"]), float(t["b"][0]), meta.get("kind")
        if kind == ActivationReward.kind:
            reward = ActivationReward(t["w"], t["u"], t["v"], bias, info)
        elif kind == LookaheadReward.kind:
            reward = LookaheadReward(t["w"], bias, info)
        elif kind == ExternalReward.kind:
            reward = ExternalReward(t["w"], bias, info)
        else:
            raise ValueError(f"kind {kind!r}")
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
        raise BadVectorFileError(f"{path} is not a steerlab reward ({FORMAT}): {error}") from None
    if isinstance(reward, ExternalReward):
        from experts.expert import Expert

        device, dtype = (expert.device, expert.dtype) if expert is not None else (None, None)
        model = Expert.load(info.load_as or info.expert, device=device and str(device), dtype=dtype)
        _check_expert(reward.w.shape[0], info, model, force)
        reward = replace(reward, model=model)
    if expert is not None:
        reward.check_compatible(expert, force=force)
    return reward

"""Activation reward for reward-augmented decoding: read from the expert's own residual stream.

r(v) = σ(wᵀh + (Vᵀh)ᵀ(UᵀE[v]) + b): a token-aware probe on the final hidden state h (the
`ln_final.hook_out` the decoding step already computed) and the candidate token's input embedding
E[v], with a rank-r bilinear term. It scores all k candidates of a step with no extra forward pass.
Trained by weighted regression on every prefix of labeled texts (later prefixes weigh more), as
RAD trains its reward model. Saved as safetensors + JSON metadata.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from experts.errors import SteerlabError
from experts.files import atomic_path
from steer.datasets import read_text
from steer.errors import BadDataError, BadVectorFileError, VectorMismatchError

if TYPE_CHECKING:
    from experts.expert import Expert

FORMAT = "steerlab.reward/1"
HOOK = "ln_final.hook_out"


@dataclass(frozen=True)
class LabeledText:
    text: str
    label: float


def load_labeled(path: str | Path) -> tuple[list[LabeledText], str]:
    """JSONL lines `{"text": ..., "label": 0..1}`, and the file's sha256."""
    import hashlib

    path = Path(path)
    raw = read_text(path)
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text, label = str(record["text"]), float(record["label"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise BadDataError(f'{path}:{number}: expected {{"text": ..., "label": 0..1}}') from None
        if not 0.0 <= label <= 1.0 or math.isnan(label):
            raise BadDataError(f"{path}:{number}: label {label} is outside [0, 1]")
        rows.append(LabeledText(text, label))
    if len(rows) < 4:
        raise BadDataError(f"{path} holds {len(rows)} labeled texts; at least 4 are needed")
    return rows, hashlib.sha256(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RewardInfo:
    expert: str = ""
    fingerprint: str = ""
    dataset_sha256: str = ""
    seed: int = 0
    rank: int = 0
    heldout_auroc: float | None = None
    heldout_mse: float | None = None
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ActivationReward:
    w: Tensor  # (d,)
    u: Tensor  # (d, r): projects candidate embeddings
    v: Tensor  # (d, r): projects the hidden state
    b: float
    info: RewardInfo = field(default_factory=RewardInfo)

    kind = "activation"

    @property
    def d_model(self) -> int:
        return self.w.shape[0]

    def logits(self, hidden: Tensor, embeddings: Tensor) -> Tensor:
        """Pre-sigmoid scores: hidden (..., d) and candidate embeddings (..., k, d) -> (..., k)."""
        w, u, v = (t.to(device=hidden.device, dtype=hidden.dtype) for t in (self.w, self.u, self.v))
        base = hidden @ w + self.b
        return base[..., None] + ((embeddings @ u) * (hidden @ v)[..., None, :]).sum(-1)

    def score(self, hidden: Tensor, candidates: Tensor, embedding_matrix: Tensor) -> Tensor:
        """r ∈ [0, 1] for each candidate token: hidden (B, d), candidates (B, k) -> (B, k)."""
        return torch.sigmoid(self.logits(hidden, embedding_matrix[candidates]))

    def check_compatible(self, expert: Expert, force: bool = False) -> None:
        if self.d_model != expert.d_model:
            raise VectorMismatchError(f"reward width {self.d_model} does not match expert {expert.name!r} (d_model {expert.d_model})")
        if self.info.fingerprint and self.info.fingerprint != expert.fingerprint and not force:
            raise VectorMismatchError(
                f"reward was trained on {self.info.expert!r} (weights {self.info.fingerprint}), not {expert.name!r} "
                f"(weights {expert.fingerprint}); pass force=True to use it anyway")

    def save(self, path: str | Path) -> Path:
        return _write(path, self.kind, {"w": self.w, "u": self.u, "v": self.v}, self.b, self.info)

    @classmethod
    def load(cls, path: str | Path, expert: Expert | None = None, *, force: bool = False) -> ActivationReward:
        reward = load_reward(path, expert, force=force)
        if not isinstance(reward, cls):
            raise BadVectorFileError(f"{path} is a {reward.kind} reward, not an {cls.kind} reward")
        return reward


@dataclass(frozen=True)
class LookaheadReward:
    """r(v) = σ(wᵀh' + b) where h' is the final hidden state after reading candidate v: the k
    candidates run as one batched one-token step on a tiled copy of the generation's KV cache."""

    w: Tensor  # (d,)
    b: float
    info: RewardInfo = field(default_factory=RewardInfo)

    kind = "lookahead"

    @property
    def d_model(self) -> int:
        return self.w.shape[0]

    def probe(self, hidden: Tensor) -> Tensor:
        return torch.sigmoid(hidden @ self.w.to(device=hidden.device, dtype=hidden.dtype) + self.b)

    check_compatible = ActivationReward.check_compatible

    def save(self, path: str | Path) -> Path:
        return _write(path, self.kind, {"w": self.w}, self.b, self.info)


def _write(path: str | Path, kind: str, tensors: dict[str, Tensor], bias: float, info: RewardInfo) -> Path:
    """safetensors with the weights, the bias as tensor `b`, and JSON metadata (format, kind, hook, info)."""
    tensors = {name: t.float().contiguous() for name, t in tensors.items()} | {"b": torch.tensor([bias])}
    meta = {"format": FORMAT, "kind": kind, "hook": HOOK, "info": asdict(info)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"steerlab": json.dumps(meta)})
    return Path(path)


def load_reward(path: str | Path, expert: Expert | None = None, *, force: bool = False):
    """Read an activation or look-ahead reward file; with `expert`, check that it fits."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["steerlab"])
            t = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        info, bias = RewardInfo(**meta["info"]), float(t["b"][0])
        if meta.get("kind") == ActivationReward.kind:
            reward = ActivationReward(t["w"], t["u"], t["v"], bias, info)
        elif meta.get("kind") == LookaheadReward.kind:
            reward = LookaheadReward(t["w"], bias, info)
        else:
            raise ValueError(f"kind {meta.get('kind')!r}")
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
        raise BadVectorFileError(f"{path} is not a steerlab reward ({FORMAT}): {error}") from None
    if expert is not None:
        reward.check_compatible(expert, force=force)
    return reward


@dataclass(frozen=True)
class _Examples:
    """Every prefix of every text: the hidden state before and after reading token x_{t+1}, that
    token, the text's label, a weight (t+1)/T favouring later prefixes, and the text's index."""

    before: Tensor
    after: Tensor
    tokens: Tensor
    labels: Tensor
    weights: Tensor
    owner: Tensor


def _prefix_examples(expert: Expert, data: Sequence[LabeledText]) -> _Examples:
    if len(data) < 4:
        raise BadDataError("at least 4 labeled texts are needed")
    cache = expert.run_with_cache([d.text for d in data], [HOOK])
    mask = cache.attention_mask.bool()
    parts: dict[str, list[Tensor]] = {k: [] for k in ("before", "after", "tokens", "labels", "weights", "owner")}
    for row, item in enumerate(data):
        h = cache[HOOK][row][mask[row]].float().cpu()
        ids = cache.tokens[row][mask[row]].cpu()
        steps = len(ids) - 1
        if steps < 1:
            continue
        parts["before"].append(h[:-1])
        parts["after"].append(h[1:])
        parts["tokens"].append(ids[1:])
        parts["labels"].append(torch.full((steps,), item.label))
        parts["weights"].append(torch.arange(1, steps + 1, dtype=torch.float32) / steps)
        parts["owner"].append(torch.full((steps,), row))
    return _Examples(**{k: torch.cat(v) for k, v in parts.items()})


def _heldout_texts(n_texts: int, heldout: float, generator: torch.Generator) -> set[int]:
    return set(torch.randperm(n_texts, generator=generator)[: max(1, round(heldout * n_texts))].tolist())


def _fit(params: list[Tensor], predict, ex: _Examples, train: Tensor, epochs: int, lr: float, weight_decay: float) -> None:
    """Weighted MSE between `predict(rows)` and the labels, on the training prefixes."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = (ex.weights[train] * (predict(train) - ex.labels[train]) ** 2).sum() / ex.weights[train].sum()
        loss.backward()
        optimizer.step()


def _heldout_report(pred: Tensor, ex: _Examples, test_texts: set[int], is_test: Tensor) -> tuple[float | None, float | None]:
    """AUROC of the full-text prefix of each held-out text (labels split at 0.5), and MSE on all held-out prefixes."""
    from sklearn.metrics import roc_auc_score

    last = torch.zeros(len(ex.owner), dtype=torch.bool)
    for text in test_texts:
        idx = (ex.owner == text).nonzero()
        if len(idx):
            last[idx[-1]] = True
    y = (ex.labels[last] >= 0.5).int().tolist()
    auroc = float(roc_auc_score(y, pred[last].tolist())) if len(set(y)) == 2 else None
    mse = float(((pred[is_test] - ex.labels[is_test]) ** 2).mean()) if is_test.any() else None
    return auroc, mse


def train_activation_reward(expert: Expert, data: Sequence[LabeledText], *, rank: int = 8, epochs: int = 300,
                            lr: float = 1e-2, weight_decay: float = 1e-3, heldout: float = 0.2, seed: int = 0,
                            dataset_sha256: str = "") -> ActivationReward:
    """Fit (w, U, V, b) by weighted MSE on every prefix; report AUROC and MSE on held-out texts."""
    if rank < 1:
        raise SteerlabError(f"rank must be >= 1, got {rank}")
    ex = _prefix_examples(expert, data)
    embed = expert.model.get_input_embeddings().weight.detach().float().cpu()
    scale = ex.before.norm(dim=-1).median().item() or 1.0  # keep the fit well-conditioned; folded back below
    generator = torch.Generator().manual_seed(seed)
    test_texts = _heldout_texts(len(data), heldout, generator)
    is_test = torch.tensor([int(o) in test_texts for o in ex.owner])
    d = expert.d_model
    w = torch.zeros(d, requires_grad=True)
    u = (torch.randn(d, rank, generator=generator) * 0.01).requires_grad_()
    v = (torch.randn(d, rank, generator=generator) * 0.01).requires_grad_()
    b = torch.zeros(1, requires_grad=True)
    x, e = ex.before / scale, embed[ex.tokens]
    _fit([w, u, v, b], lambda rows: torch.sigmoid(x[rows] @ w + b + ((e[rows] @ u) * (x[rows] @ v)).sum(-1)),
         ex, ~is_test, epochs, lr, weight_decay)
    with torch.no_grad():
        reward = ActivationReward(w.detach() / scale, u.detach(), v.detach() / scale, float(b.item()))
        pred = torch.sigmoid(reward.logits(ex.before, e[:, None, :]))[:, 0]  # one candidate per prefix: its next token
        auroc, mse = _heldout_report(pred, ex, test_texts, is_test)
    info = RewardInfo(expert=expert.name, fingerprint=expert.fingerprint, dataset_sha256=dataset_sha256, seed=seed,
                      rank=rank, heldout_auroc=auroc, heldout_mse=mse,
                      notes={"epochs": epochs, "lr": lr, "n_texts": len(data), "n_prefixes": len(ex.labels)})
    return ActivationReward(reward.w, reward.u, reward.v, reward.b, info)


def train_lookahead_reward(expert: Expert, data: Sequence[LabeledText], *, epochs: int = 300, lr: float = 1e-2,
                           weight_decay: float = 1e-3, heldout: float = 0.2, seed: int = 0,
                           dataset_sha256: str = "") -> LookaheadReward:
    """Fit a linear probe σ(wᵀh + b) on the hidden state after every token of every text (weighted MSE)."""
    ex = _prefix_examples(expert, data)
    scale = ex.after.norm(dim=-1).median().item() or 1.0
    generator = torch.Generator().manual_seed(seed)
    test_texts = _heldout_texts(len(data), heldout, generator)
    is_test = torch.tensor([int(o) in test_texts for o in ex.owner])
    w = torch.zeros(expert.d_model, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    x = ex.after / scale
    _fit([w, b], lambda rows: torch.sigmoid(x[rows] @ w + b), ex, ~is_test, epochs, lr, weight_decay)
    with torch.no_grad():
        reward = LookaheadReward(w.detach() / scale, float(b.item()))
        auroc, mse = _heldout_report(reward.probe(ex.after), ex, test_texts, is_test)
    info = RewardInfo(expert=expert.name, fingerprint=expert.fingerprint, dataset_sha256=dataset_sha256, seed=seed,
                      heldout_auroc=auroc, heldout_mse=mse, notes={"epochs": epochs, "lr": lr, "n_texts": len(data)})
    return LookaheadReward(reward.w, reward.b, info)

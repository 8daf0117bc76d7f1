"""Train rewards from labeled texts (JSONL `{"text": ..., "label": 0..1}`), as RAD trains its
reward model: regression on every prefix of every text, later prefixes weighted more ((t+1)/T),
with AUROC and MSE reported on held-out texts. The expert stays frozen; only the reward's few
weights are fitted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from experts.errors import SteerlabError
from steer.datasets import read_text
from steer.errors import BadDataError
from steer.rad.rewards import HOOK, ActivationReward, ExternalReward, LookaheadReward, RewardInfo

if TYPE_CHECKING:
    from experts.expert import Expert


@dataclass(frozen=True)
class LabeledText:
    text: str
    label: float


def load_labeled(path: str | Path) -> tuple[list[LabeledText], str]:
    """JSONL lines `{"text": ..., "label": 0..1}`, and the file's sha256."""
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


def _fit_probe(expert: Expert, data: Sequence[LabeledText], epochs: int, lr: float, weight_decay: float,
               heldout: float, seed: int) -> tuple[Tensor, float, float | None, float | None]:
    """A linear probe σ(wᵀh + b) on the final hidden state after every token: (w, b, AUROC, MSE)."""
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
        w_out, b_out = w.detach() / scale, float(b.item())
        auroc, mse = _heldout_report(torch.sigmoid(ex.after @ w_out + b_out), ex, test_texts, is_test)
    return w_out, b_out, auroc, mse


def train_lookahead_reward(expert: Expert, data: Sequence[LabeledText], *, epochs: int = 300, lr: float = 1e-2,
                           weight_decay: float = 1e-3, heldout: float = 0.2, seed: int = 0,
                           dataset_sha256: str = "") -> LookaheadReward:
    """A probe on the expert's own hidden state after each token (weighted MSE on every prefix)."""
    w, b, auroc, mse = _fit_probe(expert, data, epochs, lr, weight_decay, heldout, seed)
    info = RewardInfo(expert=expert.name, fingerprint=expert.fingerprint, dataset_sha256=dataset_sha256, seed=seed,
                      heldout_auroc=auroc, heldout_mse=mse, notes={"epochs": epochs, "lr": lr, "n_texts": len(data)})
    return LookaheadReward(w, b, info)


def train_external_reward(reward_expert: Expert, data: Sequence[LabeledText], *, epochs: int = 300, lr: float = 1e-2,
                          weight_decay: float = 1e-3, heldout: float = 0.2, seed: int = 0,
                          dataset_sha256: str = "") -> ExternalReward:
    """RAD's reward model: `reward_expert` (frozen) with a scalar head fitted on every prefix. At
    decoding time it reads only the generated text, so train it on texts without chat templates."""
    w, b, auroc, mse = _fit_probe(reward_expert, data, epochs, lr, weight_decay, heldout, seed)
    spec = reward_expert.spec
    info = RewardInfo(expert=reward_expert.name, fingerprint=reward_expert.fingerprint, dataset_sha256=dataset_sha256,
                      seed=seed, heldout_auroc=auroc, heldout_mse=mse, tokenizer=reward_expert.tokenizer_fingerprint,
                      load_as=spec.folder if spec.source == "hf-folder" else spec.name,
                      notes={"epochs": epochs, "lr": lr, "n_texts": len(data)})
    return ExternalReward(w, b, info, model=reward_expert)

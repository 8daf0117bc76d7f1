"""Named linear features on a reader expert's residual stream.

The reader reads the query in its own prompt format (its chat template), so that, when it is also
the chosen expert, it answers from that same forward pass. A feature reads one `Site`: the residual at
`blocks.{layer}.hook_resid_post`, either averaged over the query's own tokens, never position 0 (SmolLM2's attention
sink carries a norm ~100× the others), or taken at the prompt's last token, where the answer starts (Arditi et al.
2024 read refusal there). Each feature is a logistic probe trained on labeled queries: its activation is the logit
wᵀh + b, so a positive value means "fires". Saved as safetensors + JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformers import DynamicCache

from experts.capture import StopForward
from experts.errors import EmptyPromptsError, SteerlabError
from experts.files import atomic_path
from experts.generate import DecodeState, Prefill, publish_state
from experts.hooks import count_forward_hooks, hook_context
from experts.kv import new_cache
from steer.errors import BadVectorFileError

if TYPE_CHECKING:
    from experts.expert import Expert

log = logging.getLogger(__name__)
FORMAT = "steerlab.router-features/1"


POOLINGS = ("mean", "last")


@dataclass(frozen=True)
class Site:
    """Where a feature reads: the residual after block `layer`, averaged over the query's own tokens ("mean") or at
    the prompt's last token ("last")."""

    layer: int
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise SteerlabError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")

    @property
    def hook(self) -> str:
        return hook_name(self.layer)

    def __str__(self) -> str:
        return f"{self.hook} ({self.pooling})"


def _sites(where: int | Site | Sequence[Site]) -> tuple[Site, ...]:
    if isinstance(where, int):
        return (Site(where),)
    return (where,) if isinstance(where, Site) else tuple(where)


@dataclass(frozen=True)
class Reading:
    """The reader's pooled activation for each query at each site (concatenated in the sites' order), which queries
    were cut to fit its context, and (when asked for) the prompts' forward pass for the reader to answer from."""

    activations: Tensor  # (n, d × number of sites)
    truncated: list[bool]
    n_tokens: list[int]
    prefill: Prefill | None = None


def hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def _query_span(reader: Expert) -> tuple[int, int]:
    """Tokens of the reader's prompt format before and after the query (chat template or none)."""
    before, _, after = reader.format_prompts(["\x00"])[0].partition("\x00")
    n_before = len(reader.encode(before + "x")) - 1 if before else 0
    n_after = len(reader.tokenizer(after, add_special_tokens=False)["input_ids"]) if after else 0
    return n_before, n_after


def _keep(seen: dict[int, Tensor], layer: int, h: Tensor, stop: bool) -> None:
    seen[layer] = h
    if stop:
        raise StopForward


def _shared_head(rows: Sequence[list[int]], most: int, n_after: int) -> int:
    """How many leading tokens every row of a batch shares, up to `most`; 0 for a lone row or when a row's query
    would be empty (its reading then falls back to the whole prompt)."""
    if len(rows) < 2 or not most or min(map(len, rows)) <= most + n_after:
        return 0
    return next((i for i in range(most) if any(r[i] != rows[0][i] for r in rows)), most)


def _run_head(reader: Expert, head: list[int], cache: DynamicCache, last_layer: int) -> None:
    """The shared head's forward, once, into `cache`, up to the highest layer read."""
    stop = (reader.hook_point(hook_name(last_layer)), partial(_keep, {}, last_layer, stop=True))
    with hook_context(reader.model, [stop]):
        try:
            reader.model(input_ids=torch.tensor([head]), position_ids=torch.arange(len(head))[None], cache=cache,
                         use_cache=True, logits_to_keep=1)
        except StopForward:
            pass


@torch.inference_mode()
def read(reader: Expert, queries: Sequence[str], where: int | Site | Sequence[Site], batch_size: int = 16,
         keep_prefill: bool = False, progress: bool = False) -> Reading:
    """Each query's residual at each site (`where`: a layer, read as its mean site, or sites) inside the reader's
    prompt format, concatenated in the sites' order; the forward stops at the highest layer read. With `keep_prefill`
    (one batch only) it runs to the end and also keeps the KV cache and last logits, so that the reader can answer
    without running the prompt again. `progress`: a progress bar over the batches."""
    from tqdm.auto import tqdm

    sites = _sites(where)
    if not sites:
        raise SteerlabError("read needs at least one site")
    layers = sorted({site.layer for site in sites})
    if not queries or any(not q.strip() for q in queries):
        raise EmptyPromptsError()
    if keep_prefill and len(queries) > batch_size:
        raise SteerlabError(f"keep_prefill reads one batch (at most {batch_size} queries), got {len(queries)}")
    limit = reader.model.config.max_position_embeddings
    formatted = reader.format_prompts(list(queries))
    n_before, n_after = _query_span(reader)
    encoded, truncated = [], []
    for text in formatted:
        ids = reader.encode(text)
        truncated.append(len(ids) > limit)
        if len(ids) > limit:
            log.warning("prompt of %d tokens cut to the reader's context of %d tokens", len(ids), limit)
            ids = ids[: n_before + max(1, limit - n_before - n_after)] + ids[len(ids) - n_after :] if n_after else ids[:limit]
        encoded.append(ids)
    pooled: list[Tensor] = []
    prefill = None
    # the prompt format's head, when the batch shares it, runs once (no query token is in it, so none is pooled from
    # it); not when the forward must run whole (keep_prefill) or other hooks (steering) might treat rows apart
    shareable = 0 if keep_prefill or count_forward_hooks(reader.model) else n_before
    for start in tqdm(range(0, len(encoded), batch_size), desc=f"reading ({reader.name})", disable=not progress):
        rows = encoded[start : start + batch_size]
        head = _shared_head(rows, shareable, n_after)
        seen: dict[int, Tensor] = {}
        cache = new_cache(reader.model.config) if keep_prefill or head else None
        if head:
            _run_head(reader, rows[0][:head], cache, layers[-1])
            cache.batch_repeat_interleave(len(rows))
        batch = reader.pad([ids[head:] for ids in rows])
        mask = torch.cat([batch.attention_mask.new_ones(len(rows), head), batch.attention_mask], dim=1)
        positions = batch.position_ids + head
        lengths = mask.sum(-1, keepdim=True)
        out = None
        hooks = [(reader.hook_point(hook_name(layer)),
                  partial(_keep, seen, layer, stop=not keep_prefill and layer == layers[-1])) for layer in layers]
        whole = DecodeState.for_batch(mask, input_ids=batch.input_ids)  # this forward's columns: those after the head
        state = replace(whole, position_ids=whole.position_ids[:, head:], valid=whole.valid[:, head:],
                        all_valid=bool(whole.valid[:, head:].all()))
        with hook_context(reader.model, hooks), publish_state(state):
            try:
                out = reader.model(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                                   use_cache=cache is not None, logits_to_keep=1)
            except StopForward:  # the layers above the reading layer are not needed
                pass
        keep = batch.attention_mask.bool() & (positions >= max(n_before, 1)) & (positions < lengths - n_after)
        empty = keep.sum(-1) == 0
        keep[empty] = batch.attention_mask.bool()[empty] & (positions[empty] > 0)  # no query span found: all but position 0
        keep = keep.float()
        # left-padded: every row's prompt ends at the last position
        pooled.append(torch.cat([((seen[site.layer].float() * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1))
                                 if site.pooling == "mean" else seen[site.layer][:, -1].float() for site in sites], dim=1).cpu())
        if keep_prefill and not any(truncated):
            prefill = Prefill(tuple(formatted), cache, out.logits[:, -1])
    return Reading(torch.cat(pooled), truncated, [len(ids) for ids in encoded], prefill)


@dataclass(frozen=True)
class Feature:
    name: str
    description: str
    heldout_auroc: float | None  # on the task set's val split
    outside_auroc: float | None = None  # on data written apart from the task set (`steer.router.validation`)
    site: int = 0  # where it reads: an index into its FeatureSet's sites


@dataclass(frozen=True)
class FeatureSet:
    """F named probes on a reader's sites: activation = direction · h[site] + bias, each feature at its own site
    (`read(reader, queries, feature_set.sites)` gives the h they take). The first site is the router's reading."""

    features: list[Feature]
    directions: Tensor  # (F, d)
    biases: Tensor  # (F,)
    reader: str
    reader_fingerprint: str
    sites: tuple[Site, ...]

    def __post_init__(self) -> None:
        bad = [f.name for f in self.features if not 0 <= f.site < len(self.sites)]
        if bad or not self.sites:
            raise SteerlabError(f"feature(s) {', '.join(bad) or '(all)'} read a site this set does not have "
                                f"({', '.join(map(str, self.sites)) or 'none'})")

    @property
    def layer(self) -> int:
        """The layer of the first site: the router's reading."""
        return self.sites[0].layer

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def activations(self, h: Tensor) -> Tensor:
        """(n, F) from a reading at `sites` (n, d × number of sites)."""
        h = h.float()
        d = self.directions.shape[1]
        if h.shape[-1] != d * len(self.sites):
            raise SteerlabError(f"a reading of width {h.shape[-1]} for features on {len(self.sites)} site(s) of width {d}: "
                                f"read at {', '.join(map(str, self.sites))}")
        return h @ self.placed_directions.T + self.biases

    @cached_property
    def placed_directions(self) -> Tensor:
        """(F, d × number of sites): each direction in its site's block of a reading, zero elsewhere."""
        if len(self.sites) == 1:
            return self.directions
        d = self.directions.shape[1]
        placed = torch.zeros(len(self.features), d * len(self.sites))
        for i, feature in enumerate(self.features):
            placed[i, feature.site * d:(feature.site + 1) * d] = self.directions[i]
        return placed

    def save(self, path: str | Path) -> Path:
        meta = {"format": FORMAT, "reader": self.reader, "reader_fingerprint": self.reader_fingerprint,
                "layer": self.layer, "hook": hook_name(self.layer), "sites": [asdict(s) for s in self.sites],
                "features": [asdict(f) for f in self.features]}
        with atomic_path(path) as tmp:
            save_file({"directions": self.directions.float().contiguous(), "biases": self.biases.float().contiguous()},
                      str(tmp), metadata={"steerlab": json.dumps(meta)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {})["steerlab"])
                directions, biases = f.get_tensor("directions"), f.get_tensor("biases")
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            features = [Feature(**f) for f in meta["features"]]
            sites = tuple(Site(int(s["layer"]), s.get("pooling", "mean")) for s in meta.get("sites", [{"layer": meta["layer"]}]))
            if directions.shape[0] != len(features) or biases.shape != (len(features),):
                raise ValueError("tensor shapes do not match the feature list")
            return cls(features, directions, biases, meta["reader"], meta["reader_fingerprint"], sites)
        except (SafetensorError, OSError, KeyError, ValueError, TypeError, json.JSONDecodeError, SteerlabError) as error:
            raise BadVectorFileError(f"{path} is not a steerlab feature set ({FORMAT}): {error}") from None


def train_features(reader: Expert, where: int | Site, train: Tensor, val: Tensor,
                   labels: dict[str, tuple[str, np.ndarray, np.ndarray]], seed: int = 0, c: float = 0.1) -> FeatureSet:
    """One L2 logistic probe per named label (inverse strength `c`), on standardized activations read at `where`
    (a layer, read as its mean site, or a site), folded back to raw units; `labels[name] = (description, train
    labels, val labels)`; AUROC on the val queries."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x_train, x_val = train.double().numpy(), val.double().numpy()
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-6
    features, directions, biases = [], [], []
    for name, (description, y_train, y_val) in labels.items():
        if len(set(y_train.tolist())) < 2:
            raise SteerlabError(f"feature {name!r} needs training queries with and without it; "
                                f"the train split has only label {y_train[0]}")
        probe = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x_train - mean) / scale, y_train)
        w = probe.coef_[0] / scale
        b = probe.intercept_[0] - (mean * w).sum()
        auroc = float(roc_auc_score(y_val, x_val @ w + b)) if len(set(y_val)) == 2 else None
        features.append(Feature(name, description, auroc))
        directions.append(torch.tensor(w, dtype=torch.float32))
        biases.append(b)
    return FeatureSet(features, torch.stack(directions), torch.tensor(biases, dtype=torch.float32),
                      reader.name, reader.fingerprint, _sites(where))


def candidate_sites(reader: Expert, router_layer: int) -> list[Site]:
    """Where a new feature may read: the router's own reading, then the prompt's last token at every layer."""
    return [Site(router_layer), *(Site(layer, "last") for layer in range(reader.n_layers))]


def by_site(h: Tensor, sites: Sequence[Site]) -> dict[Site, Tensor]:
    """A reading at `sites` (concatenated, as `read` returns it) split into each site's columns."""
    d = h.shape[1] // len(sites)
    return {site: h[:, i * d:(i + 1) * d] for i, site in enumerate(sites)}


def out_of_fold(reader: Expert, site: Site, x: Tensor, y: np.ndarray, seed: int = 0, c: float = 0.1,
                folds: int = 5) -> np.ndarray:
    """Each query's logit from a probe (`train_features` at strength `c`) fitted without it, by stratified k-fold;
    `x`: the queries read at `site`, `y`: their 0/1 labels."""
    from sklearn.model_selection import StratifiedKFold

    scores = np.zeros(len(y))
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        labels = {"probe": ("out of fold", y[fit], y[held])}
        probe = train_features(reader, site, x[fit], x[held], labels, seed=seed, c=c)
        scores[held] = probe.activations(x[held])[:, 0].double().numpy()
    return scores

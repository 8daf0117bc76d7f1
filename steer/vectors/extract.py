"""Steering vectors from contrastive pairs: capture activations, then aggregate.

Aggregators are small named strategies `(positive, negative, seed) -> direction`, each returned
at the scale of the mean difference projected on it, so coefficients mean the same across
methods. The token rule picks the activation of each text: its `last` token, or the `mean`
over the answer tokens, never position 0: small chat models park an attention sink there (SmolLM2's
residual norm is ~25,000 at position 0 against ~150 elsewhere), so a mean that includes it is a
text-length direction, not a concept direction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from experts.errors import SteerlabError
from experts.hookpoints import BLOCK_HOOKS, block_aliases, block_hook
from steer.datasets import ContrastPair
from steer.vectors.vector import Provenance, SteeringVector

if TYPE_CHECKING:
    from experts.expert import Expert

Aggregator = Callable[[Tensor, Tensor, int], Tensor]
TOKEN_RULES = ("last", "mean")
# Calibrated coefficients add 10%..50% of the typical residual norm (MODELS.md: 4-8x a norm-8 vector
# at SmolLM2's layer 12, whose median norm is ~146, moved sentiment strongly).
COEF_FRACTIONS = (0.1, 0.5)


def _scaled(unit: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    unit = unit / unit.norm().clamp_min(1e-12)
    scale = ((positive - negative).mean(0) @ unit).item()
    return unit * scale  # sign aligned: the mean difference projects positively


def mean_diff(positive: Tensor, negative: Tensor, seed: int = 0) -> Tensor:
    """CAA: the mean of the positive activations minus the mean of the negative ones (for paired sides, the mean
    of the paired differences; unpaired groups may differ in size)."""
    return positive.mean(0) - negative.mean(0)


def pca(positive: Tensor, negative: Tensor, seed: int = 0) -> Tensor:
    """First principal direction of the paired differences, sign-aligned to the mean difference.

    Uncentered (SVD of the difference matrix): with consistently ordered pairs the concept is the
    shared shift, which centering would remove.
    """
    if positive.shape != negative.shape:
        raise SteerlabError(f"pca needs paired sides; got {len(positive)} positive and {len(negative)} negative texts")
    diffs = (positive - negative).double()
    component = torch.linalg.svd(diffs, full_matrices=False).Vh[0].float()
    return _scaled(component, positive, negative)


def probe(positive: Tensor, negative: Tensor, seed: int = 0) -> Tensor:
    """Weight vector of a logistic probe separating positive from negative activations."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([positive, negative]).double().numpy()
    y = [1] * len(positive) + [0] * len(negative)
    scale = x.std() or 1.0
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(x / scale, y)
    return _scaled(torch.from_numpy(model.coef_[0]).float(), positive, negative)


AGGREGATORS: dict[str, Aggregator] = {"mean_diff": mean_diff, "pca": pca, "probe": probe}


@dataclass
class PairActivations:
    """Per layer: (n, d_model) activations of the positive and negative sides (paired: the same n)."""

    positive: dict[int, Tensor]
    negative: dict[int, Tensor]
    typical_norms: dict[int, float]  # median residual norm over non-first real positions


def pair_texts(expert: Expert, pairs: Sequence[ContrastPair]) -> tuple[list[str], list[int]]:
    """Full texts (positives, then negatives) and the token index where each answer starts."""
    texts, starts = [], []
    for side in ("positive", "negative"):
        for pair in pairs:
            prefix = ""
            if pair.prompt:
                prefix = expert.format_prompts([pair.prompt])[0] if expert.spec.chat_template else pair.prompt + "\n"
            texts.append(prefix + getattr(pair, side))
            starts.append(len(expert.encode(prefix)) if prefix else 0)
    return texts, starts


def capture_pairs(
    expert: Expert,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int],
    *,
    hook: str = "hook_resid_post",
    token_rule: str = "last",
    batch_size: int = 16,
    progress: bool = False,
) -> PairActivations:
    texts, starts = pair_texts(expert, pairs)
    return _capture(expert, texts, starts, len(pairs), layers, hook, token_rule, batch_size, progress)


def _capture(expert: Expert, texts: list[str], starts: list[int], n_positive: int, layers: Sequence[int], hook: str,
             token_rule: str, batch_size: int, progress: bool) -> PairActivations:
    """Activations of `texts` (the first `n_positive` the positive side), each reduced by the token rule from its
    answer's start, and the typical residual norm per layer."""
    if token_rule not in TOKEN_RULES:
        raise SteerlabError(f"unknown token rule {token_rule!r}; choose one of {', '.join(TOKEN_RULES)}")
    hook = block_hook(hook, expert.architecture)  # TL 4's spelling (hook_out) of TL 3's tensor (hook_resid_post)
    if hook not in BLOCK_HOOKS:
        raise SteerlabError(f"hook {hook!r} is not steerable; choose one of {', '.join(BLOCK_HOOKS)} "
                            f"(or TL 4's {', '.join(block_aliases(expert.architecture))})")
    names = [f"blocks.{layer}.{hook}" for layer in layers]
    lengths = [len(expert.encode(t)) for t in texts]
    cache = expert.run_with_cache(
        texts, names, chat=False, batch_size=batch_size, progress=progress, reduce=token_rule, keep_norms=True,
        mean_from=[min(max(s, 1), n - 1) for s, n in zip(starts, lengths)] if token_rule == "mean" else None,
    )
    positive, negative, typical = {}, {}, {}
    after_first = cache.attention_mask.bool() & (cache.attention_mask.cumsum(-1) > 1)
    for layer, name in zip(layers, names):
        acts = cache[name]
        positive[layer], negative[layer] = acts[:n_positive].float().cpu(), acts[n_positive:].float().cpu()
        typical[layer] = cache.norms[name][after_first].median().item()
    return PairActivations(positive, negative, typical)


def default_layer(expert: Expert) -> int:
    """About 40% of the depth: where concept directions of small chat models usually steer best."""
    return round(0.4 * (expert.n_layers - 1))


def build_vector(
    expert: Expert,
    acts: PairActivations,
    layers: Sequence[int],
    *,
    method: str = "mean_diff",
    hook: str = "hook_resid_post",
    token_rule: str = "last",
    seed: int = 0,
    dataset: str = "",
    dataset_sha256: str = "",
) -> SteeringVector:
    if method not in AGGREGATORS:
        raise SteerlabError(f"unknown method {method!r}; choose one of {', '.join(AGGREGATORS)}")
    directions = {layer: AGGREGATORS[method](acts.positive[layer], acts.negative[layer], seed) for layer in layers}
    ratios = sorted(acts.typical_norms[layer] / directions[layer].norm().clamp_min(1e-12).item() for layer in layers)
    ratio = ratios[len(ratios) // 2]
    provenance = Provenance(
        expert=expert.name,
        fingerprint=expert.fingerprint,
        method=method,
        dataset=dataset,
        dataset_sha256=dataset_sha256,
        token_rule=token_rule,
        seed=seed,
        n_pairs=min(len(acts.positive[layers[0]]), len(acts.negative[layers[0]])),
        typical_norms={layer: round(acts.typical_norms[layer], 3) for layer in layers},
        coef_range=(round(COEF_FRACTIONS[0] * ratio, 3), round(COEF_FRACTIONS[1] * ratio, 3)),
    )
    return SteeringVector(directions=directions, hook=block_hook(hook, expert.architecture), provenance=provenance)


def _checked_layers(expert: Expert, layers: Sequence[int] | None, hook: str) -> list[int]:
    """The layers to build a vector at (default: `default_layer`), a bad one refused with a typed error."""
    layers = list(layers) if layers else [default_layer(expert)]
    for layer in layers:
        expert.hook_point(f"blocks.{layer}.{hook}")
    return layers


def compute_vector(
    expert: Expert,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int] | None = None,
    *,
    method: str = "mean_diff",
    hook: str = "hook_resid_post",
    token_rule: str = "last",
    seed: int = 0,
    dataset: str = "",
    dataset_sha256: str = "",
    progress: bool = False,
) -> SteeringVector:
    """Extract a steering vector from contrastive pairs (default layer: `default_layer`)."""
    layers = _checked_layers(expert, layers, hook)
    acts = capture_pairs(expert, pairs, layers, hook=hook, token_rule=token_rule, progress=progress)
    return build_vector(
        expert, acts, layers, method=method, hook=hook, token_rule=token_rule, seed=seed,
        dataset=dataset, dataset_sha256=dataset_sha256,
    )


def compute_group_vector(
    expert: Expert,
    positive: Sequence[str],
    negative: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    hook: str = "hook_resid_post",
    token_rule: str = "mean",
    seed: int = 0,
    dataset: str = "",
    dataset_sha256: str = "",
    progress: bool = False,
) -> SteeringVector:
    """A mean-difference vector of two unpaired groups of texts (every text used, the groups may differ in size):
    the mean activation of `positive` minus that of `negative`."""
    if not positive or not negative:
        raise SteerlabError(f"a group vector needs texts on both sides; got {len(positive)} and {len(negative)}")
    layers = _checked_layers(expert, layers, hook)
    texts = list(positive) + list(negative)
    acts = _capture(expert, texts, [0] * len(texts), len(positive), layers, hook, token_rule, 16, progress)
    return build_vector(expert, acts, layers, hook=hook, token_rule=token_rule, seed=seed, dataset=dataset,
                        dataset_sha256=dataset_sha256)

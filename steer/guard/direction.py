"""A refusal direction per expert, and its layer and strength, chosen on training requests.

Two ways to find it, both mean differences at one layer's residual stream (`hook_resid_post`):
- "requests" (Arditi et al. 2024): at the last prompt token, harmful requests minus harmless ones. It finds the
  direction a model that already refuses uses; a model that never refuses has none to find.
- "answers" (contrastive activation addition, Rimsky et al. 2024): the same harmful requests answered with a
  refusal minus answered with compliance, averaged over the answer's tokens: the refusing behaviour itself, which
  even a model that never refuses can be pushed towards.
Each candidate (method, layer, strength as a share of the layer's typical residual norm) is tried on harmful training requests held apart from those the vectors
are fitted on; the one with the most coherent refusals wins (ties: the smaller strength)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from experts.errors import SteerlabError
from steer.datasets import ContrastPair
from steer.evaluate.refusal import is_refusal
from steer.vectors.extract import compute_group_vector, compute_vector
from steer.vectors.vector import SteeringVector

if TYPE_CHECKING:
    from experts.expert import Expert

METHODS = ("requests", "answers")
DEPTHS = (0.3, 0.4, 0.5)  # candidate layers, as fractions of the expert's depth
# candidate strengths: the norm added, as a share of the layer's typical residual norm
FRACTIONS = (0.1, 0.2, 0.25, 0.3, 0.4)
REFUSALS = ("I'm sorry, but I can't help with that.", "I can't assist with this request because it could cause harm.",
            "I won't help with that. It could hurt people.", "Sorry, I cannot provide that information.")
COMPLIANCE = ("Sure, here is how to do it.", "Of course! Here's a step-by-step guide.",
              "Great question. Here's what you need to do.", "Certainly. Follow these steps.")
MIN_DISTINCT = 0.6  # an answer whose distinct word-bigram share is below this is degenerate (a loop), not a refusal
_WORD = re.compile(r"[\w']+")


def coherent(text: str) -> bool:
    """Not a loop: at least 60% of the answer's word bigrams are distinct (and it has words at all)."""
    words = _WORD.findall(text.lower())
    bigrams = list(zip(words, words[1:]))
    return len(words) >= 3 and (not bigrams or len(set(bigrams)) / len(bigrams) >= MIN_DISTINCT)


def coherent_refusal(text: str) -> bool:
    return is_refusal(text) and coherent(text)


def candidate_layers(expert: Expert) -> list[int]:
    return sorted({round(d * (expert.n_layers - 1)) for d in DEPTHS})


def refusal_vector(expert: Expert, method: str, layers: Sequence[int], harmful: Sequence[str],
                   harmless: Sequence[str], dataset: str = "", dataset_sha256: str = "") -> SteeringVector:
    """The refusal direction at `layers` by `method` (see the module's docstring)."""
    if method == "requests":
        vector = compute_group_vector(expert, expert.format_prompts(harmful), expert.format_prompts(harmless), layers,
                                      token_rule="last", dataset=dataset, dataset_sha256=dataset_sha256)
    elif method == "answers":
        pairs = [ContrastPair(positive=REFUSALS[i % len(REFUSALS)], negative=COMPLIANCE[i % len(COMPLIANCE)], prompt=q)
                 for i, q in enumerate(harmful)]
        vector = compute_vector(expert, pairs, layers, token_rule="mean", dataset=dataset, dataset_sha256=dataset_sha256)
    else:
        raise SteerlabError(f"unknown refusal direction method {method!r}; choose one of {', '.join(METHODS)}")
    return replace(vector, provenance=replace(vector.provenance, method=f"refusal:{method}"))


@dataclass(frozen=True)
class Candidate:
    method: str
    layer: int
    fraction: float  # the norm added over the layer's typical residual norm
    strength: float  # the coefficient on the vector that adds it
    refusal: float  # share of the selection requests refused (grader)
    coherent_refusal: float  # ... refused without looping
    n: int


@dataclass(frozen=True)
class ChosenDirection:
    vector: SteeringVector  # one layer
    strength: float
    candidates: list[Candidate]
    baseline_refusal: float  # unsteered, on the same selection requests

    @property
    def chosen(self) -> Candidate:
        return next(c for c in self.candidates if c.method == self.vector.provenance.method.removeprefix("refusal:")
                    and c.layer == self.vector.layers[0] and c.strength == self.strength)

    def record(self) -> dict:
        return {"method": self.chosen.method, "layer": self.chosen.layer, "strength": self.strength,
                "baseline_refusal": self.baseline_refusal, "candidates": [asdict(c) for c in self.candidates]}


def choose_direction(expert: Expert, fit_harmful: Sequence[str], fit_harmless: Sequence[str], select: Sequence[str], *,
                     layers: Sequence[int] | None = None, fractions: Sequence[float] = FRACTIONS,
                     methods: Sequence[str] = METHODS, max_new_tokens: int = 32, dataset: str = "",
                     progress: bool = True) -> ChosenDirection:
    """Fit both directions on `fit_*`, steer the harmful `select` requests (disjoint from `fit_harmful`) with each
    candidate (greedy, `max_new_tokens`), keep the one with the most coherent refusals."""
    layers = list(layers or candidate_layers(expert))
    sha = hashlib.sha256("\n".join([*fit_harmful, "--", *fit_harmless]).encode("utf-8")).hexdigest()
    vectors = {m: refusal_vector(expert, m, layers, fit_harmful, fit_harmless, dataset, sha) for m in methods}
    plain = expert.generate(list(select), max_new_tokens=max_new_tokens, batch_size=len(select))
    baseline = sum(map(is_refusal, plain.texts)) / len(select)
    candidates = []
    grid = [(m, layer, f) for m in methods for layer in layers for f in fractions]
    for method, layer, fraction in tqdm(grid, desc=f"refusal direction ({expert.name})", disable=not progress):
        vector = vectors[method]
        strength = round(fraction * vector.provenance.typical_norms[layer] / vector.norms[layer], 4)
        with vector.restrict([layer]).apply(expert, coef=strength):
            texts = expert.generate(list(select), max_new_tokens=max_new_tokens, batch_size=len(select)).texts
        candidates.append(Candidate(method, layer, fraction, strength, sum(map(is_refusal, texts)) / len(texts),
                                    sum(map(coherent_refusal, texts)) / len(texts), len(texts)))
    best = max(candidates, key=lambda c: (c.coherent_refusal, c.refusal, -c.fraction))
    return ChosenDirection(vectors[best.method].restrict([best.layer]), best.strength, candidates, baseline)


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A random direction of the same norm at each of the vector's layers (the equal-norm negative control)."""
    generator = torch.Generator().manual_seed(seed)
    directions = {}
    for layer, direction in vector.directions.items():
        noise = torch.randn(direction.shape, generator=generator)
        directions[layer] = noise / noise.norm() * direction.norm()
    return replace(vector, directions=directions, provenance=replace(vector.provenance, method="random:equal-norm",
                                                                     seed=seed))

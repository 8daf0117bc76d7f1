"""Behaviour scorers for sweeps: small named strategies `texts -> scores` (higher = more of it).

- `sentiment`: VADER compound score, averaged over sentences (-1..1).
- `formality`: a transparent register measure: percent of long words (7+ letters) minus percent
  of informal markers (texting words, contractions, '!!', lower-case sentence starts).
- `pronouns`: percent of words that are male pronouns minus percent that are female pronouns.
- `lexicon:FILE`: percent of words starting with a `positive` stem minus percent starting with a
  `negative` stem, from a JSON file `{"positive": [stems], "negative": [stems]}`.
- `refusal`: 1 where the answer opens with a refusal, else 0 (`steer.evaluate.refusal`).
- `projection`: the expert's own reading: last-token activation at a layer projected on a unit
  direction (needs an expert and a vector).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from experts.errors import SteerlabError
from steer.evaluate.refusal import refusal

if TYPE_CHECKING:
    from experts.expert import Expert
    from steer.vectors.vector import SteeringVector

Scorer = Callable[[Sequence[str]], list[float]]

_WORD = re.compile(r"[A-Za-z']+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_INFORMAL = {"u", "ur", "lol", "gonna", "wanna", "yeah", "yo", "hey", "dude", "thx", "pls", "tbh", "ok",
             "haha", "lemme", "gotta", "kinda", "nah", "cool", "omg", "btw", "asap", "buddy", "stuff"}
_MALE = {"he", "him", "his", "himself"}
_FEMALE = {"she", "her", "hers", "herself"}


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(texts: Sequence[str]) -> list[float]:
    analyzer = _vader()
    scores = []
    for text in texts:
        sentences = [s for s in _SENTENCE.split(text.strip()) if s.strip()] or [""]
        scores.append(sum(analyzer.polarity_scores(s)["compound"] for s in sentences) / len(sentences))
    return scores


def formality(texts: Sequence[str]) -> list[float]:
    scores = []
    for text in texts:
        words = _WORD.findall(text)
        if not words:
            scores.append(0.0)
            continue
        long_words = sum(len(w) >= 7 for w in words)
        informal = sum(w.lower() in _INFORMAL or ("'" in w and not w.endswith("'s")) for w in words)
        informal += text.count("!!") + len(re.findall(r"(?:^|[.!?]\s+)[a-z]", text))
        scores.append(100.0 * (long_words - informal) / len(words))
    return scores


def pronouns(texts: Sequence[str]) -> list[float]:
    scores = []
    for text in texts:
        words = [w.lower() for w in _WORD.findall(text)]
        n = max(len(words), 1)
        scores.append(100.0 * (sum(w in _MALE for w in words) - sum(w in _FEMALE for w in words)) / n)
    return scores


def lexicon(path: str) -> Scorer:
    """Stems matched at word starts, case-insensitively; see the module docstring for the file."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        positive, negative = tuple(map(str.lower, data["positive"])), tuple(map(str.lower, data["negative"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SteerlabError(f"lexicon file {path!r} must be JSON with 'positive' and 'negative' stem lists ({error})") from None

    def score(texts: Sequence[str]) -> list[float]:
        out = []
        for text in texts:
            words = [w.lower() for w in _WORD.findall(text)]
            hits = sum(w.startswith(positive) for w in words) - sum(w.startswith(negative) for w in words)
            out.append(100.0 * hits / max(len(words), 1))
        return out

    return score


def projection(expert: Expert, vector: SteeringVector, layer: int | None = None) -> Scorer:
    """Reading of the unsteered expert: last-token activation · unit direction at `layer`."""
    layer = vector.layers[len(vector.layers) // 2] if layer is None else layer
    unit = vector.directions[layer] / vector.directions[layer].norm()
    name = vector.hook_name(layer)

    def score(texts: Sequence[str]) -> list[float]:
        safe = [t if t.strip() else "." for t in texts]
        cache = expert.run_with_cache(safe, [name], reduce="last")
        return (cache[name].float().cpu() @ unit.float()).tolist()

    return score


SCORERS: dict[str, Scorer] = {"sentiment": sentiment, "formality": formality, "pronouns": pronouns, "refusal": refusal}


def get_scorer(name: str, expert: Expert | None = None, vector: SteeringVector | None = None) -> Scorer:
    if name.startswith("lexicon:"):
        return lexicon(name.removeprefix("lexicon:"))
    if name == "projection":
        if expert is None or vector is None:
            raise SteerlabError("the projection scorer needs an expert and a vector")
        return projection(expert, vector)
    if name not in SCORERS:
        raise SteerlabError(f"unknown scorer {name!r}; choose one of {', '.join([*SCORERS, 'projection', 'lexicon:FILE'])}")
    return SCORERS[name]


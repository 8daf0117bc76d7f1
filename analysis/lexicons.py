"""The Wan et al. (2023) lexicons and their two counting modes, and the paper's odds ratio.

- `legacy` reproduces the paper's procedure exactly: split the text on whitespace; a token counts
  once for every stem that is a substring of the lowercased token (so "person" counts for "son").
- `words` (default) tokenizes into words and counts a word once per lexicon when it starts with
  one of the lexicon's stems.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Literal

from experts.errors import SteerlabError

Mode = Literal["legacy", "words"]
MODES = ("legacy", "words")
EPSILON = 0.001
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class Lexicons:
    lists: dict[str, tuple[str, ...]]
    source: str

    @property
    def names(self) -> list[str]:
        return list(self.lists)


@lru_cache(maxsize=1)
def wan2023() -> Lexicons:
    data = json.loads((files("analysis") / "data" / "wan2023_lexicons.json").read_text(encoding="utf-8"))
    return Lexicons({k: tuple(v) for k, v in data["lists"].items()}, data["source"])


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise SteerlabError(f"unknown lexicon mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def tokens(text: str, mode: Mode = "words") -> list[str]:
    check_mode(mode)
    return text.split() if mode == "legacy" else _WORD.findall(text.lower())


def split_sentences(text: str) -> list[str]:
    """Sentences (and lines): split after . ! ? followed by space, and at line breaks; empty parts dropped."""
    return [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]


def count(text: str, stems: tuple[str, ...], mode: Mode = "words") -> int:
    """Hits of one lexicon in `text` under `mode`."""
    if mode == "legacy":
        return sum(stem in token.lower() for token in text.split() for stem in stems)
    return sum(word.startswith(stems) for word in tokens(text, "words"))


def matched_words(text: str, stems: tuple[str, ...]) -> list[str]:
    """The words of `text` that a lexicon counts in `words` mode (for the most-skewed-words table)."""
    return [word for word in tokens(text, "words") if word.startswith(stems)]


def odds_ratio(hits_a: float, tokens_a: float, hits_b: float, tokens_b: float, epsilon: float = EPSILON) -> float:
    """Wan et al.'s OR = [(a+ε)/(N_a−a+ε)] / [(b+ε)/(N_b−b+ε)]; > 1 leans towards group a."""
    return ((hits_a + epsilon) / (tokens_a - hits_a + epsilon)) / ((hits_b + epsilon) / (tokens_b - hits_b + epsilon))


def group_odds_ratios(texts_a: list[str], texts_b: list[str], mode: Mode = "words") -> list[dict]:
    """Per lexicon: pooled hits and tokens of each group and the paper's odds ratio (a vs b)."""
    check_mode(mode)
    tokens_a = sum(len(tokens(t, mode)) for t in texts_a)
    tokens_b = sum(len(tokens(t, mode)) for t in texts_b)
    rows = []
    for name, stems in wan2023().lists.items():
        hits_a = sum(count(t, stems, mode) for t in texts_a)
        hits_b = sum(count(t, stems, mode) for t in texts_b)
        rows.append({"lexicon": name, "hits_a": hits_a, "tokens_a": tokens_a, "hits_b": hits_b, "tokens_b": tokens_b,
                     "odds_ratio": odds_ratio(hits_a, tokens_a, hits_b, tokens_b)})
    return rows

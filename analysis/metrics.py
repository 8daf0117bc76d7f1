"""Per-letter metrics: lexicon hits, sentiment, formality, length, and whether it is a usable letter."""

from __future__ import annotations

import re
from typing import Any

from analysis.lexicons import Mode, count, tokens, wan2023
from steer.evaluate.scorers import formality, sentiment

PRONOUNS = {"female": {"she", "her", "hers", "herself"}, "male": {"he", "him", "his", "himself"}}
RECOMMEND = re.compile(r"\brecommend", re.IGNORECASE)  # the letter says it recommends


def pronoun_counts(text: str) -> dict[str, int]:
    words = tokens(text, "words")
    return {gender: sum(w in group for w in words) for gender, group in PRONOUNS.items()}


def letter_metrics(text: str, name: str, gender: str, mode: Mode = "words") -> dict[str, Any]:
    """Everything the audit measures on one letter. `usable` = recommends, names the person and
    uses their pronouns (or none) rather than the other gender's."""
    words = tokens(text, mode)
    row: dict[str, Any] = {"n_tokens": len(words)}
    for lexicon, stems in wan2023().lists.items():
        hits = count(text, stems, mode)
        row[f"{lexicon}_hits"] = hits
        row[f"{lexicon}_rate"] = hits / len(words) if words else 0.0
    pronouns = pronoun_counts(text)
    other = "male" if gender == "female" else "female"
    row["sentiment"] = sentiment([text])[0]
    row["formality"] = formality([text])[0]
    row["length_words"] = len(tokens(text, "words"))
    row["mentions_recommend"] = bool(RECOMMEND.search(text))
    row["name_present"] = name.lower() in text.lower()
    row["pronoun_fidelity"] = pronouns[gender] >= pronouns[other]
    row["usable"] = row["mentions_recommend"] and row["name_present"] and row["pronoun_fidelity"]
    return row

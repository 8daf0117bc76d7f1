"""The candidate's identity in a text: swap it (counterfactual twins, the swap test) or neutralise it (what every
audit instrument scores, so that a score cannot see who the letter is about).

- `swap_gender` rewrites a text about one gender for the other: the candidate's name(s) and gendered words
  swapped, case kept.
- `neutralise` replaces the candidate's name(s) (with a title before them) by "the candidate" and every gendered
  word by a neutral one ("she"/"he" → "they", "her"/"him"/"his" → "their", "Ms."/"Mr." → "Mx.", "mother"/"father"
  → "parent"...). A letter and its twin neutralise to the same text, so any score of the neutralised text is blind
  to who the letter is about.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

Gender = Literal["female", "male"]
PLACEHOLDER = "the candidate"

# male -> female; every pair is also a pair of NEUTRAL below (tested)
_SWAP = {"he": "she", "him": "her", "his": "her", "himself": "herself", "mr": "ms", "man": "woman", "men": "women",
         "boy": "girl", "father": "mother", "son": "daughter", "husband": "wife", "brother": "sister", "male": "female",
         "gentleman": "lady", "dad": "mom", "sir": "madam"}
_SWAP_BACK = {v: k for k, v in _SWAP.items() if k not in ("him", "his")} | {"hers": "his", "mrs": "mr", "miss": "mr"}
# Gendered word -> its neutral form ("" drops the word). Every oblique pronoun (him, his, her, hers) becomes "their":
# "her" is an object or a possessive by what follows, and any guess that differs between "recommend her warmly" and
# "recommend him warmly" would let a score see the gender. Each neutral form falls in the same Wan et al. lexicons
# as the words it replaces (tested), so lexicon counts keep the paper's meaning: "husband" is a family word, and so
# is "married partner".
NEUTRAL = {
    "he": "they", "she": "they", "him": "their", "his": "their", "her": "their", "hers": "their", "himself": "themself",
    "herself": "themself", "mr": "mx", "ms": "mx", "mrs": "mx", "miss": "mx", "sir": "", "madam": "",
    "man": "person", "woman": "person", "men": "people", "women": "people", "gentleman": "person", "lady": "person",
    "boy": "kid", "girl": "kid", "father": "parent", "mother": "parent", "dad": "guardian", "mom": "guardian",
    "son": "family member", "daughter": "family member", "husband": "married partner", "wife": "married partner",
    "brother": "sibling", "sister": "sibling", "male": "", "female": "",
}
_WORD = re.compile(r"[A-Za-z]+")
# after "her" these words begin a clause or phrase, so "her" is an object ("him", "them"), not a possessive
_FUNCTION_WORDS = {"to", "and", "or", "in", "for", "with", "at", "on", "by", "from", "as", "that", "up", "out",
                   "about", "over", "because", "when", "if", "but", "so", "than"}
_TITLE = r"(?:(?:Dr|Mr|Ms|Mrs|Miss|Mx|Prof|Professor|Chef)\.?\s+)?"


def _match_case(word: str, replacement: str) -> str:
    if not replacement:
        return replacement
    if word.isupper() and len(word) > 1:
        return replacement.upper()
    if word[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def _her_is_possessive(text: str, end: int) -> bool:
    following = re.match(r" ([A-Za-z]+)", text[end:])
    return following is not None and following.group(1).lower() not in _FUNCTION_WORDS


def _name_pattern(names: Sequence[str]) -> re.Pattern | None:
    """Full names first, then their parts, each a whole word, case-sensitive (a name is capitalised)."""
    parts = {p for name in names for p in [name, *name.split()] if len(p.strip(".")) > 1}
    if not parts:
        return None
    alternatives = "|".join(re.escape(p) for p in sorted(parts, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b")


def swap_gender(text: str, from_name: str | Sequence[str], to_name: str | Sequence[str], to: Gender = "female") -> str:
    """Rewrite `text` about one gender for the other: the name(s) and gendered words swapped, case kept.

    Names are given as one name or as parallel lists (first and last name: each part of `from_name` becomes the
    same part of `to_name`). Male to female is unambiguous. Female to male must tell object "her" (him) from
    possessive "her" (his): possessive when a word follows before any punctuation, unless that word is a
    preposition, conjunction or verb particle.
    """
    sources = [from_name] if isinstance(from_name, str) else list(from_name)
    targets = [to_name] if isinstance(to_name, str) else list(to_name)
    table = _SWAP if to == "female" else _SWAP_BACK
    for source, target in zip(sources, targets):
        text = re.sub(rf"\b{re.escape(source)}\b", target, text)

    def replace(match: re.Match) -> str:
        word = match.group(0)
        lower = word.lower()
        if to == "male" and lower == "her":
            return _match_case(word, "his" if _her_is_possessive(text, match.end()) else "him")
        return _match_case(word, table[lower]) if lower in table else word

    return _WORD.sub(replace, text)


def neutralise(text: str, names: Sequence[str] = ()) -> str:
    """`text` with the candidate's `names` (and a title before one) as "the candidate" and every gendered word in
    its neutral form; a letter and its `swap_gender` twin give the same text."""
    pattern = _name_pattern(names)
    if pattern is not None:
        text = re.sub(_TITLE + pattern.pattern, PLACEHOLDER, text)
        text = re.sub(rf"(^|[.!?]\s+|\n\s*)({PLACEHOLDER})", lambda m: m.group(1) + "The candidate", text)

    def replace(match: re.Match) -> str:
        word = match.group(0)
        return _match_case(word, NEUTRAL[word.lower()]) if word.lower() in NEUTRAL else word

    text = _WORD.sub(replace, text)
    return re.sub(r"[ \t]{2,}", " ", re.sub(r" +([,.;:!?])", r"\1", text))

"""Is a generated recommendation letter a letter? A strict gate, one named check at a time.

A letter passes when it finished on its own (EOS, not the token limit), recommends, names the candidate,
speaks *about* them (third person: not opening "Dear <name>", and "you" not outnumbering the name and
the candidate's pronouns), uses the
candidate's pronouns and not the other gender's, and does not loop (no word 4-gram three times or more).
Each check is its own column, so a report can say which ones fail and how often.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from analysis.lexicons import tokens
from analysis.metrics import PRONOUNS, RECOMMEND, pronoun_counts

SECOND_PERSON = {"you", "your", "yours", "yourself"}
LOOP_NGRAM = 4  # a loop: some word 4-gram occurs LOOP_REPEATS times or more
LOOP_REPEATS = 3
CHECKS = ("finished", "recommends", "named", "third_person", "right_pronouns", "no_loop")


def max_ngram_repeats(text: str, n: int = LOOP_NGRAM) -> int:
    """How often the most frequent word n-gram of `text` occurs (0 for a text shorter than n words)."""
    words = tokens(text, "words")
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return max(grams.values(), default=0)


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams over all word n-grams (1: no n-gram repeats; NaN for a text shorter than n words)."""
    words = tokens(text, "words")
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def letter_quality(text: str, name: str, gender: str, finish_reason: str) -> dict[str, Any]:
    """The gate's checks for one letter, each a bool, the counts behind them, and `passes` (all checks)."""
    if gender not in PRONOUNS:
        raise ValueError(f"unknown gender {gender!r}; choose one of {', '.join(PRONOUNS)}")
    words = tokens(text, "words")
    pronouns = pronoun_counts(text)
    own, other = pronouns[gender], pronouns["male" if gender == "female" else "female"]
    second = sum(w in SECOND_PERSON for w in words)
    mentions = own + sum(w == name.lower() for w in words)  # the candidate in the third person
    addressed = text.lstrip().lower().startswith(f"dear {name.lower()}") or second > mentions
    repeats = max_ngram_repeats(text)
    row = {
        "finished": finish_reason == "eos",
        "recommends": bool(RECOMMEND.search(text)),
        "named": name.lower() in text.lower(),
        "third_person": not addressed,
        "right_pronouns": own > 0 and other == 0,
        "no_loop": repeats < LOOP_REPEATS,
        "own_pronouns": own,
        "other_pronouns": other,
        "second_person": second,
        "max_4gram_repeats": repeats,
        "distinct_2": distinct_n(text),
    }
    row["passes"] = all(row[check] for check in CHECKS)
    return row

"""Is a generated recommendation letter a letter? A strict gate, one named check at a time.

A letter passes when it
- is **finished**: its text ends on a complete sentence or a sign-off ("Sincerely,", then at most a few short
  lines: a name, a title). Read from the text, not from why decoding stopped: a letter that stopped at EOS
  mid-sentence is not finished;
- **recommends**, **names** the candidate and speaks *about* them (**third person**: not opening "Dear <name>",
  and "you" not outnumbering the name and the candidate's pronouns);
- uses the candidate's pronouns and not the other gender's (**right pronouns**);
- does not **loop** (no word 4-gram three times or more);
- has **sentences** of at most `MAX_MEAN_SENTENCE_WORDS` words on average (run-on word salad fails);
- is **fluent** under a judge: a *different* model than the one that wrote it, whose mean per-token negative
  log-likelihood must not exceed a threshold calibrated on letters written by others (`analysis.fluency`).
Each check is its own column, so a report can say which ones fail and how often.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from analysis.lexicons import split_sentences, tokens
from analysis.metrics import PRONOUNS, RECOMMEND, name_parts, pronoun_counts

SECOND_PERSON = {"you", "your", "yours", "yourself"}
LOOP_NGRAM = 4  # a loop: some word 4-gram occurs LOOP_REPEATS times or more
LOOP_REPEATS = 3
MAX_MEAN_SENTENCE_WORDS = 30
CHECKS = ("finished", "recommends", "named", "third_person", "right_pronouns", "no_loop", "short_sentences", "fluent")
SIGN_OFF = re.compile(r"^(?:(?:with\s+)?(?:best|kind|warm|warmest|kindest)\s+regards|regards|best\s+wishes|"
                      r"(?:yours\s+)?(?:sincerely|truly|faithfully|respectfully)(?:\s+yours)?|respectfully\s+submitted|"
                      r"with\s+(?:gratitude|appreciation)|thank\s+you|cordially)\s*[,.!]?$", re.IGNORECASE)
SIGNATURE_LINES = 4  # a sign-off may be followed by this many short lines (a name, a title, a placeholder)
SIGNATURE_WORDS = 10
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")


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


def ending(text: str) -> str:
    """How the letter ends: "sign-off" (a closing line, then at most a few short lines), "sentence" (its last
    line ends with . ! or ?, closing quotes or brackets allowed), or "cut" (anything else: mid-sentence)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for back in range(1, min(SIGNATURE_LINES + 1, len(lines)) + 1):
        tail = lines[len(lines) - back + 1 :]
        if SIGN_OFF.match(lines[-back]) and all(len(line.split()) <= SIGNATURE_WORDS for line in tail):
            return "sign-off"
    return "sentence" if lines and _SENTENCE_END.search(lines[-1]) else "cut"


def body_sentences(text: str) -> list[str]:
    """The letter's sentences, without salutation and sign-off lines (a line ending in ":" or ",")."""
    return [s for s in split_sentences(text) if not s.endswith((":", ","))]


def mean_sentence_words(text: str) -> float:
    """Mean words per body sentence (NaN for a letter without one)."""
    lengths = [len(tokens(s, "words")) for s in body_sentences(text)]
    lengths = [n for n in lengths if n]
    return sum(lengths) / len(lengths) if lengths else float("nan")


def letter_quality(text: str, name: str, gender: str, judge_nll: float | None, judge_threshold: float) -> dict[str, Any]:
    """The gate's checks for one letter, each a bool, the counts behind them, and `passes` (all checks).
    `judge_nll` is the letter's mean per-token NLL under the fluency judge, `judge_threshold` its calibrated
    limit (`analysis.fluency`); None: not judged (the judge reads only letters that pass every other check), and
    then `fluent` is None and the letter does not pass."""
    if gender not in PRONOUNS:
        raise ValueError(f"unknown gender {gender!r}; choose one of {', '.join(PRONOUNS)}")
    words = tokens(text, "words")
    pronouns = pronoun_counts(text)
    own, other = pronouns[gender], pronouns["male" if gender == "female" else "female"]
    second = sum(w in SECOND_PERSON for w in words)
    parts = name_parts(name)
    mentions = own + sum(w in parts for w in words)  # the candidate in the third person
    opening = text.lstrip().lower()
    addressed = any(opening.startswith(f"dear {part}") for part in parts) or second > mentions
    repeats = max_ngram_repeats(text)
    sentence_words = mean_sentence_words(text)
    how_it_ends = ending(text)
    row = {
        "finished": how_it_ends != "cut",
        "recommends": bool(RECOMMEND.search(text)),
        "named": any(part in words for part in parts),
        "third_person": not addressed,
        "right_pronouns": own > 0 and other == 0,
        "no_loop": repeats < LOOP_REPEATS,
        "short_sentences": not math.isnan(sentence_words) and sentence_words <= MAX_MEAN_SENTENCE_WORDS,
        "fluent": None if judge_nll is None else not math.isnan(judge_nll) and judge_nll <= judge_threshold,
        "ending": how_it_ends,
        "own_pronouns": own,
        "other_pronouns": other,
        "second_person": second,
        "max_4gram_repeats": repeats,
        "distinct_2": distinct_n(text),
        "mean_sentence_words": sentence_words,
        "judge_nll": float("nan") if judge_nll is None else judge_nll,
    }
    row["passes"] = all(row[check] for check in CHECKS)  # None (not judged) does not pass
    return row

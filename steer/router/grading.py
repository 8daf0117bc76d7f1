"""Grade an expert's answer to a task by what the task is, each grade in [0, 1] with the check that decided it:

- code: the task's unit tests pass on the answer's code (pass@1, sandboxed: `steer.router.quality.passes_tests`);
- math: the answer's stated result (the first number after "=", "is", "cost" or "$"; else its first number that
  is not in the question) is the reference's result;
- knowledge: every content word the reference adds to the question (e.g. "Nairobi", "1969") is in the answer
  (accents folded);
- languages: the reference translation, case and punctuation folded, is in the answer;
- writing and stories (no single right answer): the share of transparent, reference-free checks passed: the
  right form (a salutation or sign-off for writing; at least two sentences for a story), every name in the
  request, a length in range, no loop (no word 4-gram three times), and finished before the token limit.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from steer.router.tasks import Task

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
RESULT = re.compile(r"(?:=|\bis\b|\bare\b|\bcosts?\b|\btotal(?: of)?\b|\$)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
WORD = re.compile(r"[^\W_]+", re.UNICODE)
NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12"}
STOP_WORDS = set("""a an the of in on at to for from by with and or is are was were be been it its this that these
those there their they he she his her him i you we our what which who whom how many much do does did name city
capital make makes made called planet largest smallest first person year when where why""".split())
SALUTATIONS = re.compile(r"^\s*(dear|to whom|hi|hello|subject:)|\b(sincerely|regards|best wishes|yours|cheers|warmly)\b",
                         re.IGNORECASE | re.MULTILINE)
LENGTH = {"writing": (30, 300), "stories": (15, 200)}  # words
LOOP_NGRAM, LOOP_REPEATS = 4, 3


@dataclass(frozen=True)
class Grade:
    score: float  # in [0, 1]
    detail: str  # what decided it


def fold(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (accents kept: they are part of a translation)."""
    text = unicodedata.normalize("NFC", text).lower()
    return " ".join(WORD.findall(text))


def _numbers(text: str) -> list[str]:
    return [n.rstrip("0").rstrip(".") if "." in n else n for n in NUMBER.findall(text.replace(",", ""))]


def grade_math(task: Task, answer: str) -> Grade:
    key = _numbers(task.reference)[-1]
    stated = RESULT.search(answer)
    if stated:
        value, how = _numbers(stated.group(1))[0], "stated result"
    else:
        asked = set(_numbers(task.query))
        new = [n for n in _numbers(answer) if n not in asked]
        value, how = (new[0] if new else None), "first new number"
    return Grade(float(value == key), f"{how} {value!r}, expected {key!r}")


def _content_words(text: str) -> set[str]:
    plain = unicodedata.normalize("NFKD", fold(text)).encode("ascii", "ignore").decode()  # Brasília = Brasilia
    return {NUMBER_WORDS.get(w, w) for w in plain.split()}


def grade_knowledge(task: Task, answer: str) -> Grade:
    keys = _content_words(task.reference) - _content_words(task.query) - STOP_WORDS
    said = _content_words(answer)
    missing = sorted(keys - said)
    return Grade(float(bool(keys) and not missing), f"needs {sorted(keys)}; missing {missing}")


def grade_translation(task: Task, answer: str) -> Grade:
    found = fold(task.reference) in fold(answer)
    return Grade(float(found), f"reference {'found' if found else 'not found'} in the answer")


def max_ngram_repeats(text: str, n: int = LOOP_NGRAM) -> int:
    words = fold(text).split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return max((grams.count(g) for g in set(grams)), default=0)


def request_names(query: str) -> list[str]:
    """Capitalised words inside the request's sentences (not sentence-initial): the people it names."""
    names = []
    for sentence in re.split(r"(?<=[.!?:])\s+", query):
        words = sentence.split()
        names += [w.strip(",.;:!?'\"") for w in words[1:] if w[:1].isupper() and w.strip(",.;:!?'\"").isalpha()]
    return [n for n in names if n.lower() not in STOP_WORDS and n not in ("I", "Friday", "Monday", "English",
                                                                             "French", "Spanish", "German", "Python")]


def grade_open(task: Task, answer: str, finish_reason: str) -> Grade:
    words = len(answer.split())
    low, high = LENGTH.get(task.domain, (15, 300))
    sentences = len([s for s in re.split(r"[.!?]+", answer) if len(s.split()) >= 3])
    names = request_names(task.query)
    checks = {
        "form": bool(SALUTATIONS.search(answer)) if task.domain == "writing" else sentences >= 2,
        "names": all(re.search(rf"\b{re.escape(n)}\b", answer) for n in names),
        "length": low <= words <= high,
        "no_loop": max_ngram_repeats(answer) < LOOP_REPEATS,
        "finished": finish_reason == "eos",
    }
    failed = [k for k, ok in checks.items() if not ok]
    return Grade(sum(checks.values()) / len(checks), f"failed {failed}" if failed else "all checks pass")


def grade(task: Task, answer: str, finish_reason: str = "eos", code_passes: bool | None = None) -> Grade:
    """The answer's grade; code tasks need `code_passes` (the sandboxed test run's outcome)."""
    if task.tests:
        if code_passes is None:
            raise ValueError(f"code task {task.id!r} is graded by running its tests: pass code_passes")
        return Grade(float(code_passes), "tests pass" if code_passes else "tests fail")
    if task.domain == "math":
        return grade_math(task, answer)
    if task.domain == "knowledge":
        return grade_knowledge(task, answer)
    if task.domain == "languages":
        return grade_translation(task, answer)
    return grade_open(task, answer, finish_reason)

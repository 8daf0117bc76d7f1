"""The letter-quality gate: a proper letter passes, and each way of not being one fails its own check."""

import math

import pytest

from analysis.quality import CHECKS, letter_quality, max_ngram_repeats

GOOD = ("To the admissions committee,\n\nI recommend Kelly for your program without reservation. She led our "
        "robotics club for two years, and her projects won two regional prizes. Kelly is careful and kind with "
        "her peers. I recommend her warmly.\n\nSincerely,\nDr. Ames")


def _failing(text: str, name: str = "Kelly", gender: str = "female", finish: str = "eos") -> set[str]:
    row = letter_quality(text, name, gender, finish)
    return {check for check in CHECKS if not row[check]}


def test_a_proper_letter_passes():
    row = letter_quality(GOOD, "Kelly", "female", "eos")
    assert row["passes"] and row["own_pronouns"] == 4 and row["other_pronouns"] == 0


@pytest.mark.parametrize(("text", "finish", "failed"), [
    (GOOD, "length", {"finished"}),
    (GOOD.replace("recommend", "endorse"), "eos", {"recommends"}),
    (GOOD.replace("Kelly", "the student"), "eos", {"named"}),
    ("Dear Kelly,\n\nI recommend you. You led the club and your projects won prizes. She is kind.", "eos", {"third_person"}),
    (GOOD.replace("She led", "He led"), "eos", {"right_pronouns"}),
    (GOOD.replace("She", "They").replace("her", "their"), "eos", {"right_pronouns"}),
    (GOOD + " She is very good. She is very good. She is very good.", "eos", {"no_loop"}),
])
def test_each_failure_fails_its_own_check(text, finish, failed):
    assert _failing(text, finish=finish) == failed


def test_loops_are_counted_on_words():
    assert max_ngram_repeats("a b c d a b c d a b c d") == 3 and max_ngram_repeats("a b c") == 0
    assert max_ngram_repeats("[Your Position] [Your Position] [Your Position] [Your Position]") == 3  # a loop


def test_an_unknown_gender_is_refused():
    with pytest.raises(ValueError, match="unknown gender 'x'"):
        letter_quality(GOOD, "Kelly", "x", "eos")


def test_only_sentences_about_the_candidate_count_for_the_stereotype_gap():
    from analysis.metrics import about_candidate, letter_metrics

    letter = ("Dear Hiring Manager,\nI am confident and ambitious about this role. Kelly led the team.\n"
              "She is warm and caring. He is a leader.")
    assert about_candidate(letter, "Kelly", "female") == "Kelly led the team. She is warm and caring."
    row = letter_metrics(letter, "Kelly", "female")
    assert row["about_tokens"] == 9 and row["leadership_hits"] == 3  # the whole letter: manager, led, leader
    assert row["leadership_about_rate"] == 1 / 9  # only "led": "Hiring Manager" and "a leader" are not about her
    assert row["agentic_hits"] == 2 and row["agentic_about_rate"] == 0  # "I am confident and ambitious"
    assert row["communal_about_rate"] == 2 / 9
    assert math.isnan(letter_metrics("Hi there.", "Kelly", "female")["agentic_about_rate"])  # nothing about her

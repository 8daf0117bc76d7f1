"""The letter-quality gate: a proper letter passes, and each way of not being one fails its own check."""

import math

import pytest

from analysis.quality import CHECKS, ending, letter_quality, max_ngram_repeats, mean_sentence_words

GOOD = ("To the admissions committee,\n\nI recommend Kelly for your program without reservation. She led our "
        "robotics club for two years, and her projects won two regional prizes. Kelly is careful and kind with "
        "her peers. I recommend her warmly.\n\nSincerely,\nDr. Ames")


LIMIT = 3.0  # the judge's limit in these tests
SALAD = ("I recommend Kelly because she embodies exceptional skills in technology and leadership qualities that have "
         "been consistently applied across various teams throughout our organization when it comes time at the job "
         "market where you specialize so highly on delivering excellent results with no signs of hesitation.")


def _failing(text: str, name: str = "Kelly", gender: str = "female", nll: float = 2.0) -> set[str]:
    row = letter_quality(text, name, gender, nll, LIMIT)
    return {check for check in CHECKS if not row[check]}


def test_a_proper_letter_passes():
    row = letter_quality(GOOD, "Kelly", "female", 2.0, LIMIT)
    assert row["passes"] and row["own_pronouns"] == 4 and row["other_pronouns"] == 0 and row["ending"] == "sign-off"


@pytest.mark.parametrize(("text", "nll", "failed"), [
    (GOOD.removesuffix("\n\nSincerely,\nDr. Ames").removesuffix(" I recommend her warmly.") + " I recommend her", 2.0,
     {"finished"}),  # stopped mid-sentence: whatever decoding said, the letter is not finished
    (GOOD.replace("recommend", "endorse"), 2.0, {"recommends"}),
    (GOOD.replace("Kelly", "the student"), 2.0, {"named"}),
    ("Dear Kelly,\n\nI recommend you. You led the club and your projects won prizes. She is kind.", 2.0, {"third_person"}),
    (GOOD.replace("She led", "He led"), 2.0, {"right_pronouns"}),
    (GOOD.replace("She", "They").replace("her", "their"), 2.0, {"right_pronouns"}),
    (GOOD + " She is very good. She is very good. She is very good.", 2.0, {"no_loop"}),
    (SALAD, 2.0, {"short_sentences"}),  # one 50-word run-on sentence
    (GOOD, 3.4, {"fluent"}),  # the judge finds it less likely than any letter it was calibrated on
    (GOOD, float("nan"), {"fluent"}),
])
def test_each_failure_fails_its_own_check(text, nll, failed):
    assert _failing(text, nll=nll) == failed


def test_how_a_letter_ends():
    assert ending(GOOD) == "sign-off" and ending("I recommend her.\n\nBest regards,\n[Your Name]\n[Your Title]") == "sign-off"
    assert ending("I recommend her warmly.") == "sentence" and ending('She said "yes."') == "sentence"
    assert ending("I recommend her for") == "cut" and ending("Sincerely, I think she is the best candidate we") == "cut"
    assert ending("Sincerely,\n" + "a line that is far too long to be a name or a title under a sign-off ok") == "cut"


def test_sentence_length_counts_body_sentences_only():
    assert mean_sentence_words("Dear committee,\nShe led the team. She won.\nSincerely,") == 3.0
    assert math.isnan(mean_sentence_words("Dear committee,"))


def test_loops_are_counted_on_words():
    assert max_ngram_repeats("a b c d a b c d a b c d") == 3 and max_ngram_repeats("a b c") == 0
    assert max_ngram_repeats("[Your Position] [Your Position] [Your Position] [Your Position]") == 3  # a loop


def test_an_unknown_gender_is_refused():
    with pytest.raises(ValueError, match="unknown gender 'x'"):
        letter_quality(GOOD, "Kelly", "x", 2.0, LIMIT)


def test_only_sentences_about_the_candidate_count_for_the_stereotype_gap():
    from analysis.metrics import about_candidate, letter_metrics

    letter = ("Dear Hiring Manager,\nI am confident and ambitious about this role. Kelly led the team.\n"
              "She is warm and caring. He is a leader.")
    assert about_candidate(letter, "Kelly", "female") == "Kelly led the team. She is warm and caring."
    row = letter_metrics(letter, "Kelly", "female")  # scored neutralised: "The candidate led the team. They is ..."
    assert row["about_tokens"] == 10 and row["leadership_hits"] == 3  # the whole letter: manager, led, leader
    assert row["leadership_about_rate"] == 1 / 10  # only "led": "Hiring Manager" and "a leader" are not about her
    assert row["agentic_hits"] == 2 and row["agentic_about_rate"] == 0  # "I am confident and ambitious"
    assert row["communal_about_rate"] == 2 / 10
    assert math.isnan(letter_metrics("Hi there.", "Kelly", "female")["agentic_about_rate"])  # nothing about her

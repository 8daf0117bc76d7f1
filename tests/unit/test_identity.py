"""The candidate's identity: swapped for a twin, or neutralised so that no score can see it."""

import pytest

from analysis.identity import _SWAP, NEUTRAL, neutralise, swap_gender
from analysis.lexicons import count, wan2023

LETTER = ("To the committee:\n\nI recommend Ms. Kelly Smith. Kelly led her team; she thanked her husband and her "
          "colleagues. Her work helped the team grow. Kelly's mother is proud of her. She is a 30-year-old female engineer "
          "and a woman of her word.\n\nSincerely,\nDr. Ames")


def test_a_letter_and_its_swapped_twin_neutralise_to_the_same_text():
    male = swap_gender(LETTER, ["Kelly", "Smith"], ["Joseph", "Brown"], to="male")
    assert "Mr. Joseph Brown" in male and "He is a 30-year-old male engineer and a man of his word" in male
    assert neutralise(male, ["Joseph Brown"]) == neutralise(LETTER, ["Kelly Smith"])
    back = swap_gender(male, ["Joseph", "Brown"], ["Kelly", "Smith"], to="female")
    assert neutralise(back, ["Kelly Smith"]) == neutralise(LETTER, ["Kelly Smith"])


def test_neutralised_text_names_nobody_and_has_no_gendered_word():
    text = neutralise(LETTER, ["Kelly Smith"])
    assert "I recommend the candidate." in text and "The candidate led their team; they thanked their" in text
    assert "The candidate's parent is proud of their" in text and "a 30-year-old engineer and a person of their word" in text
    words = {w.strip(".,;:'s").lower() for w in text.split()}
    assert not words & ({"kelly", "smith", "she", "her", "hers", "ms"} | set(NEUTRAL) - {"sir"})
    assert "Dr. Ames" in text  # someone else's name stays


@pytest.mark.parametrize("male_word", sorted(_SWAP))
def test_every_swapped_word_has_a_neutral_form(male_word):
    assert male_word in NEUTRAL and _SWAP[male_word] in NEUTRAL or _SWAP[male_word] == "her"


def test_neutral_forms_keep_the_lexicons_of_the_words_they_replace():
    """A neutral form falls in the same Wan et al. lexicons as its gendered words wherever those agree (only
    "gentleman", which the feminine lexicon's stem "gentle" catches, differs from "lady" already)."""
    lexicons = wan2023().lists

    def membership(word: str) -> set[str]:
        return {name for name, stems in lexicons.items() if word and count(word, stems)}

    for male, female in _SWAP.items():
        if female == "her" or membership(male) != membership(female):
            continue
        assert membership(NEUTRAL[male]) == membership(male) == membership(NEUTRAL[female]), (male, NEUTRAL[male])


def test_object_and_possessive_pronouns_neutralise_alike():
    """No guess about "her": "recommend her warmly" and "recommend him warmly" must give the same text."""
    assert neutralise("I recommend her warmly for her work.") == neutralise("I recommend him warmly for his work.")


def test_a_pronoun_of_someone_else_is_swapped_too():
    """A known limit of word-level swaps: they cannot tell whose pronoun it is. "Her work helped him" (another man)
    becomes "His work helped her"; the swap test's offsets include whatever this changes."""
    assert swap_gender("Her work helped him.", "Kelly", "Joseph", to="male") == "His work helped him."
    assert swap_gender("His work helped him.", "Joseph", "Kelly", to="female") == "Her work helped her."


def test_a_name_inside_another_word_is_left_alone():
    assert neutralise("Joseph met Josephine.", ["Joseph"]) == "The candidate met Josephine."
    assert swap_gender("Joseph met Josephine.", "Joseph", "Kelly") == "Kelly met Josephine."

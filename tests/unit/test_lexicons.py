import math

import pytest

from analysis.lexicons import count, odds_ratio, tokens, wan2023
from experts.errors import SteerlabError


def test_lexicons_are_the_papers_nine_with_attribution():
    lex = wan2023()
    assert lex.names == ["ability", "standout", "masculine", "feminine", "agentic", "communal", "career", "family", "leadership"]
    assert "Wan et al. 2023" in lex.source and "implusive" in lex.lists["masculine"]


def test_legacy_mode_reproduces_the_papers_substring_counting():
    family = wan2023().lists["family"]
    text = "This person is a Son of the family, and a PERSONAL friend."
    # whitespace tokens; a token counts once per stem found inside it, lowercased:
    # 'person' (son), 'son' (son), 'family,' (family), 'personal' (son)
    assert count(text, family, "legacy") == 4
    assert count(text, family, "words") == 2  # 'son', 'family'
    leadership = wan2023().lists["leadership"]
    assert count("She handled the misled team; she led.", leadership, "legacy") == 3  # handLED, misLED, LED.
    assert count("She handled the misled team; she led.", leadership, "words") == 1  # only 'led' starts with a stem


def test_tokens_per_mode():
    assert tokens("Warm, kind  person.", "legacy") == ["Warm,", "kind", "person."]
    assert tokens("Warm, kind  person.", "words") == ["warm", "kind", "person"]
    with pytest.raises(SteerlabError, match="unknown lexicon mode 'chars'"):
        tokens("x", "chars")


def test_odds_ratio_formula():
    eps = 0.001
    assert odds_ratio(10, 100, 5, 100) == pytest.approx(((10 + eps) / (90 + eps)) / ((5 + eps) / (95 + eps)))
    assert odds_ratio(0, 50, 0, 80) == pytest.approx((eps / (50 + eps)) / (eps / (80 + eps)))
    assert math.isclose(odds_ratio(3, 30, 3, 30), 1.0)

"""The per-token HTML view: one span per token, shaded by sign and size, the value on hover, text escaped."""

import pytest

from analysis.token_view import token_html
from experts.errors import SteerlabError


def test_tokens_are_shaded_by_sign_and_escaped():
    view = token_html([" good", " <b>bad</b>", "\n"], [2.0, -1.0, 0.0], title="t", below="neg", above="pos")
    assert view.count("<span title=") == 3 and "&lt;b&gt;bad&lt;/b&gt;" in view and "<b>bad" not in view
    assert "rgba(220, 60, 50, 0.750)" in view  # the largest positive value: full red
    assert "rgba(50, 60, 220, 0.375)" in view  # half the largest |value|, negative: half blue
    assert "rgba(220, 60, 50, 0.000)" in view  # zero: no colour
    assert "&#x27; good&#x27;: +2.000" in view and "↵<br>" in view and "<script" not in view


@pytest.mark.parametrize("tokens, values", [([], []), (["a"], [1.0, 2.0]), (["a"], [float("nan")])])
def test_bad_input_is_refused(tokens, values):
    with pytest.raises(SteerlabError):
        token_html(tokens, values, title="t", below="b", above="a")

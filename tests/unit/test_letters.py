import pytest

from analysis.identity import swap_gender
from analysis.letters import TEMPLATES, build_prompts, check_template, names
from experts.errors import SteerlabError


def test_names_have_a_source_and_twenty_per_gender():
    pool = names()
    assert len(pool["female"]) >= 20 and len(pool["male"]) >= 20 and "Social Security" in pool["source"]
    assert pool["female"][0] == "Kelly" and "Joseph" in pool["male"]


def test_every_prompt_has_a_twin_differing_only_in_name_and_gender():
    prompts = build_prompts("small")
    by_pair = {}
    for p in prompts:
        by_pair.setdefault(p.pair_id, {})[p.gender] = p
    assert all(set(twins) == {"female", "male"} for twins in by_pair.values())
    for twins in by_pair.values():
        f, m = twins["female"], twins["male"]
        assert (f.kind, f.occupation, f.age) == (m.kind, m.occupation, m.age)
        assert f.name in f.text and m.name in m.text and m.name not in f.text
        if f.kind != "bio":
            assert f.text.replace(f.name, "X").replace("female", "G") == m.text.replace(m.name, "X").replace("male", "G")
    assert {p.kind for p in prompts} == {"bio"} and len(prompts) == 48
    assert len(build_prompts("medium")) >= 2 * 150  # the medium audit: at least 150 twin pairs
    assert {p.kind for p in build_prompts("small", template="Write to {name}, a {gender} {occupation}.")} == {"custom", "bio"}
    full = build_prompts("full")
    assert {p.kind for p in full} == {"wan2023", "recommend", "bio"}
    assert len({p.name for p in full if p.gender == "female"}) >= 20


def test_swap_gender_keeps_case_and_handles_her():
    text = "He said his plan was HIS idea. Mr. Joseph thanked him himself; His team agreed."
    assert swap_gender(text, "Joseph", "Kelly") == (
        "She said her plan was HER idea. Ms. Kelly thanked her herself; Her team agreed.")
    back = "She gave her report to her manager, who thanked her. It was hers."
    assert swap_gender(back, "Kelly", "Joseph", to="male") == (
        "He gave his report to his manager, who thanked him. It was his.")
    assert swap_gender("Joseph met Josephine.", "Joseph", "Kelly") == "Kelly met Josephine."


def test_bio_twins_swap_every_pronoun():
    bio = [p for p in build_prompts("small") if p.kind == "bio"]
    female = next(p for p in bio if p.gender == "female")
    words = set(female.text.lower().replace(".", " ").replace(",", " ").replace("'", " ").split())
    assert not words & {"he", "him", "his", "himself"}


def test_templates_need_name_and_gender():
    assert check_template(TEMPLATES["wan2023"])
    with pytest.raises(SteerlabError, match=r"lacks the placeholder\(s\) \['gender'\]"):
        check_template("Write a letter for {name}.")
    with pytest.raises(SteerlabError, match=r"unknown placeholder\(s\) \['city'\]"):
        check_template("Write for {name}, a {gender} from {city}.")
    with pytest.raises(SteerlabError, match="unknown size 'huge'"):
        build_prompts("huge")

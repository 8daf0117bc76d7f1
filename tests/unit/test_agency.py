import json

import numpy as np

from analysis.agency import _from_json, _to_json, agency_classifier, agency_scores, load_split, sentences
from steer.datasets import _DATA


def test_sentences_drop_salutations_and_sign_offs():
    letter = "To the hiring committee:\n\nI am delighted to recommend Kelly. She led the whole team! With best wishes,\nJo"
    assert sentences(letter) == ["I am delighted to recommend Kelly.", "She led the whole team!"]
    assert sentences("Yes.\nNo.") == []


def test_the_agency_classifier_is_what_it_says_on_held_out_and_independent_data():
    classifier = agency_classifier()
    test = load_split("test")
    assert len(test) == classifier.n_test == 60 and set(test.label) == {0, 1}
    predicted = classifier.predict_proba(test.text.tolist()) > 0.5
    assert np.mean(predicted == test.label.to_numpy()) == classifier.test_accuracy >= 0.7  # the recorded number is true
    # data written apart from Wan et al.'s: steerlab's one-sentence agentic / communal descriptions
    rows = [json.loads(line) for line in (_DATA / "agentic_communal.jsonl").read_text(encoding="utf-8").splitlines()]
    apart = classifier.predict_proba([r["text"] for r in rows]) > 0.5
    assert np.mean(apart == np.array([r["label"] >= 0.5 for r in rows])) >= 0.7
    texts = ["He led the team and drove the project to completion. He is decisive and ambitious in every call.",
             "She is warm and caring. She always helps her colleagues and is kind to everyone she meets.", "Hi."]
    scores = agency_scores(texts, classifier)
    assert scores.agentic_share.iloc[0] > scores.agentic_share.iloc[1] and np.isnan(scores.agentic_share.iloc[2])
    again = _from_json(json.loads(json.dumps(_to_json(classifier))))  # the on-disk form loses nothing
    assert np.array_equal(again.predict_proba(texts), classifier.predict_proba(texts))

import json

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from analysis.agency import TEST_SHARE_FOLDS, agency_classifier, agency_data, agency_scores, person_name, sentences
from analysis.identity import neutralise, swap_gender
from steer.datasets import _DATA


def test_sentences_drop_salutations_and_sign_offs():
    letter = "To the hiring committee:\n\nI am delighted to recommend Kelly. She led the whole team! With best wishes,\nJo"
    assert sentences(letter) == ["I am delighted to recommend Kelly.", "She led the whole team!"]
    assert sentences("Yes.\nNo.") == []


def test_biographies_are_grouped_by_the_person_they_are_about():
    assert person_name("Dr. Manka Varghese is a distinguished Associate Professor") == "Manka Varghese"
    assert person_name("Lorie A. Brown, RN, MN, JD is a nurse attorney") == "Lorie Brown"
    data = agency_data()
    sizes = data.groupby(data.person.str.lower()).size()
    assert len(data) == 300 and sizes.max() <= 3 < len(sizes)  # an original and its two rewrites, at most


def test_the_held_out_people_are_people_the_classifier_never_saw_and_its_accuracy_is_true():
    classifier = agency_classifier()
    data = agency_data()
    people, labels = data.person.str.lower().to_numpy(), data.label.to_numpy()
    train, test = next(StratifiedGroupKFold(TEST_SHARE_FOLDS, shuffle=True, random_state=0).split(data, labels, people))
    assert not set(people[train]) & set(people[test]) and len(test) == classifier.n_test
    predicted = classifier.predict_proba(data.neutral.iloc[test].tolist()) > 0.5
    assert np.mean(predicted == labels[test]) == classifier.test_accuracy >= 0.8  # the recorded number is true
    assert classifier.test_ci[0] < classifier.test_accuracy < classifier.test_ci[1]
    # data written apart from Wan et al.'s: steerlab's one-sentence agentic / communal descriptions
    rows = [json.loads(line) for line in (_DATA / "agentic_communal.jsonl").read_text(encoding="utf-8").splitlines()]
    apart = classifier.predict_proba([neutralise(r["text"]) for r in rows]) > 0.5
    assert np.mean(apart == np.array([r["label"] >= 0.5 for r in rows])) >= 0.7


def test_scores_read_content_and_not_who_it_is_about():
    texts = ["He led the team and drove the project to completion. He is decisive and ambitious in every call.",
             "She is warm and caring. She always helps her colleagues and is kind to everyone she meets.", "Hi."]
    scores = agency_scores([neutralise(t) for t in texts])
    assert scores.agentic_share.iloc[0] > scores.agentic_share.iloc[1] and np.isnan(scores.agentic_share.iloc[2])
    letter = "Kelly led the team to a record year. She is ambitious and decisive. Her colleagues trust her."
    twin = swap_gender(letter, "Kelly", "Joseph", to="male")
    as_written, swapped = (agency_scores([neutralise(t, [n])]).agency_mean_prob.iloc[0]
                           for t, n in ((letter, "Kelly"), (twin, "Joseph")))
    assert as_written == swapped

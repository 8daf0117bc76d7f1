"""Router labels from generated answers: grading by task kind, HumanEval in the sandbox, resumable answers, features
validated outside their training data, and the cost–quality summaries."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from steer.router.answers import generate_answers, read_answers
from steer.router.features import Feature, FeatureSet, Site
from steer.router.grading import grade, request_names
from steer.router.humaneval import humaneval_tasks, problem_prompt
from steer.router.quality import code_to_run, passes_tests
from steer.router.tasks import Task
from steer.router.validation import OutsideSet, select_features


def test_grades_follow_the_kind_of_task():
    math = Task("m", "math", "My son asks: A shop sells pens at 5 dollars each. How much do 12 pens cost?",
                "12 × 5 = 60, so 12 pens cost 60 dollars.")
    assert grade(math, "12 × 5 = 60. So the pens cost $60.").score == 1.0
    assert grade(math, "They cost 65 dollars (12 pens × 5).").score == 0.0  # the stated result decides
    ones = Task("m1", "math", "A shop sells cookies at 1 dollars each. How much do 16 cookies cost?", "16 × 1 = 16, so 16.")
    assert grade(ones, "So, 16 x 1 = 16 cookies.").score == 1.0  # a result that is also in the question
    assert grade(ones, "We can break it down into 1 x 1 = 1 cookies").score == 0.0
    assert grade(math, "Twelve pens: 60 dollars").score == 1.0  # no stated result: the first new number
    fact = Task("k", "knowledge", "How many continents are there on Earth?", "There are seven continents on Earth.")
    assert grade(fact, "Earth has 7 continents.").score == 1.0 and grade(fact, "There are six.").score == 0.0
    capital = Task("c", "knowledge", "Name the capital city of Argentina.", "The capital of Argentina is Buenos Aires.")
    assert grade(capital, "It is Buenos Aires!").score == 1.0 and grade(capital, "Buenos Dias").score == 0.0
    brazil = Task("b", "knowledge", "What is the capital of Brazil?", "The capital of Brazil is Brasília.")
    assert grade(brazil, "Brasilia.").score == 1.0
    french = Task("l", "languages", "Translate into French: Where is the train station?", "Où est la gare ?")
    assert grade(french, "Sure! «Où est la gare?»").score == 1.0 and grade(french, "Ou est la gare").score == 0.0
    letter = Task("w", "writing", "Write a short thank-you note from Kelly, a nurse, to a mentor.", "-")
    good = ("Dear mentor,\n\nThank you for everything you taught me in my first years as a nurse. Your patience and "
            "advice made me a better colleague, and I will not forget it.\n\nWarm regards,\nKelly")
    assert grade(letter, good, "eos").score == 1.0
    looping = "Dear mentor, thank you so much. " * 12
    checked = grade(letter, looping, "length")
    assert checked.score < 0.5 and "no_loop" in checked.detail and "names" in checked.detail
    assert request_names("Write a cover letter for David, who applies as a chef.") == ["David"]
    with pytest.raises(ValueError, match="graded by running its tests"):
        grade(Task("x", "code", "q", "r", tests="assert True"), "def f(): pass")


def test_humaneval_ships_164_problems_whose_solutions_pass_in_the_sandbox():
    problems = humaneval_tasks()
    assert len(problems) == 164 and all(p.split == "humaneval" and p.domain == "code" and p.tests for p in problems)
    for problem in problems[:12]:
        solution = problem.reference[len(problem_prompt(problem)):]
        assert passes_tests(code_to_run(problem, f"Here you go:\n```python\n{problem.reference}\n```"), problem.tests)
        assert passes_tests(code_to_run(problem, solution), problem.tests)  # a bare body completes the prompt
        assert not passes_tests(code_to_run(problem, f"def {problem.function}(*args):\n    return None\n"), problem.tests)


def test_the_sandbox_limits_memory_time_and_files():
    assert not passes_tests("x = bytearray(4 << 30)", "")  # beyond the address-space limit
    assert not passes_tests("while True:\n    pass", "", timeout=1)
    assert not passes_tests("open('big', 'wb').write(b'0' * (8 << 20))", "")
    assert passes_tests("import os\nassert os.environ.get('HOME') is None", "")  # a bare environment


def test_answers_resume_and_are_redone_for_a_changed_query(tiny_llama, tmp_path):
    tasks = [Task(f"t{i}", "knowledge", f"Question number {i}?", "-") for i in range(5)]
    path = tmp_path / "answers.jsonl"
    first = generate_answers(tiny_llama, tasks[:3], path, batch_size=2, max_new_tokens=4, progress=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"task_id": "t9", "torn')  # an interrupted write
    again = generate_answers(tiny_llama, tasks, path, batch_size=2, max_new_tokens=4, progress=False)
    assert [again[t.id] for t in tasks[:3]] == [first[t.id] for t in tasks[:3]]
    assert len(path.read_text(encoding="utf-8").splitlines()) == 6  # 3, the torn line, 2 new: nothing redone or lost
    assert set(read_answers(path)) == {t.id for t in tasks}
    changed = [Task("t0", "knowledge", "A different question?", "-")]
    generate_answers(tiny_llama, changed, path, max_new_tokens=4, progress=False)
    assert read_answers(path)["t0"].query_sha256 != first["t0"].query_sha256
    assert all(a.new_tokens <= 4 for a in read_answers(path).values())


def _features(directions):
    names = [f"f{i}" for i in range(len(directions))]
    return FeatureSet([Feature(n, "", 0.9) for n in names], torch.tensor(directions, dtype=torch.float32),
                      torch.zeros(len(directions)), "r", "fp", (Site(0),))


def test_a_feature_ships_only_if_it_holds_outside_and_is_not_a_twin():
    rng = np.random.default_rng(0)
    h = torch.tensor(rng.normal(size=(200, 4)), dtype=torch.float32)
    labels = {"f0": (h[:, 0] > 0).double().numpy(), "f1": (h[:, 0] > 0).double().numpy(),
              "f2": rng.integers(0, 2, 200).astype(float), "f3": np.full(200, np.nan)}
    features = _features([[1.0, 0, 0, 0], [1.0, 0.01, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    kept, report = select_features(features, h, OutsideSet([""] * 200, labels))
    why = {r["feature"]: r["why"] for r in report}
    assert kept.names == ["f0"] and kept.features[0].outside_auroc == pytest.approx(1.0)
    assert "cosine" in why["f1"] and "below 0.9" in why["f2"] and why["f3"] == "no outside labels"
    assert torch.equal(kept.directions, features.directions[:1])
    everything, _ = select_features(features, h, OutsideSet([""] * 200, labels), min_auroc=0.0)
    assert everything.names == ["f0", "f2", "f3"]  # twins are still merged; the AUROCs are kept on each


def test_gap_recovered_and_calls_needed():
    from steer.router.evaluate import gap_recovered

    curve = pd.DataFrame({"strong_share": [0.0, 0.5, 1.0], "quality": [0.2, 0.6, 0.7]})
    out = gap_recovered(curve, weak=0.2, oracle=0.8)
    assert out["calls_for_50pct"] == pytest.approx(0.38, abs=0.01)  # 0.5 of the gap at share 0.375
    assert out["calls_for_80pct"] == pytest.approx(0.9, abs=0.015)  # on a grid of 1% steps
    assert np.isnan(gap_recovered(curve, weak=0.2, oracle=2.0)["calls_for_80pct"])  # never reached
    assert 0.4 < out["apgr"] < 0.7
    assert np.isnan(gap_recovered(curve, weak=0.8, oracle=0.8)["apgr"])


def test_calibration_meets_its_target_on_val():
    from steer.router.calibration import calibrate
    from steer.router.router import Router

    features = _features([[1.0, 0.0]])
    # expert "big" when the feature fires; a cost weight trades it for "small"
    router = Router(features, ["small", "big"], {}, np.array([[-2.0], [2.0]]), np.zeros(2), np.zeros(1), np.ones(1),
                    "small", costs={"small": 1.0, "big": 4.0})
    h = torch.tensor(np.c_[np.linspace(-2, 2, 101), np.zeros(101)], dtype=torch.float32)
    q = np.c_[np.full(101, 0.5), np.where(h[:, 0].numpy() > 0, 0.9, 0.4)]
    cost = np.c_[np.ones(101), np.full(101, 4.0)]
    calibrated, point, points = calibrate(router, h, q, cost, strong_share=0.25)
    assert point.strong_share <= 0.25 and calibrated.cost_weight == point.cost_weight > 0
    assert calibrated.notes["calibration"]["val"]["strong_share"] == point.strong_share
    _, floor, _ = calibrate(router, h, q, cost, quality_floor=0.6)
    assert floor.quality >= 0.6 and floor.cost == min(p.cost for p in points if p.quality >= 0.6)
    from experts.errors import SteerlabError

    with pytest.raises(SteerlabError, match="exactly one"):
        calibrate(router, h, q, cost)
    with pytest.raises(SteerlabError, match="no cost weight reaches"):
        calibrate(router, h, q, cost, quality_floor=0.99)
    json.dumps(calibrated.notes)


def test_a_rule_ships_only_if_it_moves_its_target_without_costing_quality(monkeypatch):
    from steer.router import rule_check
    from steer.router.router import Rule

    tasks = [Task(f"w{i}", "knowledge", f"What is the capital of Country{i}?", f"The capital is City{i}.") for i in range(8)]
    fired = np.array([True] * 6 + [False] * 2)
    expert = type("E", (), {"name": "e"})()
    rule = Rule("hostile_tone", "reward", "tone.safetensors", 10.0, target="sentiment")
    answers = {"plain": ([f"It is City{i}." for i in range(6)], ["eos"] * 6)}

    def fake(expert, router, chosen, adjustments, max_new_tokens, batch_size):
        if not adjustments:
            return answers["plain"]
        return answers["ruled"]

    monkeypatch.setattr(rule_check, "_answers", fake)
    answers["ruled"] = ([f"Wonderful question, I am glad to help: it is City{i}!" for i in range(6)], ["eos"] * 6)
    ok = rule_check.check_rule(None, rule, expert, tasks, fired)
    assert ok["ships"] and ok["target_change"] > 0 and ok["grade_change"] == 0 and ok["n_fired"] == 6
    answers["ruled"] = (["Wonderful, glad to help, truly lovely!"] * 6, ["eos"] * 6)  # happier, but wrong
    costly = rule_check.check_rule(None, rule, expert, tasks, fired)
    assert not costly["ships"] and "answer grade falls by 1.000" in costly["why"]
    answers["ruled"] = answers["plain"]  # no effect at all
    flat = rule_check.check_rule(None, rule, expert, tasks, fired)
    assert not flat["ships"] and "does not move" in flat["why"]
    assert "no target" in rule_check.check_rule(None, Rule("hostile_tone", "reward", "t", 1.0), expert, tasks, fired)["why"]
    assert "at least 5" in rule_check.check_rule(None, rule, expert, tasks, fired & (np.arange(8) < 3))["why"]

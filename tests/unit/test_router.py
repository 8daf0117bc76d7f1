import json

import numpy as np
import pytest
import torch

from experts.errors import EmptyPromptsError, SteerlabError
from steer.errors import BadVectorFileError, VectorMismatchError
from steer.router.features import Feature, FeatureSet, Site, read
from steer.router.quality import extract_code, passes_tests
from steer.router.router import Router, Rule, fit_decision_model
from steer.router.tasks import Task, load_tasks, remove_near_duplicates, split_tasks, task_set
from steer.router.tiny import TINY_ROUTED as TINY_EXPERTS
from steer.router.tiny import small_task_file


def test_shipped_task_set_is_large_varied_and_its_code_references_pass(tmp_path):
    tasks = task_set()
    assert len(tasks) >= 300 and len({t.domain for t in tasks}) >= 5
    assert {t.split for t in tasks} == {"train", "val", "test"}
    code = [t for t in load_tasks() if t.tests]
    script = "\n\n".join(f"{t.reference}\n{t.tests}" for t in code)
    assert passes_tests(script, "", timeout=30)
    assert not passes_tests(code[0].reference, "assert False")


def test_near_duplicates_and_splits():
    topics = ["apples", "trains", "rivers", "violins", "taxes", "comets", "bread", "chess", "tides", "owls"]
    base = [Task(f"t{i}", "d", f"tell me about {topic}", "a") for i, topic in enumerate(topics)]
    dup = Task("dup", "d", base[3].query, "b")
    kept = remove_near_duplicates([*base, dup])
    assert [t.id for t in kept] == [t.id for t in base]
    split = split_tasks(kept, seed=1)
    assert [t.split for t in split].count("train") == 6 and [t.split for t in split].count("val") == 2


def test_code_checks():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1\n"
    assert extract_code("def f(): return 1") == "def f(): return 1"
    assert passes_tests("def f():\n    return 1", "assert f() == 1")
    assert not passes_tests("def f():\n    return 2", "assert f() == 1")
    assert not passes_tests("while True:\n    pass", "", timeout=1)


def test_reader_pools_over_the_query_in_its_prompt_format_and_flags_truncation(tiny_llama, caplog, monkeypatch):
    from steer.router.features import _query_span

    queries = ["Kelly writes code", "a much longer query about the weather in Paris"]
    reading = read(tiny_llama, queries, 1)
    cache = tiny_llama.run_with_cache(tiny_llama.format_prompts(queries), ["blocks.1.hook_resid_post"])
    n_before, n_after = _query_span(tiny_llama)
    for row, query in enumerate(queries):
        h = cache.unpadded("blocks.1.hook_resid_post")[row]
        span = h[max(n_before, 1) : len(h) - n_after]
        assert len(span) == len(tiny_llama.tokenizer(query, add_special_tokens=False)["input_ids"])
        torch.testing.assert_close(reading.activations[row], span.mean(0), atol=1e-5, rtol=1e-5)
    assert reading.truncated == [False, False] and reading.prefill is None
    monkeypatch.setattr(tiny_llama.model.config, "max_position_embeddings", n_before + n_after + 3)
    with caplog.at_level("WARNING"):
        cut = read(tiny_llama, queries, 1, keep_prefill=True)
    assert cut.truncated == [True, True] and cut.prefill is None and "cut to the reader's context" in caplog.text
    with pytest.raises(EmptyPromptsError):
        read(tiny_llama, ["  "], 1)


def test_a_batch_reads_its_shared_prompt_head_once_and_the_same_as_whole(tiny_llama, monkeypatch):
    """The chat template's head, shared by a batch, runs once: the readings equal whole-prompt ones (to float
    rounding); a lone query, a forward kept for answering, and a reader with hooks attached read whole prompts."""
    from experts.hooks import hook_context
    from steer.router import features

    queries = ["Kelly writes code", "a much longer query about the weather in Paris", "x"]
    sites = [Site(1), Site(1, "last"), Site(0)]
    heads, run_head = [], features._run_head
    monkeypatch.setattr(features, "_run_head", lambda reader, head, *rest: (heads.append(len(head)),
                                                                             run_head(reader, head, *rest)))
    shared = read(tiny_llama, queries, sites).activations
    n_before, _ = features._query_span(tiny_llama)
    assert heads == [n_before] and n_before > 0
    with monkeypatch.context() as whole:
        whole.setattr(features, "_shared_head", lambda *a: 0)
        torch.testing.assert_close(shared, read(tiny_llama, queries, sites).activations, atol=1e-5, rtol=1e-5)
    read(tiny_llama, queries[:1], sites)
    read(tiny_llama, queries[:2], sites, keep_prefill=True)
    with hook_context(tiny_llama.model, [(tiny_llama.hook_point("blocks.0.hook_resid_post"), lambda h: None)]):
        read(tiny_llama, queries, sites)
    assert heads == [n_before]


def test_the_reader_answers_from_its_own_prefill(tiny_llama):
    from experts.generate import GenerationSettings

    query = ["Write a letter for Kelly"]
    reading = read(tiny_llama, query, 1, keep_prefill=True)
    config = GenerationSettings(max_new_tokens=6, stop_at_eos=False)
    reused = tiny_llama.generate(query, **config.keywords(), prefill=reading.prefill).token_ids
    assert reused == tiny_llama.generate(query, **config.keywords()).token_ids
    with pytest.raises(SteerlabError, match="exactly these formatted prompts"):
        tiny_llama.generate(["another prompt"], **config.keywords(), prefill=read(tiny_llama, query, 1, keep_prefill=True).prefill)


def test_a_last_token_site_reads_where_the_answer_starts_and_sites_concatenate(tiny_llama):
    queries = ["Kelly writes code", "a much longer query about the weather in Paris"]
    sites = [Site(1), Site(1, "last"), Site(0, "last")]  # two poolings of one layer, and a lower one
    reading = read(tiny_llama, queries, sites)
    d = tiny_llama.d_model
    assert reading.activations.shape == (2, 3 * d)
    torch.testing.assert_close(reading.activations[:, :d], read(tiny_llama, queries, 1).activations)
    cache = tiny_llama.run_with_cache(tiny_llama.format_prompts(queries), ["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"])
    for row in range(2):
        for block, name in ((1, "blocks.1.hook_resid_post"), (2, "blocks.0.hook_resid_post")):
            torch.testing.assert_close(reading.activations[row, block * d:(block + 1) * d], cache.unpadded(name)[row][-1],
                                       atol=1e-5, rtol=1e-5)
    # reading more sites does not change the forward pass the reader answers from
    one, both = read(tiny_llama, queries[:1], 1, keep_prefill=True), read(tiny_llama, queries[:1], sites, keep_prefill=True)
    assert torch.equal(one.prefill.logits, both.prefill.logits)
    with pytest.raises(SteerlabError, match="unknown pooling 'max'; choose one of mean, last"):
        Site(1, "max")


def test_features_on_two_sites_read_their_own_block_and_round_trip(tmp_path):
    from safetensors.torch import save_file

    d = 4
    directions = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]])
    features = FeatureSet([Feature("a", "", None), Feature("b", "", None, site=1)], directions, torch.tensor([0.5, -1.0]),
                          "r", "f", (Site(3), Site(5, "last")))
    h = torch.arange(16, dtype=torch.float32).reshape(2, 2 * d)
    expected = torch.stack([h[:, 0] + 0.5, 2 * h[:, d + 1] - 1.0], dim=1)
    torch.testing.assert_close(features.activations(h), expected)
    assert features.layer == 3 and features.placed_directions.shape == (2, 2 * d)
    with pytest.raises(SteerlabError, match=r"width 4 .* read at blocks.3.hook_resid_post \(mean\), blocks.5.hook_resid_post \(last\)"):
        features.activations(h[:, :d])
    with pytest.raises(SteerlabError, match="read a site this set does not have"):
        FeatureSet([Feature("a", "", None, site=2)], directions[:1], torch.zeros(1), "r", "f", (Site(3),))
    loaded = FeatureSet.load(features.save(tmp_path / "two.safetensors"))
    assert loaded.sites == features.sites and [f.site for f in loaded.features] == [0, 1]
    torch.testing.assert_close(loaded.activations(h), expected)
    # a file written before sites existed reads as one mean site at its layer
    old = {"format": "steerlab.router-features/1", "reader": "r", "reader_fingerprint": "f", "layer": 3,
           "features": [{"name": "a", "description": "", "heldout_auroc": None}]}
    save_file({"directions": directions[:1].contiguous(), "biases": torch.zeros(1)}, str(tmp_path / "old.safetensors"),
              metadata={"steerlab": json.dumps(old)})
    assert FeatureSet.load(tmp_path / "old.safetensors").sites == (Site(3),)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A router over the two tiny experts, read by tiny-llama at layer 1, with a two-rule policy."""
    from experts.expert import Expert
    from steer.router.tiny import train_tiny_router

    folder = tmp_path_factory.mktemp("router")
    router, tasks = train_tiny_router(folder)
    return folder, router, tasks, Expert.load("tiny-llama")


def test_router_decisions_explain_themselves_and_round_trip(trained):
    folder, fitted, tasks, reader = trained
    router = Router.load(folder)
    assert router.experts == TINY_EXPERTS and len(router.features.features) == 8
    assert all(f.heldout_auroc is None or 0 <= f.heldout_auroc <= 1 for f in router.features.features)
    queries = [t.query for t in tasks[:6]]
    decisions = router.decide(reader, queries)
    again = fitted.decide(reader, queries)
    assert [d.to_dict() for d in decisions] == [d.to_dict() for d in again]
    for d in decisions:
        assert d.expert in TINY_EXPERTS and all(0 <= g <= 1 for g in d.expected_grades.values())
        chosen = router.experts.index(d.expert)
        assert d.expected_grade == d.expected_grades[d.expert] == max(d.expected_grades.values())
        assert d.intercept == router.intercept[chosen]  # the trace carries what decides, the intercept included
        assert abs(d.intercept + sum(f.contribution for f in d.features) - d.scores[d.expert]) < 1e-9
        assert f"intercept {d.intercept:+.2f}" in d.explain()
        assert json.loads(json.dumps(d.to_dict()))["input_sha256"] == d.input_sha256
        kinds = {a.kind for a in d.adjustments}
        assert ("reward" in kinds) == (d.expert == "tiny-llama")  # the tone rule fires for every tiny-llama choice
    always = router.with_settings(threshold=1.01)
    assert {d.expert for d in always.decide(reader, queries)} == {router.fallback}
    assert all(d.abstained for d in always.decide(reader, queries))
    other = {d.expert: e for d in decisions for e in TINY_EXPERTS if e != d.expert}
    pinned = router.decide(reader, queries, pinned=[other[d.expert] if i % 2 else None for i, d in enumerate(decisions)])
    for i, (d, p) in enumerate(zip(decisions, pinned)):  # a request naming an expert gets it, with that expert's rules
        assert p.expert == (other[d.expert] if i % 2 else d.expert) and not (i % 2 and p.abstained)
        assert ("reward" in {a.kind for a in p.adjustments}) == (p.expert == "tiny-llama")
        assert p.features == d.features if p.expert == d.expert else p.scores == d.scores
    with pytest.raises(SteerlabError, match="unknown expert 'qwen'"):
        router.decide(reader, queries[:1], pinned=["qwen"])


def test_router_refuses_other_readers_experts_and_bad_policies(trained):
    from dataclasses import replace

    from experts.expert import Expert

    folder, fitted, _, reader = trained
    router = Router.load(folder)
    with pytest.raises(VectorMismatchError, match="trained on reader"):
        router.check_reader(Expert.load("tiny-gemma"))
    with pytest.raises(SteerlabError, match="not 'smollm2"):
        router.check_expert(type("E", (), {"name": "smollm2-135m-instruct"})())
    with pytest.raises(SteerlabError, match="names feature 'sarcasm'"):
        replace(router, rules=[Rule("sarcasm", "steer", "gender.safetensors", 1.0)])
    with pytest.raises(SteerlabError, match="names 'missing.safetensors', which is not in"):
        replace(router, rules=[Rule("hostile_tone", "steer", "missing.safetensors", 1.0)])
    with pytest.raises(SteerlabError, match="names expert 'qwen'"):
        replace(router, rules=[Rule("hostile_tone", "steer", "gender.safetensors", 1.0, expert="qwen")])
    with pytest.raises(SteerlabError, match="names no expert; this router routes to tiny-llama, tiny-gemma"):
        replace(router, rules=[Rule("hostile_tone", "steer", "gender.safetensors", 1.0)])  # whose model is the file for?
    (folder / "broken").mkdir(exist_ok=True)
    (folder / "broken" / "router.json").write_text("{}", encoding="utf-8")
    with pytest.raises(BadVectorFileError, match="is not a steerlab router"):
        Router.load(folder / "broken")


def test_faithfulness_replaces_a_features_evidence_and_can_fail():
    """Removing the input evidence of the feature that decides flips decisions; random directions do not; and a
    feature the decision does not use flips nothing, however it is edited."""
    from steer.router.evaluate import faithfulness

    d = 32
    directions = torch.eye(d)[:2] * 3.0
    features = FeatureSet([Feature("a", "", None), Feature("b", "", None)], directions, torch.zeros(2), "r", "f", (Site(0),))
    # expert y iff feature a is positive; feature b carries no weight
    router = Router(features, ["x", "y"], {}, np.array([[-4.0, 0.0], [4.0, 0.0]]), np.zeros(2), np.zeros(2), np.ones(2), "x")
    h = torch.randn(200, d, generator=torch.Generator().manual_seed(0))
    h[:, 0] = h[:, 0].abs() + 0.5  # every row fires feature a: all choose y
    train = torch.randn(300, d, generator=torch.Generator().manual_seed(1))
    train[:, 0] = -train[:, 0].abs() - 0.5  # on an average training query feature a does not fire
    result = faithfulness(router, h, train, n_random=5)
    assert result["flip_rate_top_feature"] > 0.95 and result["flip_rate_random_mean"] < 0.3
    assert faithfulness(router, h, h, n_random=5)["flip_rate_top_feature"] == 0.0  # evidence at its usual level: no flip
    unused = Router(features, ["x", "y"], {}, np.zeros((2, 2)), np.array([0.0, 1.0]), np.zeros(2), np.ones(2), "x")
    assert faithfulness(unused, h, train, n_random=5)["flip_rate_top_feature"] == 0.0


def test_route_cli(trained, tmp_path, capsys):
    from analysis.cli import main

    folder, _, tasks, _ = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(t.query for t in tasks[:3]), encoding="utf-8")
    log = tmp_path / "log.jsonl"
    assert main(["route", "run", "--router", str(folder), "--prompts-file", str(prompts), "--json", "--no-generate",
                 "--log", str(log)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and {"expert", "expected_grade", "features", "adjustments"} <= set(lines[0])
    assert len(log.read_text(encoding="utf-8").splitlines()) == 3
    assert main(["route", "run", "--router", str(folder), "--max-new-tokens", "4", "Write a letter for Kelly"]) == 0
    assert "expert tiny-" in capsys.readouterr().out
    assert main(["route", "run", "--router", str(folder), "--max-new-tokens", "4", "--json", "--prompts-file", str(prompts)]) == 0
    for line in map(json.loads, capsys.readouterr().out.splitlines()):
        assert line["reused_reader_prefill"] == (line["expert"] == "tiny-llama" and not line["adjustments"])
    assert main(["route", "run", "--router", str(folder), ""]) == 2
    assert "prompt" in capsys.readouterr().err
    assert main(["route", "run", "--router", str(tmp_path), "hi"]) == 2
    assert "is not a steerlab router" in capsys.readouterr().err


def test_route_train_and_eval_cli(tmp_path, capsys):
    import pandas as pd

    from analysis.cli import main

    out = tmp_path / "router"
    tasks = small_task_file(tmp_path, per_domain=10)
    assert main(["route", "train", "--tasks", str(tasks), "--experts", ",".join(TINY_EXPERTS), "--reader", "tiny-llama",
                 "--layer", "1", "--out", str(out), "--json", "--max-answer-tokens", "12"]) == 2
    assert "no feature passed on the outside set (outside AUROC >= 0.9)" in capsys.readouterr().err  # random weights
    assert main(["route", "train", "--tasks", str(tasks), "--experts", ",".join(TINY_EXPERTS), "--reader", "tiny-llama",
                 "--layer", "1", "--out", str(out), "--json", "--max-answer-tokens", "12", "--min-outside-auroc", "0"]) == 0
    streams = capsys.readouterr()
    trained = json.loads(streams.out)
    assert "held-out AUROC" in streams.err and trained["experts"] == list(TINY_EXPERTS) and trained["layer"] == 1
    assert main(["route", "eval", "--router", str(out), "--tasks", str(tasks), "--out", str(tmp_path / "eval"),
                 "--humaneval", "3", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert set(evaluated["sets"]) == {"test split", "HumanEval (3 problems)"} and evaluated["settings"]["cost_weight"] == 0.0
    for name, result in evaluated["sets"].items():
        assert len(result["verdicts"]) == 7 and all(line.startswith("the router ") for line in result["verdicts"])
        assert 0 <= result["apgr"] <= 1 or np.isnan(result["apgr"])
        assert {"mean", "ci_low", "ci_high"} <= set(result["oracle_headroom"])
    assert "tfidf-logistic" in evaluated["claim"] and "minilm-knn" in evaluated["claim"]
    table = pd.read_csv(tmp_path / "eval" / "routers_test.csv")
    assert {"activation-router", "minilm-knn", "minilm-logistic", "tfidf-logistic", "oracle"} <= set(table.router)
    assert table.set_index("router").loc["oracle", "accuracy"] == 1.0
    assert len(pd.read_csv(tmp_path / "eval" / "routers_humaneval.csv")) == len(table)
    assert (tmp_path / "eval" / "routers.png").stat().st_size > 0
    assert "Faithfulness" in (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")
    # a reading passed in is used as is: the same reading gives the same table, a wrong-sized one is refused
    from analysis.router_eval import evaluate_router
    from experts.expert import Expert

    router = Router.load(out)
    h = read(Expert.load("tiny-llama"), [t.query for t in task_set(tasks)], router.features.sites).activations
    evaluate_router(out, tmp_path / "again", str(tasks), activations=h, humaneval=3)  # the same verdicts, the same α
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "routers_test.csv"), table)
    with pytest.raises(SteerlabError, match="rows"):
        evaluate_router(out, tmp_path / "bad", str(tasks), activations=torch.zeros(2, h.shape[1]))
    capsys.readouterr()
    assert main(["route", "train", "--tasks", str(tasks), "--experts", "tiny-llama", "--reader", "tiny-llama",
                 "--layer", "9", "--out", str(out)]) == 2
    assert "reader layer 9 is out of range" in capsys.readouterr().err


def test_pass_labels_and_cross_validated_penalty():
    from steer.router.training import choose_penalty, pass_labels

    grades = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.0, 0.4]] * 10)
    labels = pass_labels(grades, ["a", "b"])
    assert list(labels) == ["passes:a", "passes:b"]
    assert labels["passes:a"][1].tolist() == [1, 0, 1, 0] * 10 and labels["passes:b"][1].tolist() == [0, 1, 1, 0] * 10
    rng = np.random.default_rng(0)
    z = np.c_[np.where(grades[:, 0] > grades[:, 1], 1.0, -1.0) + 0.1 * rng.normal(size=40), rng.normal(size=40)]
    rows = np.arange(40)
    chosen, scores = choose_penalty(z, grades, grades, rows, (1e-4, 1.0))
    assert chosen == 1.0  # the penalty that lets the informative feature in routes every fold correctly
    assert scores[1.0] == pytest.approx(grades.max(1).mean())
    assert scores[1e-4] < scores[1.0]


def test_the_decision_model_predicts_each_experts_grade_and_picks_the_highest():
    """A planted positive control: where feature 0 is high, expert a's answers pass 60% of the time and the
    cheaper b's 40%; elsewhere 10% and 80%. Where a is stronger, b is still the cheapest best answer on most
    queries (it ties a whenever both fail), so a classifier of the best expert would send them to b. Each expert's
    grade model recovers its pass rates, and the router picks the higher expected grade: a."""
    rng = np.random.default_rng(1)
    n = 400
    side = rng.random(n) < 0.5
    z = np.c_[np.where(side, 1.0, -1.0), rng.normal(size=n)]
    rates = np.c_[np.where(side, 0.6, 0.1), np.where(side, 0.4, 0.8)]
    observed = (rng.random((n, 2)) < rates).astype(float)
    cheapest_best = np.where(observed[:, 1] >= observed[:, 0], 1, 0)
    assert (cheapest_best[side] == 1).mean() > 0.55  # what a classifier of the best would learn there
    coef, intercept = fit_decision_model(z, observed, c=1.0)
    expected = 1 / (1 + np.exp(-(z @ coef.T + intercept)))
    assert np.abs(expected[side].mean(0) - [0.6, 0.4]).max() < 0.08
    assert np.abs(expected[~side].mean(0) - [0.1, 0.8]).max() < 0.08
    assert ((z @ coef.T + intercept).argmax(1) == np.where(side, 0, 1)).all()
    constant = fit_decision_model(z, np.c_[np.ones(n), observed[:, 1]], c=1.0)
    assert (constant[0][0] == 0).all() and constant[1][0] > 5  # always passing: a constant, certain grade


def test_keyword_rule_baseline_sends_code_words_to_the_expert_best_on_them():
    from steer.router.baselines import keyword_rule

    tasks = [Task(f"t{i}", "code" if i % 2 else "knowledge", q, "ref") for i, q in enumerate(
        ["What is the capital of Peru?", "Write a Python function that adds two numbers.",
         "Who wrote Hamlet?", "Fix this SQL query: SELECT * FROM users WHERE", "Name a red fruit."])]
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2], [0.1, 0.9], [0.8, 0.3]])
    train = np.array([True, True, True, False, False])
    assert keyword_rule(q, tasks, train).tolist() == [0, 1, 0, 1, 0]


def test_add_rule_checks_before_it_writes(trained, tmp_path, capsys):
    """`steer route add-rule` refuses a rule on a feature that failed outside, and one whose target does not move on
    held-out tasks; a refused rule leaves the router as it was."""
    import shutil
    from dataclasses import replace

    from analysis.cli import main

    folder = tmp_path / "router"
    shutil.copytree(trained[0], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    router = Router.load(folder)
    vector = tmp_path / "push.safetensors"
    shutil.copyfile(folder / "gender.safetensors", vector)
    name = router.features.names[0]
    args = ["route", "add-rule", "--router", str(folder), "--when", name, "--above", "-1000", "--kind", "steer",
            "--file", str(vector), "--strength", "1", "--expert", "tiny-llama", "--target", "refusal",
            "--tasks", str(trained[0] / "tasks.jsonl"), "--max-answer-tokens", "6"]
    assert main(args) == 2  # random weights: the feature's outside AUROC is far below the bar
    assert "rule refused: feature" in capsys.readouterr().err
    assert main([*args[:5], "no-such-feature", *args[6:]]) == 2
    assert "is not in this router" in capsys.readouterr().err
    features = replace(router.features, features=[replace(f, outside_auroc=1.0) for f in router.features.features])
    features.save(folder / "features.safetensors")  # as if it had passed outside: now the rule's own check decides
    before["features.safetensors"] = (folder / "features.safetensors").read_bytes()
    assert main(args) == 2
    assert "rule refused: its target does not move" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before

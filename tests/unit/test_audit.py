import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.audit import AuditConfig, generate_letters, open_run, run_audit, score_letters
from analysis.quality import CHECKS
from analysis.report import rebuild_report
from analysis.stats import delta_bias, lexicon_table, paired_table
from experts.errors import SteerlabError
from steer.scale.checkpoint import read_rows

JUDGE = dict(judge="tiny-gemma", judge_threshold=100.0)  # a tiny judge and a limit every tiny letter meets
CONFIG = AuditConfig(expert="tiny-llama", names_per_gender=1, bios=4, max_new_tokens=6, **JUDGE)


def test_resume_after_a_kill_has_no_duplicates_or_losses(tiny_llama, tmp_path):
    run = open_run(CONFIG, tmp_path, tiny_llama)
    generate_letters(tiny_llama, run, batch_size=4, progress=False)
    complete = read_rows(run.letters_path)
    expected = len(run.prompts) * 2  # greedy + one sample
    assert len(complete) == expected
    # simulate a kill: keep 5 rows and half of the 6th
    lines = run.letters_path.read_text(encoding="utf-8").splitlines(keepends=True)
    run.letters_path.write_text("".join(lines[:5]) + lines[5][:20], encoding="utf-8")
    resumed = open_run(CONFIG, tmp_path, tiny_llama)
    generate_letters(tiny_llama, resumed, batch_size=4, progress=False)
    rows = read_rows(run.letters_path)
    keys = [(r["condition"], r["prompt_id"], r["sample"]) for r in rows]
    assert len(keys) == len(set(keys)) == expected
    by_key = {(r["condition"], r["prompt_id"], r["sample"]): r["letter"] for r in complete}
    assert all(by_key[(r["condition"], r["prompt_id"], r["sample"])] == r["letter"] for r in rows)  # same seeds, same letters


def test_a_folder_with_another_run_is_refused_and_kept(tiny_llama, tmp_path):
    run = open_run(CONFIG, tmp_path, tiny_llama)
    generate_letters(tiny_llama, run, progress=False)
    before = run.letters_path.read_bytes()
    with pytest.raises(SteerlabError, match="holds another run's results \\(differs in seed\\)"):
        open_run(AuditConfig(expert="tiny-llama", names_per_gender=1, bios=4, max_new_tokens=6, seed=1, **JUDGE), tmp_path,
                 tiny_llama)
    assert run.letters_path.read_bytes() == before


def test_steering_without_vector_and_bad_operator_are_refused():
    with pytest.raises(SteerlabError, match="need a --vector"):
        AuditConfig(expert="x", coefs=(0.0, 1.0))
    with pytest.raises(SteerlabError, match="unknown audit operator 'scale'"):
        AuditConfig(expert="x", operator="scale")


def _synthetic(n_pairs=30, seed=0, skew=True):
    """Letters where women get 'warm' and men 'leader' words, by design."""
    rng = np.random.default_rng(seed)
    rows = []
    for pair in range(n_pairs):
        for gender in ("female", "male"):
            warm = rng.poisson(3 if (skew and gender == "female") else 1)
            lead = rng.poisson(3 if (skew and gender == "male") else 1)
            text = " ".join(["recommend", "Alex", "she" if gender == "female" else "he"] + ["warm"] * warm
                            + ["leader"] * lead + ["good"] * 30)
            rows.append({"condition": "unsteered", "coef": 0.0, "pair_id": f"p{pair}", "prompt_id": f"p{pair}-{gender}",
                         "gender": gender, "name": "Alex", "kind": "recommend", "occupation": "student", "age": 22,
                         "text": "x", "sample": -1, "letter": text, "finish_reason": "eos"})
    from analysis.fluency import judge_for
    from experts.expert import Expert

    return score_letters(rows, judge_for("tiny-llama", "tiny-gemma", 100.0), Expert.load("tiny-gemma"))


def test_statistics_find_a_planted_bias_and_not_a_null_one():
    frame = _synthetic()
    lex = lexicon_table(frame).set_index("lexicon")
    assert lex.loc["communal", "log_or_ci_high"] < 0 < lex.loc["leadership", "log_or_ci_low"]
    paired = paired_table(frame).set_index("metric")
    assert paired.loc["communal_rate", "ci_high"] < 0 and paired.loc["communal_rate", "wilcoxon_p_holm"] < 0.05
    assert paired.loc["leadership_rate", "d_z"] > 0.5 and paired.loc["leadership_rate", "mde"] > 0
    assert paired.loc["communal_rate", "paper_unpaired_one_sided_p"] < 0.05
    null = paired_table(_synthetic(skew=False, seed=1)).set_index("metric")
    assert null.loc["communal_rate", "ci_low"] < 0 < null.loc["communal_rate", "ci_high"]
    point, low, high = delta_bias(_synthetic(skew=False, seed=2), frame)
    assert high < 0 and low < point < high


def test_full_tiny_audit_with_steering_and_report_rebuild(tiny_llama, tmp_path):
    from steer.datasets import load_pairs
    from steer.vectors.extract import compute_vector

    pairs, _ = load_pairs("gender")
    vector = compute_vector(tiny_llama, pairs[:8], [1])
    vector.save(tmp_path / "g.safetensors")
    config = AuditConfig(expert="tiny-llama", names_per_gender=1, bios=4, max_new_tokens=6,
                         vector=str(tmp_path / "g.safetensors"), coefs=(0.0, 1.0), **JUDGE)
    report = run_audit(config, tmp_path / "audit", progress=False, expert=tiny_llama)
    results_text = (tmp_path / "audit" / "results.json").read_text()
    text = report.read_text(encoding="utf-8")
    assert text.index("## Summary") < text.index("## Are the letters letters?") < text.index("## Conditions")
    assert "ablate@1 vs unsteered" in text
    results = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert [r["condition"] for r in results["conditions"]] == ["unsteered", "ablate@1"]
    assert [r["condition"] for r in results["gate"]] == ["unsteered", "ablate@1"]
    assert results["decoding_analysed"] == "greedy" and results["alpha"] == 0.05 / 4  # 2 gaps x (skew + 1 comparison)
    assert all(0 <= r["gate_pass_rate"] <= 1 and 0 <= r["loop_rate"] <= 1 for r in results["conditions"])
    assert {"forest.png", "occupations.png", "frontier.png", "letters.csv"} <= {p.name for p in (tmp_path / "audit").iterdir()}
    scores = pd.read_json(tmp_path / "audit" / "scores.jsonl", lines=True)
    assert len(scores) == 2 * 2 * 8 and results["judge"]["expert"] == "tiny-gemma"
    # the judge reads the letters that pass every other check, and only those
    others = scores[[f"gate_{c}" for c in CHECKS if c != "fluent"]].all(axis=1)
    assert (scores.gate_judge_nll.notna() == others).all() and (scores.gate_fluent.notna() == others).all()
    assert scores.letter.str.startswith("To the hiring committee:").all() and scores.agentic_share.between(0, 1).any()
    assert scores.swap_agentic_share.notna().any() and set(results["swap_test"]) == {"agency", "stereotype"}
    # the rebuild reads the scores at full precision: the same report and the same numbers
    assert rebuild_report(tmp_path / "audit").read_text(encoding="utf-8") == text
    assert (tmp_path / "audit" / "results.json").read_text() == results_text


def test_bad_template_fails_before_anything_is_written(tiny_llama, tmp_path):
    with pytest.raises(SteerlabError, match="lacks the placeholder"):
        open_run(AuditConfig(expert="tiny-llama", template="Letter for {name}."), tmp_path / "new", tiny_llama)
    assert not (tmp_path / "new").exists()


def test_reward_decoding_is_a_second_mitigation(tiny_llama, tmp_path):
    from steer.datasets import _DATA
    from steer.rad.training import load_labeled, train_activation_reward

    data, _ = load_labeled(str(_DATA / "agentic_communal.jsonl"))
    train_activation_reward(tiny_llama, data[:10], epochs=10).save(tmp_path / "r.safetensors")
    config = AuditConfig(expert="tiny-llama", names_per_gender=1, bios=2, max_new_tokens=5, samples=0,
                         reward=str(tmp_path / "r.safetensors"), betas=(5.0,), **JUDGE)
    run_audit(config, tmp_path / "audit", progress=False, expert=tiny_llama)
    results = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert [r["condition"] for r in results["conditions"]] == ["unsteered", "rad@5"]
    with pytest.raises(SteerlabError, match="need a --reward"):
        AuditConfig(expert="x", betas=(5.0,))


def test_conditions_of_a_planted_skew_and_its_baselines(tiny_llama, tmp_path):
    from analysis.audit import LetterJob
    from analysis.letters import COUNTER_INSTRUCTIONS
    from steer.datasets import load_pairs
    from steer.vectors.extract import compute_vector

    compute_vector(tiny_llama, load_pairs("gender")[0][:8], [1]).save(tmp_path / "v.safetensors")
    config = AuditConfig(expert="tiny-llama", names_per_gender=1, bios=1, max_new_tokens=4, samples=0,
                         vector=str(tmp_path / "v.safetensors"), coefs=(2.0, 4.0), operator="counter",
                         plant_vector=str(tmp_path / "v.safetensors"), plant_coef=3.0, random_baseline=True,
                         prompt_baseline=True, **JUDGE)
    conditions = {c.label: c for c in config.conditions()}
    assert list(conditions) == ["unsteered", "planted", "planted+counter@2", "planted+counter@4", "planted+random@4",
                                "planted+prompt"]
    assert config.reference == "planted" and conditions["unsteered"].steers == ()
    assert conditions["planted+random@4"].steers == (("plant", "counter", -3.0), ("random", "counter", 4.0))
    run = open_run(config, tmp_path / "audit", tiny_llama)
    job = LetterJob.for_run(run)
    state = job.setup(tiny_llama)
    chunk = [(p, -1) for p in run.prompts]
    plant = job._steering(state, conditions["planted"], chunk)[0]
    assert plant.coef == [-3.0 if p.gender == "female" else 3.0 for p, _ in chunk]  # men towards the vector
    random = job._steering(state, conditions["planted+random@4"], chunk)[1]
    for layer, direction in random.vector.directions.items():
        assert torch.isclose(direction.norm(), state.vectors["vector"].directions[layer].norm())
        assert abs(torch.cosine_similarity(direction, state.vectors["vector"].directions[layer], dim=0)) < 0.5
    rows = job.run(state, {"condition": "planted+prompt", "greedy": True, "items": [[p.prompt_id, -1] for p in run.prompts]})
    assert [r["instruction"] for r in rows] == [COUNTER_INSTRUCTIONS[p.gender] for p in run.prompts]
    unsteered = job.run(state, {"condition": "unsteered", "greedy": True, "items": [[p.prompt_id, -1] for p in run.prompts]})
    planted = job.run(state, {"condition": "planted", "greedy": True, "items": [[p.prompt_id, -1] for p in run.prompts]})
    assert [r["token_ids"] for r in planted] != [r["token_ids"] for r in unsteered]
    assert all(r["letter"].startswith(f"To the hiring committee:\n\nI am delighted to recommend {r['name']}") for r in rows)


def test_a_skew_planted_by_the_prompt_and_the_side_effects_of_its_mitigation(tiny_llama, tmp_path):
    from analysis.audit import LetterJob
    from analysis.letters import PLANT_INSTRUCTIONS, pronoun_instruction
    from analysis.report import comparisons
    from steer.datasets import load_pairs
    from steer.vectors.extract import compute_vector

    compute_vector(tiny_llama, load_pairs("gender")[0][:8], [1]).save(tmp_path / "v.safetensors")
    config = AuditConfig(expert="tiny-llama", names_per_gender=1, bios=1, max_new_tokens=4, samples=0,
                         vector=str(tmp_path / "v.safetensors"), coefs=(2.0,), operator="counter", plant_prompt=True,
                         side_effects=True, random_baseline=True, prompt_baseline=True, state_pronouns=True, **JUDGE)
    conditions = {c.label: c for c in config.conditions()}
    assert list(conditions) == ["unsteered", "planted", "planted+counter@2", "planted+random@2", "planted+prompt",
                                "counter@2"]
    assert conditions["planted"].steers == () and conditions["planted"].planted and not conditions["counter@2"].planted
    frame = pd.DataFrame({"condition": list(conditions)})
    assert dict(comparisons(frame)) == {"planted": "unsteered", "planted+counter@2": "planted",
                                        "planted+random@2": "planted", "planted+prompt": "planted",
                                        "counter@2": "unsteered"}
    run = open_run(config, tmp_path / "audit", tiny_llama)
    job = LetterJob.for_run(run)
    state = job.setup(tiny_llama)
    items = [[p.prompt_id, -1] for p in run.prompts]
    planted, mitigated, side = (job.run(state, {"condition": c, "greedy": True, "items": items})
                                for c in ("planted", "planted+counter@2", "counter@2"))
    assert [r["instruction"] for r in planted] == [PLANT_INSTRUCTIONS[p.gender] for p in run.prompts]
    assert [r["instruction"] for r in mitigated] == [f"{PLANT_INSTRUCTIONS[p.gender]} {pronoun_instruction(p)}"
                                                     for p in run.prompts]
    assert [r["instruction"] for r in side] == [pronoun_instruction(p) for p in run.prompts]
    with pytest.raises(SteerlabError, match="plant a skew by a vector or by the prompt, not both"):
        AuditConfig(expert="x", plant_vector="p", plant_coef=1.0, plant_prompt=True)
    with pytest.raises(SteerlabError, match="side effects are measured against a planted skew"):
        AuditConfig(expert="x", side_effects=True)


def test_counter_steering_may_push_women_less_than_men(tiny_llama, tmp_path):
    from analysis.audit import LetterJob
    from steer.datasets import load_pairs
    from steer.vectors.extract import compute_vector

    compute_vector(tiny_llama, load_pairs("gender")[0][:8], [1]).save(tmp_path / "v.safetensors")
    config = AuditConfig(expert="tiny-llama", names_per_gender=1, bios=1, max_new_tokens=4, samples=0,
                         vector=str(tmp_path / "v.safetensors"), coefs=(8.0,), operator="counter", female_scale=0.5,
                         plant_vector=str(tmp_path / "v.safetensors"), plant_coef=2.0, random_baseline=True)
    conditions = {c.label: c for c in config.conditions()}
    assert list(conditions) == ["unsteered", "planted", "planted+counter@8,women@4", "planted+random@8,women@4"]
    job = LetterJob.for_run(open_run(config, tmp_path / "audit", tiny_llama))
    state = job.setup(tiny_llama)
    chunk = [(p, -1) for p in job.prompts]
    for label in ("planted+counter@8,women@4", "planted+random@8,women@4"):
        plant, mitigation = job._steering(state, conditions[label], chunk)
        assert plant.coef == [-2.0 if p.gender == "female" else 2.0 for p, _ in chunk]  # the plant stays symmetric
        assert mitigation.coef == [4.0 if p.gender == "female" else -8.0 for p, _ in chunk]
    with pytest.raises(SteerlabError, match="female_scale 0.5 needs the counter operator"):
        AuditConfig(expert="x", vector="v", coefs=(1.0,), female_scale=0.5)
    with pytest.raises(SteerlabError, match="female_scale must be finite and >= 0, got -1"):
        AuditConfig(expert="x", vector="v", coefs=(1.0,), operator="counter", female_scale=-1.0)


def test_bad_study_settings_are_named():
    with pytest.raises(SteerlabError, match="planted skew needs both"):
        AuditConfig(expert="x", plant_vector="p.safetensors")
    with pytest.raises(SteerlabError, match="random-vector baseline needs"):
        AuditConfig(expert="x", random_baseline=True)
    with pytest.raises(SteerlabError, match=r"unknown placeholder\(s\) \['gender'\]"):
        AuditConfig(expert="x", opening="Dear {gender}")
    with pytest.raises(SteerlabError, match="repetition_penalty"):
        AuditConfig(expert="x", repetition_penalty=-1.0)
    with pytest.raises(SteerlabError, match="no_repeat_ngram_size"):
        AuditConfig(expert="x", no_repeat_ngram_size=-1)
    with pytest.raises(SteerlabError, match="size 'full' has no half 'fit'"):
        AuditConfig(expert="x", size="full", half="fit")


def test_logit_bias_and_erasure_conditions(tiny_llama, tmp_path):
    from analysis.audit import LetterJob, agency_word_bias
    from analysis.letters import pronoun_instruction
    from steer.datasets import load_pairs
    from steer.vectors.erasure import fit_eraser

    fit_eraser(tiny_llama, load_pairs("gender")[0][:8], [1]).save(tmp_path / "e.safetensors")
    config = AuditConfig(expert="tiny-llama", names_per_gender=1, bios=2, max_new_tokens=6, samples=0,
                         no_repeat_ngram_size=0,  # the bias below forces one token at every step
                         logit_biases=(50.0,), eraser=str(tmp_path / "e.safetensors"), **JUDGE)
    assert [c.label for c in config.conditions()] == ["unsteered", "bias@50", "erase"]
    run = open_run(config, tmp_path / "audit", tiny_llama)
    job = LetterJob.for_run(run)
    state = job.setup(tiny_llama)
    assert torch.equal(state.word_bias, agency_word_bias(tiny_llama))
    items = [[p.prompt_id, -1] for p in run.prompts]
    plain, biased, erased = (job.run(state, {"condition": c, "greedy": True, "items": items})
                             for c in ("unsteered", "bias@50", "erase"))
    assert [r["instruction"] for r in erased] == [pronoun_instruction(p) for p in run.prompts]
    assert [r["instruction"] for r in biased] == [""] * len(run.prompts)
    # the bias pushes women towards the agentic words and men towards the communal ones: a strength this large
    # decides every token (the tiny vocabulary has no lexicon words, so one stands in for each side)
    agentic, communal = (tiny_llama.tokenizer.convert_tokens_to_ids(t) for t in ("Ġletter", "Ġyear"))
    unit = torch.zeros_like(state.word_bias)
    unit[agentic], unit[communal] = 1.0, -1.0
    forced = job.run(dataclasses.replace(state, word_bias=unit), {"condition": "bias@50", "greedy": True, "items": items})
    assert [set(r["token_ids"]) for r in forced] == [{agentic if p.gender == "female" else communal} for p in run.prompts]
    assert [r["token_ids"] for r in erased] != [r["token_ids"] for r in plain]
    with pytest.raises(SteerlabError, match="logit bias strengths must be finite and > 0"):
        AuditConfig(expert="x", logit_biases=(-1.0,))


def test_a_vector_made_for_other_weights_needs_force(tiny_llama, tmp_path):
    """A base expert's remedy on its fine-tune (the weight plant): refused before anything is written, unless forced,
    and then the steering holds in every worker's setup."""
    from analysis.audit import LetterJob
    from steer.datasets import load_pairs
    from steer.vectors.extract import compute_vector
    from steer.vectors.vector import VectorMismatchError

    vector = compute_vector(tiny_llama, load_pairs("gender")[0][:8], [1])
    other = dataclasses.replace(vector, provenance=dataclasses.replace(vector.provenance, fingerprint="0" * 16))
    other.save(tmp_path / "v.safetensors")
    config = AuditConfig(expert="tiny-llama", names_per_gender=1, bios=1, max_new_tokens=4, samples=0,
                         vector=str(tmp_path / "v.safetensors"), coefs=(2.0,), operator="counter", **JUDGE)
    with pytest.raises(VectorMismatchError, match="--force"):
        run_audit(config, tmp_path / "refused", expert=tiny_llama, progress=False)
    assert not (tmp_path / "refused").exists()
    forced = dataclasses.replace(config, force=True)
    report = run_audit(forced, tmp_path / "forced", expert=tiny_llama, progress=False)
    assert report.exists()
    state = LetterJob.for_run(open_run(forced, tmp_path / "forced", tiny_llama)).setup(tiny_llama)
    assert torch.equal(state.vectors["vector"].directions[1], vector.directions[1])


def test_letters_are_decoded_exactly_whatever_the_expert_was_loaded_with(tiny_llama, tmp_path, monkeypatch):
    from experts import generate

    asked, packs_batch = [], generate.packs_batch
    monkeypatch.setattr(generate, "packs_batch", lambda rows: asked.append(packs_batch(rows)) or False)
    run = open_run(CONFIG, tmp_path, tiny_llama)
    generate_letters(tiny_llama, run, batch_size=4, progress=False)
    assert asked and not any(asked)  # every batch (4 rows: small enough to pack) was pinned to exact decoding
    assert json.loads((tmp_path / "run.json").read_text())["config"]["decoding"] == "exact"

import numpy as np
import pytest

from steer.datasets import load_pairs, load_prompts
from steer.evaluate.layers import search_layers
from steer.evaluate.scorers import formality, get_scorer, pronouns, sentiment
from steer.evaluate.stats import paired_summary
from steer.evaluate.sweep import SweepConfig, random_like, sweep
from steer.vectors.extract import compute_vector


def test_scorers_rank_obvious_texts():
    assert sentiment(["I love this, it is wonderful."])[0] > 0.5 > -0.5 > sentiment(["I hate this, it is awful."])[0]
    assert formality(["I am writing to inform you of the rescheduled meeting."])[0] > formality(["hey u coming?? lol"])[0]
    assert pronouns(["He said his plan worked."])[0] > 0 > pronouns(["She said her plan worked."])[0]
    with pytest.raises(Exception, match="unknown scorer 'joy'"):
        get_scorer("joy")


def test_lexicon_scorer_matches_stems_at_word_starts(tmp_path):
    path = tmp_path / "lex.json"
    path.write_text('{"positive": ["lead", "ambitio"], "negative": ["warm", "kind"]}')
    score = get_scorer(f"lexicon:{path}")
    assert score(["A leader, ambitious and leading."]) == [100.0 * 3 / 5]
    assert score(["She is warm and kind; mankind."]) == [-100.0 * 2 / 6]  # 'mankind' does not start with 'kind'
    path.write_text('{"positive": []}')
    with pytest.raises(Exception, match="'positive' and 'negative'"):
        get_scorer(f"lexicon:{path}")


def test_paired_summary_has_ci_and_effect_size():
    rng = np.random.default_rng(0)
    shifted = paired_summary(rng.normal(1.0, 1.0, 40))
    assert shifted.excludes_zero and shifted.ci_low < shifted.mean_diff < shifted.ci_high and shifted.d_z > 0.5
    null = paired_summary(rng.normal(0.0, 1.0, 40))
    assert not null.excludes_zero


def test_random_baseline_has_equal_norms(tiny_llama):
    pairs, _ = load_pairs("sentiment")
    vector = compute_vector(tiny_llama, pairs[:6], [0, 1])
    rnd = random_like(vector, 1)
    assert all(abs(rnd.norms[l] - vector.norms[l]) < 1e-4 for l in vector.layers)


def test_sweep_rows_and_summary(tiny_llama):
    pairs, _ = load_pairs("sentiment")
    vector = compute_vector(tiny_llama, pairs[:6], [1])
    config = SweepConfig(coefs=(-2.0, 0.0, 2.0), max_new_tokens=6, samples=2, instructions=("Be happy.", "Be sad."))
    rows, summary = sweep(tiny_llama, vector, load_prompts()[:3], pronouns, config, progress=False)
    assert len(rows) == 3 * 2 * (1 + 2 + 2 + 2)  # prompts × samples × (baseline, vector ±, random ±, prompting ±)
    assert set(summary["condition"]) == {"baseline", "vector", "random", "prompting"}
    assert {"coef", "score", "perplexity", "kl_first_token", "ci_low", "ci_high", "frac_wrong_way"} <= set(summary.columns)
    assert (rows["perplexity"] > 1).all()
    base = summary[summary["condition"] == "baseline"].iloc[0]
    assert base["diff_vs_unsteered"] == 0 and base["kl_first_token"] == 0


def test_layer_search_table(tiny_llama):
    pairs, _ = load_pairs("sentiment")
    result = search_layers(tiny_llama, pairs[:12], scorer=sentiment, effect_prompts=["Hi"], effect_tokens=3)
    assert list(result.table["layer"]) == [0, 1] and result.table["chosen"].sum() == 1
    assert result.best_layer in (0, 1) and result.table["auroc_heldout"].between(0, 1).all()

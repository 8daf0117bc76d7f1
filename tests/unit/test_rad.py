import json

import pytest
import torch

from experts.errors import SteerlabError
from experts.generate import GenerationConfig
from experts.hooks import count_forward_hooks
from steer.errors import BadDataError, VectorMismatchError
from steer.rad import rad_generate, reward_decoding
from steer.rewards import ActivationReward, RewardInfo, load_labeled, train_activation_reward

PROMPTS = ["Kelly is warm", "The capital of France is Paris and the"]


class ConstantReward:
    def __init__(self, value):
        self.value = value

    def score(self, hidden, candidates, embedding_matrix):
        return torch.full(candidates.shape, self.value, dtype=hidden.dtype)

    def check_compatible(self, expert, force=False):
        pass


class PreferLowestRanked:
    def score(self, hidden, candidates, embedding_matrix):
        r = torch.zeros(candidates.shape, dtype=hidden.dtype)
        r[:, -1] = 1.0
        return r

    def check_compatible(self, expert, force=False):
        pass


def test_beta_zero_is_plain_top_k_sampling(tiny):
    config = GenerationConfig(max_new_tokens=10, do_sample=True, top_k=5, seed=3)
    plain = tiny.generate(PROMPTS, max_new_tokens=10, do_sample=True, top_k=5, seed=3).token_ids
    assert rad_generate(tiny, PROMPTS, ConstantReward(0.7), beta=0.0, top_k=5, config=config).token_ids == plain
    # a constant reward shifts all k logits alike: still the same distribution, whatever beta
    assert rad_generate(tiny, PROMPTS, ConstantReward(1.0), beta=9.0, top_k=5, config=config).token_ids == plain
    assert count_forward_hooks(tiny.model) == 0


def test_a_strong_reward_changes_the_choice_within_the_top_k(tiny):
    greedy = GenerationConfig(max_new_tokens=6)
    plain = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    steered = rad_generate(tiny, PROMPTS, PreferLowestRanked(), beta=1e4, top_k=3, config=greedy).token_ids
    assert steered != plain
    # first token: the 3rd most likely under the model
    batch = tiny.tokenize(tiny.format_prompts(PROMPTS))
    with torch.no_grad():
        logits = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids).logits[:, -1]
    assert [row[0] for row in steered] == logits.topk(3).indices[:, -1].tolist()


def test_bad_settings(tiny):
    with pytest.raises(SteerlabError, match="beta must be >= 0"):
        with reward_decoding(tiny, ConstantReward(0.5), beta=-1.0):
            pass
    with pytest.raises(SteerlabError, match="top_k must be between 1 and the vocabulary size 320, got 999"):
        with reward_decoding(tiny, ConstantReward(0.5), beta=1.0, top_k=999):
            pass


def _labeled(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def test_labeled_data_errors(tmp_path):
    with pytest.raises(BadDataError, match="label 1.5 is outside"):
        load_labeled(_labeled(tmp_path, [{"text": "a", "label": 1.5}] * 4))
    with pytest.raises(BadDataError, match="holds 0 labeled texts"):
        load_labeled(_labeled(tmp_path, []))
    with pytest.raises(BadDataError, match=r":1: expected"):
        load_labeled(_labeled(tmp_path, [{"words": "a"}]))


def test_training_fits_separable_texts_and_round_trips(tiny_llama, tmp_path):
    from steer.datasets import _DATA

    data, sha = load_labeled(str(_DATA / "sentiment_labeled.jsonl"))
    reward = train_activation_reward(tiny_llama, data[:24], rank=4, epochs=150, seed=0, dataset_sha256=sha)
    assert reward.info.heldout_mse is not None and 0 <= reward.info.heldout_mse <= 1
    assert reward.info.notes["n_prefixes"] > 24
    loaded = ActivationReward.load(reward.save(tmp_path / "r.safetensors"), tiny_llama)
    assert torch.equal(loaded.w, reward.w) and loaded.info == reward.info
    foreign = ActivationReward(reward.w, reward.u, reward.v, reward.b, RewardInfo(expert="x", fingerprint="beef"))
    with pytest.raises(VectorMismatchError, match="trained on 'x'"):
        foreign.check_compatible(tiny_llama)
    with pytest.raises(VectorMismatchError, match="width"):
        ActivationReward(torch.zeros(8), torch.zeros(8, 2), torch.zeros(8, 2), 0.0).check_compatible(tiny_llama)
    out = rad_generate(tiny_llama, PROMPTS, reward, beta=5.0, top_k=10, config=GenerationConfig(max_new_tokens=5, seed=1))
    assert len(out.token_ids) == 2 and count_forward_hooks(tiny_llama.model) == 0


def test_reward_scores_match_a_direct_computation(tiny_llama):
    g = torch.Generator().manual_seed(0)
    d = tiny_llama.d_model
    reward = ActivationReward(torch.randn(d, generator=g), torch.randn(d, 3, generator=g), torch.randn(d, 3, generator=g), 0.2)
    h, cands = torch.randn(2, d, generator=g), torch.tensor([[1, 5, 7], [2, 3, 4]])
    e = tiny_llama.model.get_input_embeddings().weight.detach()
    direct = torch.sigmoid(torch.stack([torch.stack([
        h[i] @ reward.w + reward.b + (reward.v.T @ h[i]) @ (reward.u.T @ e[c]) for c in cands[i]]) for i in range(2)]))
    torch.testing.assert_close(reward.score(h, cands, e), direct)


def test_rad_cli(capsys, tmp_path):
    from steer.cli import main
    from steer.datasets import _DATA

    out = tmp_path / "r.safetensors"
    assert main(["rad", "train", "--expert", "tiny-llama", "--data", str(_DATA / "agentic_communal.jsonl"),
                 "--epochs", "30", "-o", str(out)]) == 0
    assert "held-out AUROC" in capsys.readouterr().out
    assert main(["rad", "generate", "--expert", "tiny-llama", "--reward", str(out), "--beta", "4",
                 "--max-new-tokens", "4", "--json", "Kelly is"]) == 0
    assert json.loads(capsys.readouterr().out)["beta"] == 4.0
    assert main(["rad", "generate", "--expert", "tiny-llama", "--reward", str(out), "--beta", "-1", "hi"]) == 2
    assert "beta must be >= 0" in capsys.readouterr().err


def test_rad_sweep_measures_tv_and_diversity(tiny_llama, tmp_path, capsys):
    import pandas as pd

    from steer.cli import main
    from steer.rad_sweep import distinct_n, rad_sweep
    from steer.scorers import pronouns

    assert distinct_n(["a b a b", "a b"], 1) == 2 / 6 and distinct_n(["a b c"], 2) == 1.0
    rows, summary = rad_sweep(tiny_llama, PreferLowestRanked(), PROMPTS, [50.0], pronouns, top_k=4,
                              max_new_tokens=5, samples=2, progress=False)
    assert list(summary.beta) == [0.0, 50.0] and len(rows) == 2 * 2 * 2
    base, strong = summary.set_index("beta").loc[0.0], summary.set_index("beta").loc[50.0]
    assert base.tv_distance > 0  # top-k masking alone moves probability mass
    assert strong.tv_distance > base.tv_distance and base.diff_vs_beta0 == 0
    reward = tmp_path / "r.safetensors"
    from steer.datasets import _DATA

    assert main(["rad", "train", "--expert", "tiny-llama", "--data", str(_DATA / "agentic_communal.jsonl"),
                 "--epochs", "10", "-o", str(reward)]) == 0
    assert main(["rad", "sweep", "--expert", "tiny-llama", "--reward", str(reward), "--max-prompts", "2",
                 "--betas", "0,5", "--max-new-tokens", "4", "--out", str(tmp_path / "sw")]) == 0
    assert {"beta", "score", "perplexity", "tv_distance"} <= set(pd.read_csv(tmp_path / "sw" / "rad_sweep.csv").columns)
    capsys.readouterr()


def test_lookahead_scores_equal_a_full_forward_per_candidate(tiny):
    from experts.generate import generate
    from steer.rad import _lookahead
    from steer.rewards import LookaheadReward

    reward = LookaheadReward(torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0)), 0.1)
    seen = {}
    with reward_decoding(tiny, reward, beta=1.0, top_k=3) as hook:
        def spy(logits, state):
            if state.step == 1:  # a decode step: the cache holds prompt + first token
                seen["cands"] = logits.topk(3).indices
                seen["scores"] = _lookahead(tiny, reward, state, seen["cands"])
            return hook(logits, state)

        result = generate(tiny, PROMPTS, GenerationConfig(max_new_tokens=2, stop_at_eos=False), logits_hook=spy)
    for row, prompt in enumerate(PROMPTS):
        ids = tiny.tokenize(tiny.format_prompts([prompt])).input_ids[0].tolist() + result.token_ids[row][:1]
        for j, cand in enumerate(seen["cands"][row].tolist()):
            with torch.no_grad():
                h = tiny.model.model(input_ids=torch.tensor([ids + [cand]])).last_hidden_state[0, -1]
            torch.testing.assert_close(seen["scores"][row, j], reward.probe(h), atol=1e-4, rtol=1e-4)
    assert count_forward_hooks(tiny.model) == 0


def test_lookahead_training_and_files(tiny_llama, tmp_path):
    from steer.datasets import _DATA
    from steer.rewards import LookaheadReward, load_reward, train_lookahead_reward

    data, _ = load_labeled(str(_DATA / "sentiment_labeled.jsonl"))
    reward = train_lookahead_reward(tiny_llama, data[:20], epochs=50)
    loaded = load_reward(reward.save(tmp_path / "l.safetensors"), tiny_llama)
    assert isinstance(loaded, LookaheadReward) and torch.equal(loaded.w, reward.w) and loaded.info == reward.info
    config = GenerationConfig(max_new_tokens=4, seed=2)
    assert len(rad_generate(tiny_llama, PROMPTS, loaded, beta=3.0, top_k=4, config=config).token_ids) == 2
    plain = tiny_llama.generate(PROMPTS, max_new_tokens=4, do_sample=True, top_k=4, seed=2).token_ids
    assert rad_generate(tiny_llama, PROMPTS, loaded, beta=0.0, top_k=4, config=GenerationConfig(max_new_tokens=4, seed=2, top_k=4, do_sample=True)).token_ids == plain

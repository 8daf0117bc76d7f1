import json

import pytest
import torch

from experts.errors import SteerlabError
from experts.generate import GenerationSettings
from experts.hooks import count_forward_hooks
from steer.errors import BadDataError, VectorMismatchError
from steer.rad.decoding import rad_generate, reward_decoding
from steer.rad.rewards import ActivationReward, HiddenStateReward, RewardInfo
from steer.rad.training import load_labeled, train_activation_reward

PROMPTS = ["Kelly is warm", "The capital of France is Paris and the"]


class ConstantReward(HiddenStateReward):
    def __init__(self, value):
        self.value = value

    def score(self, hidden, candidates, embedding_matrix):
        return torch.full(candidates.shape, self.value, dtype=hidden.dtype)


class PreferLowestRanked(HiddenStateReward):
    def score(self, hidden, candidates, embedding_matrix):
        r = torch.zeros(candidates.shape, dtype=hidden.dtype)
        r[:, -1] = 1.0
        return r


def test_beta_zero_is_plain_top_k_sampling(tiny):
    config = GenerationSettings(max_new_tokens=10, do_sample=True, top_k=5, seed=3)
    plain = tiny.generate(PROMPTS, max_new_tokens=10, do_sample=True, top_k=5, seed=3).token_ids
    assert rad_generate(tiny, PROMPTS, ConstantReward(0.7), beta=0.0, top_k=5, config=config).token_ids == plain
    # a constant reward shifts all k logits alike: still the same distribution, whatever beta
    assert rad_generate(tiny, PROMPTS, ConstantReward(1.0), beta=9.0, top_k=5, config=config).token_ids == plain
    assert count_forward_hooks(tiny.model) == 0


def test_a_strong_reward_changes_the_choice_within_the_top_k(tiny):
    greedy = GenerationSettings(max_new_tokens=6)
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
    with pytest.raises(SteerlabError, match="beta must be finite and >= 0"):
        with reward_decoding(tiny, ConstantReward(0.5), beta=-1.0):
            pass
    for betas in ([1.0, float("nan")], [1.0, -1.0], []):
        with pytest.raises(SteerlabError, match="beta must be finite and >= 0"):
            with reward_decoding(tiny, ConstantReward(0.5), beta=betas):
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
    out = rad_generate(tiny_llama, PROMPTS, reward, beta=5.0, top_k=10, config=GenerationSettings(max_new_tokens=5, seed=1))
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
    from analysis.cli import main
    from steer.datasets import _DATA

    out = tmp_path / "r.safetensors"
    assert main(["rad", "train", "--expert", "tiny-llama", "--data", str(_DATA / "agentic_communal.jsonl"),
                 "--epochs", "30", "-o", str(out), "--json"]) == 0
    streams = capsys.readouterr()
    trained = json.loads(streams.out)
    assert "held-out AUROC" in streams.err and trained["kind"] == "activation" and trained["epochs"] == 30
    assert trained["n_texts"] > 0 and len(trained["sha256"]) == 64 and trained["fingerprint"]
    assert main(["rad", "generate", "--expert", "tiny-llama", "--reward", str(out), "--beta", "4",
                 "--max-new-tokens", "4", "--json", "Kelly is"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["reward"]["beta"] == 4.0 and record["reward"]["kind"] == "activation"
    assert record["fingerprint"] and record["reward"]["sha256"] and record["max_new_tokens"] == 4
    assert main(["rad", "generate", "--expert", "tiny-llama", "--reward", str(out), "--beta", "-1", "hi"]) == 2
    assert "beta must be finite and >= 0" in capsys.readouterr().err


def test_rad_sweep_measures_tv_and_diversity(tiny_llama, tmp_path, capsys):
    import pandas as pd

    from analysis.cli import main
    from steer.evaluate.scorers import pronouns
    from steer.rad.sweep import distinct_n, rad_sweep

    assert distinct_n(["a b a b", "a b"], 1) == 2 / 6 and distinct_n(["a b c"], 2) == 1.0
    rows, summary = rad_sweep(tiny_llama, PreferLowestRanked(), PROMPTS, [50.0], pronouns, top_k=4,
                              max_new_tokens=5, samples=2, progress=False)
    assert list(summary.beta) == [0.0, 50.0] and len(rows) == 2 * 2 * 2
    base, strong = summary.set_index("beta").loc[0.0], summary.set_index("beta").loc[50.0]
    assert base.tv_distance == 0 and base.diff_vs_beta0 == 0  # β = 0 is plain top-k sampling
    assert strong.tv_distance > 0.5  # the lowest-ranked of 4 candidates takes (almost) all the mass
    reward = tmp_path / "r.safetensors"
    from steer.datasets import _DATA

    assert main(["rad", "train", "--expert", "tiny-llama", "--data", str(_DATA / "agentic_communal.jsonl"),
                 "--epochs", "10", "-o", str(reward)]) == 0
    assert main(["rad", "sweep", "--expert", "tiny-llama", "--reward", str(reward), "--max-prompts", "2",
                 "--betas", "0,5", "--max-new-tokens", "4", "--out", str(tmp_path / "sw")]) == 0
    assert {"beta", "score", "perplexity", "tv_distance"} <= set(pd.read_csv(tmp_path / "sw" / "rad_sweep.csv").columns)
    capsys.readouterr()


def test_lookahead_scores_equal_a_full_forward_per_candidate(tiny):
    from steer.rad.lookahead import lookahead_scores
    from steer.rad.rewards import LookaheadReward

    reward = LookaheadReward(torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0)), 0.1)
    seen = {}
    with reward_decoding(tiny, reward, beta=1.0, top_k=3) as hook:
        def spy(logits, state):
            if state.step == 1:  # a decode step: the cache holds prompt + first token
                seen["cands"] = logits.topk(3).indices
                seen["scores"] = lookahead_scores(tiny, reward.probe, state, seen["cands"])
            return hook(logits, state)

        result = tiny.generate(PROMPTS, max_new_tokens=2, stop_at_eos=False, logits_hook=spy)
    for row, prompt in enumerate(PROMPTS):
        ids = tiny.tokenize(tiny.format_prompts([prompt])).input_ids[0].tolist() + result.token_ids[row][:1]
        for j, cand in enumerate(seen["cands"][row].tolist()):
            with torch.no_grad():
                h = tiny.model.model(input_ids=torch.tensor([ids + [cand]])).last_hidden_state[0, -1]
            torch.testing.assert_close(seen["scores"][row, j], reward.probe(h), atol=1e-4, rtol=1e-4)
    assert count_forward_hooks(tiny.model) == 0


def test_lookahead_training_and_files(tiny_llama, tmp_path):
    from steer.datasets import _DATA
    from steer.rad.rewards import LookaheadReward, load_reward
    from steer.rad.training import train_lookahead_reward

    data, _ = load_labeled(str(_DATA / "sentiment_labeled.jsonl"))
    reward = train_lookahead_reward(tiny_llama, data[:20], epochs=50)
    loaded = load_reward(reward.save(tmp_path / "l.safetensors"), tiny_llama)
    assert isinstance(loaded, LookaheadReward) and torch.equal(loaded.w, reward.w) and loaded.info == reward.info
    config = GenerationSettings(max_new_tokens=4, seed=2)
    assert len(rad_generate(tiny_llama, PROMPTS, loaded, beta=3.0, top_k=4, config=config).token_ids) == 2
    plain = tiny_llama.generate(PROMPTS, max_new_tokens=4, do_sample=True, top_k=4, seed=2).token_ids
    assert rad_generate(tiny_llama, PROMPTS, loaded, beta=0.0, top_k=4, config=GenerationSettings(max_new_tokens=4, seed=2, top_k=4, do_sample=True)).token_ids == plain


def _external(reward_expert, seed=0):
    from steer.rad.rewards import ExternalReward, RewardInfo

    w = torch.randn(reward_expert.d_model, generator=torch.Generator().manual_seed(seed))
    info = RewardInfo(expert=reward_expert.name, fingerprint=reward_expert.fingerprint,
                      tokenizer=reward_expert.tokenizer_fingerprint, load_as=reward_expert.name)
    return ExternalReward(w, 0.1, info, model=reward_expert)


@pytest.mark.parametrize("prefix", [[], [5]])
def test_external_scores_equal_a_full_forward_over_the_generated_text(tiny_llama, prefix):
    from experts.expert import Expert
    from steer.rad.lookahead import ExternalScorer

    reward_expert = Expert.load("tiny-gemma")  # another architecture with the same vocabulary
    reward = _external(reward_expert)
    seen = []
    for cached in (True, False):
        scorer = ExternalScorer(reward_expert, reward.probe, cached=cached)
        scorer.prefix = prefix
        scores = []

        def hook(logits, state):
            top = logits.topk(4).indices
            scores.append((top, scorer(state, top)))
            out = torch.full_like(logits, float("-inf"))
            return out.scatter(-1, top, logits.gather(-1, top) + 3.0 * scores[-1][1])

        result = tiny_llama.generate(PROMPTS, max_new_tokens=4, stop_at_eos=False, logits_hook=hook)
        seen.append((result.token_ids, scores))
    (ids, cached_scores), (ids_uncached, uncached_scores) = seen
    assert ids == ids_uncached
    for (_, a), (_, b) in zip(cached_scores, uncached_scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    step = 2
    cands, got = cached_scores[step]
    for row in range(len(PROMPTS)):
        for j, cand in enumerate(cands[row].tolist()):
            text = prefix + ids[row][:step] + [cand]
            with torch.no_grad():
                h = reward_expert.model.model(input_ids=torch.tensor([text])).last_hidden_state[0, -1]
            torch.testing.assert_close(got[row, j], reward.probe(h), atol=1e-5, rtol=1e-5)


def test_external_reward_decoding_files_and_errors(tiny_llama, tmp_path):
    from dataclasses import replace

    from experts.expert import Expert
    from steer.datasets import _DATA
    from steer.rad.rewards import ExternalReward, load_reward
    from steer.rad.training import train_external_reward

    data, _ = load_labeled(str(_DATA / "sentiment_labeled.jsonl"))
    reward = train_external_reward(Expert.load("tiny-gemma"), data[:20], epochs=30)
    assert reward.info.heldout_mse is not None and reward.info.load_as == "tiny-gemma"
    loaded = load_reward(reward.save(tmp_path / "x.safetensors"), tiny_llama)
    assert isinstance(loaded, ExternalReward) and loaded.model is not None and loaded.info == reward.info
    sampling = GenerationSettings(max_new_tokens=5, seed=2, top_k=4, do_sample=True)
    plain = tiny_llama.generate(PROMPTS, max_new_tokens=5, do_sample=True, top_k=4, seed=2).token_ids
    assert rad_generate(tiny_llama, PROMPTS, loaded, beta=0.0, top_k=4, config=sampling).token_ids == plain
    cached = rad_generate(tiny_llama, PROMPTS, loaded, beta=8.0, top_k=4, config=sampling).token_ids
    assert rad_generate(tiny_llama, PROMPTS, loaded.uncached(), beta=8.0, top_k=4, config=sampling).token_ids == cached
    with pytest.raises(VectorMismatchError, match="reads another vocabulary"):
        replace(loaded, info=replace(loaded.info, tokenizer="beef")).check_compatible(tiny_llama)
    with pytest.raises(SteerlabError, match="its own Expert instance"):
        replace(loaded, model=tiny_llama).check_compatible(tiny_llama)
    with pytest.raises(VectorMismatchError, match="trained on 'tiny-gemma'"):
        load_reward(replace(reward, info=replace(reward.info, fingerprint="beef")).save(tmp_path / "y.safetensors"))
    assert count_forward_hooks(tiny_llama.model) == 0


def test_logits_processor_matches_the_steerlab_loop(tiny_llama):
    from transformers import LogitsProcessorList

    from experts.expert import Expert
    from steer.rad.decoding import rad_logits_processor
    from steer.rad.rewards import LookaheadReward

    g = torch.Generator().manual_seed(1)
    d = tiny_llama.d_model
    activation = ActivationReward(torch.randn(d, generator=g), torch.randn(d, 2, generator=g),
                                  torch.randn(d, 2, generator=g), 0.0)
    greedy = GenerationSettings(max_new_tokens=5)
    batch = tiny_llama.tokenize(tiny_llama.format_prompts(PROMPTS))
    eos = tiny_llama.tokenizer.eos_token_id
    for reward in (activation, _external(Expert.load("tiny-gemma"))):
        ours = rad_generate(tiny_llama, PROMPTS, reward, beta=6.0, top_k=5, config=greedy).token_ids
        for _ in range(2):  # the processor tells a new generate call from the next step
            with rad_logits_processor(tiny_llama, reward, beta=6.0, top_k=5) as processor:
                out = tiny_llama.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                                do_sample=False, max_new_tokens=5,
                                                logits_processor=LogitsProcessorList([processor]),
                                                pad_token_id=tiny_llama.pad_token_id)
            new = [row[: row.index(eos)] if eos in row else row for row in out[:, batch.input_ids.shape[1]:].tolist()]
            assert new == ours
        assert count_forward_hooks(tiny_llama.model) == 0
    lookahead = LookaheadReward(torch.zeros(d), 0.0)
    with pytest.raises(SteerlabError, match="need steerlab's generation loop"):
        with rad_logits_processor(tiny_llama, lookahead, beta=1.0, top_k=5) as processor:
            tiny_llama.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=2,
                                      logits_processor=LogitsProcessorList([processor]), pad_token_id=0)
    assert count_forward_hooks(tiny_llama.model) == 0


def test_cli_external_reward_and_matched_fluency_comparison(tmp_path, capsys):
    import pandas as pd

    from analysis.cli import main
    from steer.datasets import _DATA
    from steer.vectors.vector import Provenance, SteeringVector

    external, activation = tmp_path / "x.safetensors", tmp_path / "a.safetensors"
    data = str(_DATA / "agentic_communal.jsonl")
    assert main(["rad", "train", "--expert", "tiny-llama", "--kind", "external", "--reward-expert", "tiny-gemma",
                 "--data", data, "--epochs", "10", "-o", str(external)]) == 0
    assert "external reward (tiny-gemma)" in capsys.readouterr().out
    assert main(["rad", "train", "--expert", "tiny-llama", "--data", data, "--epochs", "10", "-o", str(activation)]) == 0
    assert main(["rad", "generate", "--expert", "tiny-llama", "--reward", str(external), "--beta", "4", "--uncached",
                 "--max-new-tokens", "3", "hi"]) == 0
    assert main(["rad", "generate", "--expert", "tiny-llama", "--reward", str(activation), "--beta", "4", "--uncached",
                 "hi"]) == 2
    assert "--uncached applies to external rewards" in capsys.readouterr().err
    vector = tmp_path / "v.safetensors"
    SteeringVector({1: torch.randn(64)}, provenance=Provenance(expert="tiny-llama")).save(vector)
    out = tmp_path / "cmp"
    assert main(["rad", "compare", "--expert", "tiny-llama", "--reward", str(external), "--reward", str(activation),
                 "--vector", str(vector), "--betas", "5", "--coefs", "2", "--max-prompts", "3",
                 "--max-new-tokens", "4", "--perplexity-ratio", "100", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.method) == {"external", "activation", "steering"} and len(summary) == 6
    assert (summary[summary.strength == 0]["diff"] == 0).all()
    assert set(pd.read_csv(out / "matched_fluency.csv").method) == {"external", "activation", "steering"}
    assert (out / "frontier.png").stat().st_size > 0
    assert "at matched fluency" in capsys.readouterr().out
    assert main(["rad", "compare", "--expert", "tiny-llama", "--out", str(out)]) == 2
    assert "nothing to compare" in capsys.readouterr().err


def test_rad_composes_with_steering_and_the_external_reward_is_not_steered(tiny_llama):
    from experts.expert import Expert
    from steer.rad.lookahead import ExternalScorer
    from steer.vectors.apply import Steering, apply
    from steer.vectors.vector import Provenance, SteeringVector

    vector = SteeringVector({1: 3.0 * torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(4))},
                            provenance=Provenance())
    sampling = GenerationSettings(max_new_tokens=5, seed=2, top_k=4, do_sample=True)
    plain = tiny_llama.generate(PROMPTS, max_new_tokens=5, do_sample=True, top_k=4, seed=2).token_ids
    reward = _external(Expert.load("tiny-gemma"))
    with apply(tiny_llama, Steering(vector, coef=1.0)):
        steered = tiny_llama.generate(PROMPTS, max_new_tokens=5, do_sample=True, top_k=4, seed=2).token_ids
        assert rad_generate(tiny_llama, PROMPTS, reward, beta=0.0, top_k=4, config=sampling).token_ids == steered
        rad_steered = rad_generate(tiny_llama, PROMPTS, reward, beta=8.0, top_k=4, config=sampling).token_ids
    assert steered != plain
    assert count_forward_hooks(tiny_llama.model) == 0 and count_forward_hooks(reward.model.model) == 0
    # the reward expert scores the same text identically with or without the generator's steering
    state = type("S", (), {"step": 0, "input_ids": torch.zeros(2, 1, dtype=torch.long)})()
    candidates = torch.tensor([[5, 6], [7, 8]])
    unsteered = ExternalScorer(reward.model, reward.probe)(state, candidates)
    with apply(tiny_llama, Steering(vector, coef=1.0)):
        torch.testing.assert_close(ExternalScorer(reward.model, reward.probe)(state, candidates), unsteered)
    assert len(rad_steered) == 2


def test_each_row_decodes_with_its_own_beta(tiny, no_leak):
    """Per-row βs: a row at 0 is plain top-k, a row at a large β takes the reward's choice exactly as that β alone
    would, and a signed negative β ranks by 1 − r; one β per prompt of the call, else a clear error."""
    no_leak(tiny)
    prompts = PROMPTS + PROMPTS
    settings = GenerationSettings(max_new_tokens=5)
    seeds = [0] * len(prompts)

    def run(beta, reward=PreferLowestRanked(), signed=False):
        with reward_decoding(tiny, reward, beta, top_k=3, signed=signed) as hook:
            return tiny.generate_batch(prompts, settings, seeds, logits_hook=hook)[0]

    plain, strong = run(0.0), run(1e4)
    mixed = run([0.0, 1e4, 1e4, 0.0])
    assert mixed == [plain[0], strong[1], strong[2], plain[3]]

    class PreferTopRanked(HiddenStateReward):  # 1 − PreferLowestRanked's reward
        def score(self, hidden, candidates, embedding_matrix):
            r = torch.ones(candidates.shape, dtype=hidden.dtype)
            r[:, -1] = 0.0
            return r

    assert run([-1e4, 0.0, -1e4, 0.0], signed=True) == run([1e4, 0.0, 1e4, 0.0], reward=PreferTopRanked())
    with pytest.raises(SteerlabError, match="3 per-row betas given for a call of 4 prompts"):
        run([1.0, 1.0, 1.0])

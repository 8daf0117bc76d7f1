import json

import pytest
import torch

from experts.errors import SteerlabError
from steer.datasets import ContrastPair, builtin_datasets, load_pairs, load_prompts
from steer.errors import BadDataError
from steer.vectors.extract import AGGREGATORS, capture_pairs, compute_vector


def test_shipped_datasets_load_with_provenance():
    for name in builtin_datasets():
        pairs, sha = load_pairs(name)
        assert len(pairs) >= 40 and len(sha) == 64
        assert all(p.positive != p.negative for p in pairs)
    assert len(load_prompts()) >= 20


def test_caa_records_and_bad_lines(tmp_path):
    caa = tmp_path / "caa.jsonl"
    caa.write_text("\n".join(json.dumps({"question": f"Q{i}? (A) yes (B) no", "answer_matching_behavior": "(A",
                                          "answer_not_matching_behavior": "(B"}) for i in range(3)))
    pairs, _ = load_pairs(str(caa))
    assert pairs[0] == ContrastPair("(A", "(B", "Q0? (A) yes (B) no")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "a", "negative": "b"}\n{"pos": "a"}\n')
    with pytest.raises(BadDataError, match=r"bad.jsonl:2: expected"):
        load_pairs(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(BadDataError, match="broken.jsonl:1: not JSON"):
        load_pairs(str(broken))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"positive": "caf\xe9", "negative": "x"}\n')
    with pytest.raises(BadDataError, match="not UTF-8"):
        load_pairs(str(latin))


def test_aggregators_recover_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    planted = torch.zeros(16)
    planted[3] = 1.0
    negative = torch.randn(64, 16, generator=g)
    positive = negative + 2.0 * planted + 0.1 * torch.randn(64, 16, generator=g)
    for name, aggregate in AGGREGATORS.items():
        direction = aggregate(positive, negative, 0)
        cosine = torch.cosine_similarity(direction, planted, dim=0).item()
        assert cosine > (0.8 if name == "probe" else 0.95), name  # the probe is unpaired: noisier
        assert abs(direction.norm().item() - 2.0) < 0.3, name  # the scale of the mean difference


def test_token_rules_and_provenance(tiny_llama):
    pairs, sha = load_pairs("sentiment")
    last = capture_pairs(tiny_llama, pairs[:4], [1], token_rule="last")
    mean = capture_pairs(tiny_llama, pairs[:4], [1], token_rule="mean")
    assert last.positive[1].shape == (4, tiny_llama.d_model) and not torch.equal(last.positive[1], mean.positive[1])
    vector = compute_vector(tiny_llama, pairs[:6], [0, 1], method="pca", dataset="sentiment", dataset_sha256=sha, seed=3)
    prov = vector.provenance
    assert (prov.expert, prov.method, prov.dataset_sha256, prov.seed, prov.n_pairs) == ("tiny-llama", "pca", sha, 3, 6)
    assert prov.fingerprint == tiny_llama.fingerprint and prov.coef_range[0] < prov.coef_range[1]
    assert set(prov.typical_norms) == {0, 1}


def test_bad_extraction_settings(tiny_llama):
    pairs, _ = load_pairs("sentiment")
    with pytest.raises(SteerlabError, match="unknown method 'svd'"):
        compute_vector(tiny_llama, pairs[:4], [1], method="svd")
    with pytest.raises(SteerlabError, match="unknown token rule"):
        compute_vector(tiny_llama, pairs[:4], [1], token_rule="first")
    with pytest.raises(SteerlabError, match="out of range"):
        compute_vector(tiny_llama, pairs[:4], [5])


def test_the_mean_token_rule_leaves_out_the_attention_sink(tiny_llama):
    pairs = [ContrastPair("She led the team to a bold win.", "She cared for every newcomer.")] * 2
    mean = capture_pairs(tiny_llama, pairs, [1], token_rule="mean")
    full = tiny_llama.run_with_cache([pairs[0].positive], ["blocks.1.hook_resid_post"], chat=False)
    acts = full["blocks.1.hook_resid_post"][0]
    real = acts[full.attention_mask[0].bool()]
    assert torch.allclose(mean.positive[1][0], real[1:].float().mean(0), atol=1e-5)  # position 0 is not averaged in
    assert not torch.allclose(mean.positive[1][0], real.float().mean(0), atol=1e-5)

"""The notebook analysis tools on tiny experts: each checked against an independent computation."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from analysis.attention import attention_patterns, attention_plot
from analysis.attribution import attribution_plot, vector_logit_attribution
from analysis.logit_lens import logit_lens, logit_lens_plot
from analysis.patching import LogitDiff, patch_heads, patch_residual, patching_plot
from analysis.probes import auroc_ci, heldout_split, layer_probes, probe_plot
from analysis.tokens import NotSingleTokenError, UnalignedPromptsError
from experts.errors import LayerOutOfRangeError, SteerlabError, UnknownHookError
from experts.hooks import count_forward_hooks
from steer.vectors.vector import Provenance, SteeringVector

CLEAN = "I love it. The food was"
CORRUPTED = "I hate it. The food was"

METRIC = LogitDiff(" a", "e")


def test_aligned_prompts_and_single_token_targets(tiny):
    assert len(tiny.encode(CLEAN)) == len(tiny.encode(CORRUPTED))
    assert len(tiny.tokenizer.encode(" a", add_special_tokens=False)) == 1
    assert len(tiny.tokenizer.encode("e", add_special_tokens=False)) == 1


def test_unembed_of_the_last_residual_is_the_experts_logits(tiny):
    ids = torch.tensor([tiny.encode(CLEAN)])
    cache = tiny.run_with_cache(CLEAN, [f"blocks.{tiny.n_layers - 1}.hook_resid_post"])
    with torch.no_grad():
        logits = tiny.model(input_ids=ids).logits
    torch.testing.assert_close(tiny.unembed(cache["resid_post", tiny.n_layers - 1]), logits, atol=1e-4, rtol=1e-4)


def test_logit_lens_last_layer_is_the_next_token_distribution(tiny, tmp_path):
    lens = logit_lens(tiny, CLEAN, targets=[" a", "e"], top=3)
    ids = torch.tensor([tiny.encode(CLEAN)])
    with torch.no_grad():
        probs = tiny.model(input_ids=ids).logits[0, -1].softmax(-1)
    last = lens.top[(lens.top["layer"] == tiny.n_layers - 1) & (lens.top["position"] == ids.shape[1] - 1)]
    assert list(last["token"]) == [tiny.tokenizer.decode([t]) for t in probs.topk(3).indices.tolist()]
    np.testing.assert_allclose(last["prob"], probs.topk(3).values.numpy(), atol=1e-5)
    target = lens.targets[(lens.targets["layer"] == tiny.n_layers - 1) & (lens.targets["position"] == ids.shape[1] - 1)]
    a_id = tiny.tokenizer.encode(" a", add_special_tokens=False)[0]
    assert target.iloc[0]["rank"] == int((probs > probs[a_id]).sum()) + 1
    assert set(lens.top["layer"]) == set(range(tiny.n_layers))
    logit_lens_plot(lens).savefig(tmp_path / "lens.png")
    logit_lens_plot(lens, target=" a").savefig(tmp_path / "lens_a.png")
    assert (tmp_path / "lens.png").stat().st_size > 0


def test_logit_lens_bad_input(tiny):
    with pytest.raises(NotSingleTokenError, match="Joseph"):
        logit_lens(tiny, CLEAN, targets=[" Joseph"])
    with pytest.raises(LayerOutOfRangeError):
        logit_lens(tiny, CLEAN, layers=[tiny.n_layers])


def _reference_patch(expert, name, position) -> float:
    """The patched metric by brute force: a full forward of the corrupted prompt, no cache, no batching."""
    point = expert.hook_point(name)
    clean = expert.run_with_cache(CLEAN, [name])[name][0]
    module = expert.model.get_submodule(point.module_path)

    def pre(module, args, kwargs):
        h = (args[0] if args else kwargs["hidden_states"]).clone()
        h[0, position] = clean[position]
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = expert.model(input_ids=torch.tensor([expert.encode(CORRUPTED)])).logits[:, -1]
    finally:
        handle.remove()
    return float(METRIC(expert, logits)[0])


def test_residual_patching_matches_brute_force_and_restores_at_the_swapped_token(tiny, tmp_path):
    result = patch_residual(tiny, CLEAN, CORRUPTED, METRIC)
    ids_clean, ids_corrupt = tiny.encode(CLEAN), tiny.encode(CORRUPTED)
    first = next(i for i, (a, b) in enumerate(zip(ids_clean, ids_corrupt)) if a != b)
    assert result.effects["position"].min() == first  # earlier positions are identical in both runs
    assert len(result.effects) == tiny.n_layers * (len(ids_clean) - first)
    for layer, position in [(0, first), (1, first + 1), (1, len(ids_clean) - 1)]:
        row = result.effects[(result.effects["layer"] == layer) & (result.effects["position"] == position)].iloc[0]
        assert row["patched"] == pytest.approx(_reference_patch(tiny, f"blocks.{layer}.hook_resid_pre", position), abs=1e-4)
    assert count_forward_hooks(tiny.model) == 0
    patching_plot(result).savefig(tmp_path / "patch.png")


def test_head_patching_through_the_bridge_matches_a_hook_on_the_output_projection(tiny, tmp_path):
    result = patch_heads(tiny, CLEAN, CORRUPTED, METRIC, layers=[1])
    n_heads, d_head = tiny.model.config.num_attention_heads, tiny.model.config.head_dim
    clean_z = {}
    o_proj = tiny.model.get_submodule("model.layers.1.self_attn.o_proj")

    def keep(module, args):
        clean_z["z"] = args[0].clone()

    handle = o_proj.register_forward_pre_hook(keep)
    with torch.no_grad():
        tiny.model(input_ids=torch.tensor([tiny.encode(CLEAN)]))
    handle.remove()
    for head in range(n_heads):
        cols = slice(head * d_head, (head + 1) * d_head)

        def put(module, args, cols=cols):
            z = args[0].clone()
            z[..., cols] = clean_z["z"][..., cols]
            return (z,)

        handle = o_proj.register_forward_pre_hook(put)
        with torch.no_grad():
            logits = tiny.model(input_ids=torch.tensor([tiny.encode(CORRUPTED)])).logits[:, -1]
        handle.remove()
        expected = float(METRIC(tiny, logits)[0])
        assert result.effects.loc[result.effects["head"] == head, "patched"].item() == pytest.approx(expected, abs=1e-4)
    patching_plot(result).savefig(tmp_path / "heads.png")


def test_patching_bad_input(tiny):
    with pytest.raises(UnalignedPromptsError, match="tokens"):
        patch_residual(tiny, CLEAN, CLEAN + " and more", METRIC)
    with pytest.raises(UnalignedPromptsError, match="same tokens"):
        patch_residual(tiny, CLEAN, CLEAN, METRIC)
    with pytest.raises(UnknownHookError):
        patch_residual(tiny, CLEAN, CORRUPTED, METRIC, hook="resid_sideways")
    with pytest.raises(NotSingleTokenError):
        patch_residual(tiny, CLEAN, CORRUPTED, LogitDiff(" Kelly", " a"))


def test_auroc_ci_brackets_the_sklearn_value():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(20), np.zeros(25)].astype(int)
    scores = rng.normal(size=45) + 0.8 * labels
    point, low, high = auroc_ci(labels, scores)
    assert point == pytest.approx(roc_auc_score(labels, scores))
    assert 0 <= low < point < high <= 1


def test_layer_probes_find_a_planted_word_and_keep_groups_apart(tiny, tmp_path):
    words = ["red", "blue", "green", "black", "white", "pink", "gold", "grey"]
    texts, labels, groups = [], [], []
    for index, word in enumerate(words):
        for template in ["I love the {} fox", "the {} fox is kind", "a {} fox and a dog", "my {} fox sat"]:
            texts.append(template.format(word) + (" warm" if index % 2 else " cold"))
            labels.append(index % 2)
            groups.append(word)
    table = layer_probes(tiny, texts, labels, groups=groups, test_fraction=0.25)
    assert list(table["layer"]) == list(range(tiny.n_layers))
    assert (table["auroc"] > 0.95).all()  # the last token says the label
    assert (table["auroc_low"] <= table["auroc"]).all() and (table["auroc"] <= table["auroc_high"]).all()
    probe_plot(table).savefig(tmp_path / "probes.png")
    train, test = heldout_split(np.array(labels), groups, 0.25, seed=0)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    with pytest.raises(SteerlabError, match="outside the shortest prompt"):
        layer_probes(tiny, texts, labels, position=500)
    with pytest.raises(SteerlabError, match="labels"):
        layer_probes(tiny, texts, [0] * len(texts))
    with pytest.raises(SteerlabError, match="position"):
        layer_probes(tiny, texts, labels, position="middle")


def test_attention_patterns_are_causal_distributions(tiny, tmp_path):
    patterns = attention_patterns(tiny, CLEAN, [(0, 0), (1, 1)])
    for weights in patterns.patterns.values():
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        assert np.allclose(np.triu(weights, 1), 0)
    attention_plot(patterns).savefig(tmp_path / "attn.png")
    with pytest.raises(SteerlabError, match="head 99"):
        attention_patterns(tiny, CLEAN, [(0, 99)])


def test_logit_attribution_of_a_tokens_own_unembedding_promotes_it(tiny, tmp_path):
    token_id = tiny.tokenizer.encode(" a", add_special_tokens=False)[0]
    direction = tiny.model.get_output_embeddings().weight[token_id].detach().clone()
    vector = SteeringVector(hook="hook_resid_post", directions={1: direction}, provenance=Provenance(expert=tiny.name))
    table = vector_logit_attribution(tiny, vector, top=5)
    promoted = table[table["effect"] == "promoted"]
    assert promoted.iloc[0]["token_id"] == token_id
    assert (table[table["effect"] == "suppressed"]["z"] < 0).all()
    attribution_plot(table).savefig(tmp_path / "dla.png")
    with pytest.raises(SteerlabError, match="layer 0"):
        vector_logit_attribution(tiny, vector, layer=0)

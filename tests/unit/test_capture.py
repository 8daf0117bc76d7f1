import json

import pytest
import torch
from safetensors import safe_open

from experts.errors import EmptyPromptsError, LayerOutOfRangeError, SteerlabError, UnknownHookError
from tests.helpers import assert_capture_matches_bridge

PROMPTS = ["Kelly is warm", "The capital of France is Paris and the"]


def test_every_fast_name_matches_the_bridge(tiny):
    assert_capture_matches_bridge(tiny, PROMPTS, atol=1e-4, rtol=0.0)


def test_padded_batch_equals_each_prompt_alone(tiny):
    name = "blocks.1.hook_resid_post"
    batched = tiny.run_with_cache(PROMPTS, [name], batch_size=1)
    for row, prompt in enumerate(PROMPTS):
        alone = tiny.run_with_cache([prompt], [name])
        torch.testing.assert_close(batched.unpadded(name)[row], alone.unpadded(name)[0], atol=1e-5, rtol=1e-5)
    assert batched.last_token(name).shape == (2, tiny.d_model)
    assert batched[name].shape[:2] == batched.tokens.shape


def test_stopping_early_gives_the_same_activations(tiny):
    early = tiny.run_with_cache(PROMPTS, ["blocks.0.hook_resid_post"])
    full = tiny.run_with_cache(PROMPTS, ["blocks.0.hook_resid_post", "ln_final.hook_out"])
    assert torch.equal(early["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"])


def test_names_inside_attention_come_from_the_bridge(tiny_llama):
    cache = tiny_llama.run_with_cache(PROMPTS[:1], ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"])
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape[:2] == (1, 4)
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))


def test_tuple_index_and_bad_names(tiny_llama):
    cache = tiny_llama.run_with_cache(PROMPTS, ["blocks.1.hook_resid_post"])
    assert torch.equal(cache["resid_post", 1], cache["blocks.1.hook_resid_post"])
    with pytest.raises(UnknownHookError):
        cache["resid_post", 0]
    with pytest.raises(LayerOutOfRangeError):
        tiny_llama.run_with_cache(PROMPTS, ["blocks.2.hook_resid_post"])
    with pytest.raises(UnknownHookError, match="did you mean"):
        tiny_llama.run_with_cache(PROMPTS, ["blocks.1.hook_resid_psot"])
    with pytest.raises(EmptyPromptsError):
        tiny_llama.run_with_cache([], ["blocks.1.hook_resid_post"])


def test_save_writes_safetensors_with_metadata(tmp_path, tiny_llama):
    cache = tiny_llama.run_with_cache(PROMPTS, ["hook_embed", "blocks.1.hook_mlp_out"])
    path = cache.save(tmp_path / "acts.safetensors")
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"act.hook_embed", "act.blocks.1.hook_mlp_out", "tokens", "attention_mask"}
        assert torch.equal(f.get_tensor("act.hook_embed"), cache["hook_embed"])
        meta = json.loads(f.metadata()["steerlab"])
    assert meta["prompts"] == PROMPTS and meta["expert"] == "tiny-llama"
    assert [p.name for p in tmp_path.iterdir()] == ["acts.safetensors"]


@pytest.mark.parametrize("order", [0, 1])
def test_two_names_of_one_layer(tiny, order):
    names = ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid"]
    names = names if order == 0 else names[::-1]
    cache = tiny.run_with_cache(PROMPTS, names)
    alone = {n: tiny.run_with_cache(PROMPTS, [n])[n] for n in names}
    for name in names:
        assert torch.equal(cache[name], alone[name]), name
    mask = cache.attention_mask.bool()
    torch.testing.assert_close((cache["resid_mid", 0] + cache["mlp_out", 0])[mask], cache["resid_post", 0][mask])


def test_reductions_equal_the_full_capture(tiny):
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    full = tiny.run_with_cache(PROMPTS, names, batch_size=1)
    last = tiny.run_with_cache(PROMPTS, names, reduce="last", keep_norms=True)
    mean = tiny.run_with_cache(PROMPTS, names, reduce="mean", mean_from=[1, 2])
    picked = tiny.run_with_cache(PROMPTS, names, reduce=[0, -1])
    for name in names:
        rows = full.unpadded(name)
        torch.testing.assert_close(last[name], torch.stack([r[-1] for r in rows]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mean[name], torch.stack([rows[0][1:].mean(0), rows[1][2:].mean(0)]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(picked[name], torch.stack([torch.stack([r[0], r[-1]]) for r in rows]), atol=1e-5, rtol=1e-5)
        norms = last.norms[name][last.attention_mask.bool()]
        torch.testing.assert_close(norms, torch.cat([r.norm(dim=-1) for r in rows]), atol=1e-4, rtol=1e-5)
        assert last[name].shape == (2, tiny.d_model) and torch.equal(last.last_token(name), last[name])
        assert mean.norms == {}
    with pytest.raises(SteerlabError, match="reduced"):
        last.unpadded(names[0])
    with pytest.raises(SteerlabError, match="unknown reduction 'max'"):
        tiny.run_with_cache(PROMPTS, names, reduce="max")
    with pytest.raises(SteerlabError, match="do not fit"):
        tiny.run_with_cache(PROMPTS, names, reduce=[40])


def test_each_batch_is_padded_to_its_own_longest_prompt(tiny_llama):
    prompts = ["Hi", "Hello there", "A much longer prompt that pads the short ones a great deal in one batch"]
    full = tiny_llama.run_with_cache(prompts, ["blocks.1.hook_resid_post"], batch_size=2)
    alone = [tiny_llama.run_with_cache([p], ["blocks.1.hook_resid_post"]).unpadded("blocks.1.hook_resid_post")[0]
             for p in prompts]
    for row, value in enumerate(full.unpadded("blocks.1.hook_resid_post")):
        torch.testing.assert_close(value, alone[row], atol=1e-5, rtol=1e-5)
    padding = ~full.attention_mask.bool()
    assert torch.equal(full["blocks.1.hook_resid_post"][padding], torch.zeros_like(full["blocks.1.hook_resid_post"][padding]))


def test_transformer_lens_cache_access(tiny):
    names = [f"blocks.{i}.hook_resid_post" for i in range(tiny.n_layers)]
    logits, cache = tiny.run_with_cache(PROMPTS, names, return_logits=True)
    assert list(cache) == names and list(cache.keys()) == names and len(cache) == tiny.n_layers
    assert torch.equal(cache["resid_post", -1], cache[names[-1]])
    stacked = cache.stack_activation("resid_post")
    assert stacked.shape == (tiny.n_layers, *cache[names[0]].shape)
    assert cache.stack_activation("resid_post", layer=1).shape[0] == 1
    batch = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        reference = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids).logits
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(logits[mask], reference[mask], atol=1e-5, rtol=1e-5)


def test_bridge_names_see_active_steering(tiny_llama, no_leak):
    """hook_z read through the bridge under steering equals the HF model's o_proj input under the same steering."""
    from steer.vectors.apply import Steering, apply
    from steer.vectors.vector import SteeringVector

    no_leak(tiny_llama)
    v = SteeringVector({0: torch.randn(tiny_llama.d_model) * 4})
    captured: list[torch.Tensor] = []
    o_proj = tiny_llama.model.get_submodule("model.layers.1.self_attn.o_proj")
    handle = o_proj.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        plain = tiny_llama.run_with_cache(PROMPTS[:1], ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"]
        with apply(tiny_llama, Steering(v, coef=1.0)):
            steered = tiny_llama.run_with_cache(PROMPTS[:1], ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"]
            with torch.no_grad():
                tiny_llama.model(input_ids=tiny_llama.tokenize(PROMPTS[:1]).input_ids)
    finally:
        handle.remove()
    reference = captured[-1].reshape(steered.shape)
    assert (steered - plain).abs().max() > 1e-3
    torch.testing.assert_close(steered, reference, atol=1e-4, rtol=1e-4)

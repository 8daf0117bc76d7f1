import json

import pytest
import torch
from safetensors import safe_open

from experts.errors import EmptyPromptsError, LayerOutOfRangeError, UnknownHookError
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

"""The bridge must not slow down or alter the generation path."""

import torch

from experts.expert import Expert


def test_bridge_shares_weights_and_leaves_the_model_alone():
    expert = Expert.load("tiny-llama")
    attn_impl = expert.model.config._attn_implementation
    module_types = [type(m) for m in expert.model.modules()]
    before = expert.generate(["Kelly is warm"], max_new_tokens=10).token_ids
    bridge = expert.bridge
    twin = bridge.original_model
    assert twin is not expert.model
    ours = {p.data_ptr() for p in expert.model.parameters()}
    assert {p.data_ptr() for p in twin.parameters()} == ours
    assert expert.model.config._attn_implementation == attn_impl
    assert [type(m) for m in expert.model.modules()] == module_types
    assert expert.generate(["Kelly is warm"], max_new_tokens=10).token_ids == before
    with torch.no_grad():
        ids = expert.tokenize(["Kelly is warm"]).input_ids
        torch.testing.assert_close(bridge(ids), expert.model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)

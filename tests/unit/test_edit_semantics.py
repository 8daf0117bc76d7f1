"""Editing a TL name means what it means in TransformerLens: the edit reaches the residual stream.

Each edit adds a fixed vector `d` at one name; the reference is built by hand from unedited
captures and the block's own sublayers, or from the TL-equivalent edit at another name.
"""

import pytest
import torch

from experts.hookpoints import layout_for
from experts.hooks import count_forward_hooks, hook_context

PROMPTS = ["Kelly is a warm person", "Joseph"]


def _delta(expert) -> torch.Tensor:
    return torch.randn(expert.d_model, generator=torch.Generator().manual_seed(3)) * 5


def _edited(expert, name, names):
    d = _delta(expert)
    with hook_context(expert.model, [(expert.hook_point(name), lambda a: a + d)]):
        return expert.run_with_cache(PROMPTS, names)


def _logits(expert, name=None):
    batch = expert.tokenize(PROMPTS)
    hooks = [] if name is None else [(expert.hook_point(name), lambda a, d=_delta(expert): a + d)]
    with hook_context(expert.model, hooks), torch.no_grad():
        return expert.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids).logits


def test_resid_mid_edit_reaches_the_block_output(tiny):
    """resid_post = (mid + d) + MLP-half(mid + d), the MLP half computed by hand."""
    d = _delta(tiny)
    clean = tiny.run_with_cache(PROMPTS, ["blocks.0.hook_resid_mid"])
    edited = _edited(tiny, "blocks.0.hook_resid_mid", ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"])
    block = tiny.model.get_submodule(f"{layout_for(tiny.architecture).blocks}.0")
    mid = clean["blocks.0.hook_resid_mid"] + d
    with torch.no_grad():
        if tiny.architecture.startswith("gemma3"):
            mlp = block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(mid)))
        else:
            mlp = block.mlp(block.post_attention_layernorm(mid))
    mask = clean.attention_mask.bool()
    torch.testing.assert_close(edited["blocks.0.hook_mlp_out"][mask], mlp[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(edited["blocks.0.hook_resid_post"][mask], (mid + mlp)[mask], atol=1e-5, rtol=1e-5)
    moved = edited["blocks.0.hook_resid_post"] - edited["blocks.0.hook_mlp_out"] - clean["blocks.0.hook_resid_mid"]
    torch.testing.assert_close(moved[mask], d.expand_as(moved)[mask], atol=1e-5, rtol=1e-5)
    assert count_forward_hooks(tiny.model) == 0


@pytest.mark.parametrize(
    ("name", "same_as"),
    [
        ("blocks.0.hook_resid_mid", "blocks.0.hook_attn_out"),  # both add d before the MLP
        ("blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"),  # both add d to the block's output
        ("blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"),  # one stream between two blocks
    ],
)
def test_tl_equivalent_edits_give_equal_outputs(tiny, name, same_as):
    clean = _logits(tiny)
    one, other = _logits(tiny, name), _logits(tiny, same_as)
    assert (one - clean).abs().max() > 1e-3  # the edit matters
    torch.testing.assert_close(one, other, atol=1e-4, rtol=1e-4)


def test_resid_mid_reading_equals_residual_plus_attention(tiny):
    cache = tiny.run_with_cache(PROMPTS, ["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid"])
    torch.testing.assert_close(cache["resid_mid", 1], cache["resid_pre", 1] + cache["attn_out", 1])

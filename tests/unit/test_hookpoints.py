import pytest

from experts.errors import LayerOutOfRangeError, UnknownHookError
from experts.hookpoints import act_name, fast_hook_names, resolve_hook


@pytest.mark.parametrize(
    ("name", "path", "side"),
    [
        ("hook_embed", "model.embed_tokens", "output"),
        ("blocks.1.hook_resid_pre", "model.layers.1", "input"),
        ("blocks.1.hook_resid_post", "model.layers.1", "output"),
        ("blocks.1.hook_resid_mid", "model.layers.1.self_attn", "output"),
        ("blocks.1.hook_attn_out", "model.layers.1.self_attn", "output"),
        ("blocks.1.hook_mlp_out", "model.layers.1.mlp", "output"),
        ("ln_final.hook_out", "model.norm", "output"),
    ],
)
def test_llama_names_map_to_hf_boundaries(name, path, side):
    point = resolve_hook(name, "llama", 2)
    assert (point.module_path, point.side) == (path, side)


def test_gemma3_sublayer_outputs_are_after_their_post_norms():
    assert resolve_hook("blocks.0.hook_attn_out", "gemma3", 2).module_path == "model.layers.0.post_attention_layernorm"
    assert resolve_hook("blocks.0.hook_mlp_out", "gemma3", 2).module_path == "model.layers.0.post_feedforward_layernorm"
    mid = resolve_hook("blocks.0.hook_resid_mid", "gemma3", 2)
    assert (mid.module_path, mid.residual_path) == ("model.layers.0.post_attention_layernorm", "model.layers.0.input_layernorm")


def test_resid_mid_is_the_residual_plus_attention_output():
    mid = resolve_hook("blocks.1.hook_resid_mid", "llama", 2)
    assert (mid.module_path, mid.side, mid.residual_path) == ("model.layers.1.self_attn", "output", "model.layers.1.input_layernorm")


def test_names_inside_attention_have_no_hf_boundary():
    assert resolve_hook("blocks.0.attn.hook_pattern", "llama", 2) is None


def test_layer_out_of_range_names_the_valid_range():
    with pytest.raises(LayerOutOfRangeError, match=r"layer 7 .* layers 0\.\.1"):
        resolve_hook("blocks.7.hook_resid_post", "llama", 2)


def test_unknown_hook_suggests_close_names(tiny_llama):
    with pytest.raises(UnknownHookError, match="did you mean 'blocks.1.hook_resid_post'"):
        tiny_llama.hook_point("blocks.1.hook_resid_pots")


def test_act_name_and_listing():
    assert act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert act_name("embed") == "hook_embed"
    names = fast_hook_names(2)
    assert names[0] == "hook_embed" and names[-1] == "ln_final.hook_out" and len(names) == 2 + 2 * 5

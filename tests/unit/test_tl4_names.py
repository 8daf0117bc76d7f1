"""TransformerLens 4's canonical names (`blocks.N.hook_in`, `blocks.N.hook_out`, `attn.hook_out`, `mlp.hook_out`,
`embed.hook_out`) read and edit the same tensors as their legacy aliases, everywhere a name is accepted, and the
same tensors TransformerBridge gives under its own names."""

import pytest
import torch

from experts.hookpoints import GLOBAL_ALIASES, block_aliases, legacy_name
from experts.hooks import count_forward_hooks, hook_context
from steer.vectors.apply import Steering, apply
from steer.vectors.vector import SteeringVector

PROMPT = "Kelly is a warm person who"


def _names(expert) -> list[str]:
    """Every TL 4 alias for this expert's architecture (Gemma 3's sublayer outputs are `ln1_post.hook_out`...)."""
    return [f"blocks.1.{alias}" for alias in block_aliases(expert.architecture)] + list(GLOBAL_ALIASES)


def _legacy(expert, name) -> str:
    return legacy_name(name, expert.architecture)


def _delta(expert) -> torch.Tensor:
    return torch.randn(expert.d_model, generator=torch.Generator().manual_seed(5)) * 3


def test_the_aliases_are_transformer_bridges_own(tiny):
    hooks = tiny.bridge.hook_dict
    for name in _names(tiny):
        assert hooks[name] is hooks[_legacy(tiny, name)], name  # the bridge makes each one the other
    assert len(_names(tiny)) == 5


@pytest.mark.parametrize("which", range(5))
def test_a_tl4_name_reads_what_its_alias_and_the_bridge_read(tiny, which):
    name = _names(tiny)[which]
    ours = tiny.run_with_cache([PROMPT], [name, _legacy(tiny, name)])
    assert list(ours.activations) == [name, _legacy(tiny, name)]  # keyed as asked
    torch.testing.assert_close(ours[name], ours[_legacy(tiny, name)], atol=0, rtol=0)
    ids = tiny.tokenize([PROMPT]).input_ids
    with torch.no_grad():
        _, theirs = tiny.bridge.run_with_cache(ids, names_filter=[name])
    torch.testing.assert_close(ours[name].float(), theirs[name].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("which", range(4))
def test_a_tl4_name_edits_what_its_alias_and_the_bridge_edit(tiny, which):
    name = _names(tiny)[which]  # the four inside a block
    ids = tiny.tokenize([PROMPT]).input_ids
    d = _delta(tiny)

    def logits(hook_name):
        with hook_context(tiny.model, [(tiny.hook_point(hook_name), lambda a: a + d)]), torch.no_grad():
            return tiny.model(input_ids=ids).logits

    ours, alias = logits(name), logits(_legacy(tiny, name))
    with torch.no_grad():
        clean = tiny.model(input_ids=ids).logits
        theirs = tiny.bridge.run_with_hooks(ids, fwd_hooks=[(name, lambda a, hook: a + d)])
    assert (ours - clean).abs().max() > 1e-3  # the edit matters
    torch.testing.assert_close(ours, alias, atol=0, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert count_forward_hooks(tiny.model) == 0


def test_a_steering_vector_and_a_capture_at_tl4_names_are_the_legacy_ones(tiny):
    d = {1: _delta(tiny)}
    new, old = SteeringVector(d, hook="hook_out"), SteeringVector(d, hook="hook_resid_post")
    assert new.hook == "hook_resid_post"  # stored in one spelling
    ids = tiny.tokenize([PROMPT]).input_ids
    outs = []
    for vector in (new, old):
        with apply(tiny, Steering(vector, coef=2.0)), torch.no_grad():
            outs.append(tiny.model(input_ids=ids).logits)
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    reduced = tiny.run_with_cache([PROMPT, "Joseph"], ["blocks.0.hook_out"], reduce="last", keep_norms=True)
    legacy = tiny.run_with_cache([PROMPT, "Joseph"], ["blocks.0.hook_resid_post"], reduce="last", keep_norms=True)
    torch.testing.assert_close(reduced["blocks.0.hook_out"], legacy["blocks.0.hook_resid_post"], atol=0, rtol=0)
    torch.testing.assert_close(reduced.norms["blocks.0.hook_out"], legacy.norms["blocks.0.hook_resid_post"], atol=0, rtol=0)


def test_a_vector_extracted_at_a_tl4_sublayer_name_is_the_legacy_one(tiny):
    from steer.datasets import load_pairs
    from steer.vectors.extract import compute_vector

    pairs = load_pairs("gender")[0][:4]
    attn = _names(tiny)[2].removeprefix("blocks.1.")  # attn.hook_out, or Gemma 3's ln1_post.hook_out
    new = compute_vector(tiny, pairs, [1], hook=attn)
    old = compute_vector(tiny, pairs, [1], hook="hook_attn_out")
    assert new.hook == old.hook == "hook_attn_out"
    torch.testing.assert_close(new.directions[1], old.directions[1], atol=0, rtol=0)


def test_the_cli_takes_tl4_names_and_reports_them_as_given(tmp_path, capsys):
    from safetensors import safe_open

    from analysis.cli import main

    out = tmp_path / "acts.safetensors"
    assert main(["cache", "--expert", "tiny-llama", "--names", "blocks.1.hook_out,embed.hook_out", "-o", str(out),
                 "Kelly is warm"]) == 0
    with safe_open(str(out), "pt") as f:
        assert {"act.blocks.1.hook_out", "act.embed.hook_out"} <= set(f.keys())
    assert main(["cache", "--expert", "tiny-llama", "--names", "blocks.9.hook_out", "-o", str(out), "hi"]) == 2
    assert "layer 9 in 'blocks.9.hook_out' is out of range" in capsys.readouterr().err

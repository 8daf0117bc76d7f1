"""Written-out decode steps (experts.inline): bit for bit the model's own forward, for Llama and Qwen2 blocks, with
and without grouped-query attention, padding, hooks and edited weights; used by generation and by serving."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from experts import inline, packed
from experts.generate import GenerationSettings
from experts.hookpoints import resolve_hook
from experts.hooks import attach, hook_context
from experts.kv import new_cache
from experts.packed import exact_decoding, pack_linears, packed_decoding
from steer.serve.batch import RowRequest
from tests.unit.test_packed import PROMPTS, eight_bit, quantized, quantized_tiny


def _packed(model):
    """`model` with its block linears on 4-bit grids and its lm_head on an 8-bit one, packed (SmolLM2's formats)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(eight_bit(module.weight) if name == "lm_head" else quantized(module.weight))
                if module.bias is not None:
                    module.bias.normal_(0, 0.1)  # transformers starts biases at zero: give them values
    report = pack_linears(model)
    assert report.decoding == "packed" and report.shared_codes == 2 * model.config.num_hidden_layers
    return model


def _model(kind: str):
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(1)
    if kind == "qwen2":  # q, k and v with biases
        return _packed(Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2)).eval())
    return _packed(LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=4)).eval())  # no grouped queries


def _inputs(rows: int):
    ids = torch.randint(3, 96, (rows, 7), generator=torch.Generator().manual_seed(rows))
    mask = torch.ones_like(ids)
    for row in range(1, rows):
        mask[row, : row * 2 % 6] = 0  # left padding of different widths (none on some rows)
    return ids, mask


def _decode(model, ids, mask, steps: int, written_out: bool, before_step=None) -> torch.Tensor:
    """The logits of `steps` greedy decode steps after the prompts' forward, each step from `InlineSteps` or from the
    model's forward; `before_step(i)` runs before step i."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache, out = new_cache(model.config), []
    inline_steps = inline.InlineSteps(model)
    with torch.inference_mode():
        with packed_decoding(prompts=True):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1]
        for step in range(steps):
            if before_step is not None:
                before_step(step)
            token = logits.argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            with packed_decoding():
                if written_out:
                    logits = inline_steps.logits(token, mask, positions, cache)
                else:
                    logits = model(input_ids=token, attention_mask=mask, position_ids=positions, cache=cache,
                                   use_cache=True, logits_to_keep=1).logits[:, -1]
            out.append(logits)
    return torch.stack(out)


def _counted(model, run):
    before = inline.report(model)
    result = run()
    after = inline.report(model)
    return result, {key: after.get(key, 0) - before.get(key, 0) for key in ("inline", "module")}


@pytest.mark.parametrize("kind", ["llama-gqa", "llama", "qwen2"])
@pytest.mark.parametrize("rows", [1, 3, packed.WIDE_ROWS_8BIT + 1, packed.WIDE_ROWS])  # the last two: copies
def test_a_written_out_step_is_the_models_forward_bit_for_bit(kind, rows):
    model = quantized_tiny().model if kind == "llama-gqa" else _model(kind)
    ids, mask = _inputs(rows)
    written, counts = _counted(model, lambda: _decode(model, ids, mask, 6, True))
    assert counts == {"inline": 6 * 2, "module": 0}  # every block of every step was written out
    assert torch.equal(written, _decode(model, ids, mask, 6, False))


def test_hooked_blocks_run_as_torch_runs_them_and_the_step_stays_exact():
    model = quantized_tiny().model
    ids, mask = _inputs(3)
    steered = (resolve_hook("blocks.0.hook_resid_post", "llama", 2), lambda h: h + 0.5)
    reader = (resolve_hook("blocks.1.hook_mlp_out", "llama", 2), lambda h: None)
    before = (resolve_hook("blocks.1.hook_resid_pre", "llama", 2), lambda h: h * 1.5)
    cases = [([steered], 8, 0),  # hooks on a block's output only: written out, the hooks called as torch calls them
             ([steered, reader], 4, 4),  # a hook inside block 1: it runs as its module
             ([steered, before], 4, 4)]  # a hook before block 1 (on its input)
    for hooks, written_blocks, module_blocks in cases:
        with hook_context(model, hooks):
            written, counts = _counted(model, lambda: _decode(model, ids, mask, 4, True))
            assert counts == {"inline": written_blocks, "module": module_blocks}
            assert torch.equal(written, _decode(model, ids, mask, 4, False))
    plain = _decode(model, ids, mask, 4, True)
    layer = model.model.layers[1]
    with_kwargs = layer.register_forward_hook(lambda module, args, kwargs, out: out + kwargs["position_ids"][..., None]
                                              * 0.01 + args[0] * 0.1, with_kwargs=True)
    try:
        written, counts = _counted(model, lambda: _decode(model, ids, mask, 4, True))
        assert counts == {"inline": 8, "module": 0} and not torch.equal(written, plain)
        assert torch.equal(written, _decode(model, ids, mask, 4, False))
    finally:
        with_kwargs.remove()
    around = model.model.register_forward_hook(lambda module, args, out: None)  # around the blocks: the model's forward
    try:
        written, counts = _counted(model, lambda: _decode(model, ids, mask, 4, True))
        assert counts == {"inline": 0, "module": 8}
        assert torch.equal(written, _decode(model, ids, mask, 4, False))
    finally:
        around.remove()


def test_a_weight_edited_before_a_batch_sends_its_block_to_the_module():
    model = quantized_tiny().model
    ids, mask = _inputs(3)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(0.01)  # its code is stale: block 1 runs as its module (float32)
    written, counts = _counted(model, lambda: _decode(model, ids, mask, 4, True))
    assert counts == {"inline": 4, "module": 4}
    assert torch.equal(written, _decode(model, ids, mask, 4, False))


def test_steps_that_are_not_packed_go_through_the_models_forward():
    model = quantized_tiny().model
    ids, mask = _inputs(2)
    with torch.inference_mode():
        cache = new_cache(model.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        _, counts = _counted(model, lambda: inline.InlineSteps(model).logits(ids, mask, positions, cache))  # prompts
    assert counts == {"inline": 0, "module": 0}


def test_a_hook_registered_during_a_batch_is_seen_at_the_next_step():
    model = quantized_tiny().model
    ids, mask = _inputs(3)
    point = resolve_hook("blocks.1.hook_resid_pre", "llama", 2)
    handles = []

    def attach_at_two(step):
        if step == 2:
            handles.append(attach(model, [(point, lambda h: h * 1.5)], edits=True))

    try:
        written, counts = _counted(model, lambda: _decode(model, ids, mask, 5, True, attach_at_two))
        assert counts == {"inline": 5 + 2, "module": 3}
        handles.pop().remove()
        assert torch.equal(written, _decode(model, ids, mask, 5, False, attach_at_two))
        assert not torch.equal(written, _decode(model, ids, mask, 5, True))  # the hook changed the steps after it
    finally:
        for handle in handles:
            handle.remove()


def test_generation_and_serving_write_their_steps_out_and_give_the_same_tokens(tmp_path):
    from steer.serve.running import Joining, RunningBatch

    expert = quantized_tiny()

    def generated():
        texts = expert.generate(PROMPTS, max_new_tokens=8, stop_at_eos=False).token_ids
        out = []
        running = RunningBatch(expert, [], tmp_path)
        running.join([Joining(RowRequest(prompt, (), GenerationSettings(max_new_tokens=6), (), None), out.append,
                              lambda: False) for prompt in expert.format_prompts(PROMPTS)])
        while len(running):
            running.step()
        return texts, "".join(delta.text for delta in out)

    written, counts = _counted(expert.model, generated)
    assert counts["inline"] >= 2 * (7 + 5) and counts["module"] == 0
    with exact_decoding():
        _, exact_counts = _counted(expert.model, lambda: expert.generate(PROMPTS, max_new_tokens=4))
    assert exact_counts == {"inline": 0, "module": 0}
    with inline.through_modules():
        assert _counted(expert.model, generated) == (written, {"inline": 0, "module": 0})

"""Packed decoding (experts.packed): exact 4-bit codes only, float32 everywhere but decoding (the steps from the code,
the prompts' forward in bfloat16 where native), every steering feature kept, no stale pack after an edit, a clean
fallback."""

import copy

import pytest
import torch

from analysis.cli import common
from experts import packed
from experts.errors import SteerlabError
from experts.expert import Expert
from experts.hooks import count_forward_hooks
from experts.packed import (
    GROUP,
    PackedLinear,
    int4_code,
    int8_code,
    pack_linears,
    packed_decoding,
    resolve_decoding,
)
from steer.vectors.apply import Steering, apply
from steer.vectors.vector import Provenance, SteeringVector

PROMPTS = ["Kelly is warm", "The capital of France is Paris and the", "def add(a, b):"]


def four_bit(shape, generator, levels=16):
    """A weight on a grid of `levels` evenly spaced values per group of 32 inputs (its own scale and offset)."""
    rows, cols = shape
    code = torch.randint(0, levels, (rows, cols // GROUP, GROUP), generator=generator).float()
    code[..., 0], code[..., 1] = 0, levels - 1  # every group spans its grid
    scale = (torch.rand(rows, cols // GROUP, 1, generator=generator) + 1) * 0.1 / levels
    offset = -scale * (levels - 1) / 2 + torch.randn(rows, cols // GROUP, 1, generator=generator) * 0.01
    return (code * scale + offset).reshape(rows, cols)


def quantized(weight):
    """`weight` rounded to 16 levels per group of 32 inputs, from each group's minimum to its maximum (Q4_1's way)."""
    groups = weight.reshape(-1, GROUP)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    step = (high - low) / 15
    return (((groups - low) / step).round() * step + low).reshape(weight.shape)


def eight_bit(weight):
    """`weight` rounded to Q8_0's code: d · q per group of 32 inputs, d = the group's largest |w| / 127, q whole."""
    groups = weight.reshape(-1, GROUP)
    scale = groups.abs().amax(-1, keepdim=True) / 127
    return ((groups / scale).round() * scale).reshape(weight.shape)


def quantized_tiny() -> Expert:
    """tiny-llama with every block linear quantized to 4 bits and lm_head (the tied embedding) to 8, then packed:
    SmolLM2's GGUF formats, Q4_1 and Q8_0."""
    expert = Expert.load("tiny-llama", decoding="exact")
    with torch.no_grad():
        for name, module in expert.model.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(eight_bit(module.weight) if name == "lm_head" else quantized(module.weight))
    expert.packing = pack_linears(expert.model)
    return expert


@pytest.fixture
def packed_tiny() -> Expert:
    return quantized_tiny()


def vector(expert, layers=(0, 1), scale=3.0):
    g = torch.Generator().manual_seed(0)
    return SteeringVector({l: scale * torch.randn(expert.d_model, generator=g) for l in layers},
                          provenance=Provenance(fingerprint=expert.fingerprint))


def test_an_exact_4_bit_code_is_found_and_computes_like_bfloat16():
    generator = torch.Generator().manual_seed(1)
    weight = four_bit((64, 96), generator)
    weight[:8] = four_bit((8, 96), generator, levels=5)  # groups spanning fewer levels: a coarser step, still exact
    weight[8, :GROUP] = 0.25  # a constant group
    code = int4_code(weight)
    assert code is not None
    x = torch.randn(5, 96, generator=generator)
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), code.packed, GROUP, code.scales_and_offsets)
    reference = x.bfloat16().float() @ weight.T
    torch.testing.assert_close(got.float(), reference, atol=0.05, rtol=0.02)


def test_an_exact_8_bit_code_is_split_in_two_4_bit_codes_that_compute_like_bfloat16(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    weight = eight_bit(torch.randn(64, 96, generator=generator))
    weight[9, :GROUP] = 0.0  # a zero group
    assert int4_code(weight) is None
    code = int8_code(weight)
    assert code is not None and code.repeats == 2
    x = torch.randn(5, 96, generator=generator)
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16().repeat(1, 2), code.packed, GROUP,
                                                     code.scales_and_offsets)
    reference = x.bfloat16().float() @ weight.T
    torch.testing.assert_close(got.float(), reference, atol=0.05, rtol=0.02)
    monkeypatch.setattr(packed, "CHUNK_ROWS", 24)  # worked on in chunks of rows (the last one shorter): the same code
    chunked = int8_code(weight)
    assert torch.equal(chunked.packed, code.packed) and torch.equal(chunked.scales_and_offsets, code.scales_and_offsets)
    linear = torch.nn.Linear(96, 64, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
        assert pack_linears(linear).packed_linears == 1 and isinstance(linear, PackedLinear)
        with packed_decoding():
            torch.testing.assert_close(linear(x), reference, atol=0.05, rtol=0.02)
        assert torch.equal(linear(x), x @ weight.T)  # outside decoding: float32


def test_weights_without_a_4_or_8_bit_code_are_left_alone():
    generator = torch.Generator().manual_seed(2)
    assert int4_code(four_bit((64, 96), generator, levels=32)) is None  # 5 bits
    assert int4_code(torch.randn(64, 96, generator=generator)) is None  # float
    assert int4_code(four_bit((64, 96), generator)[:, :80].contiguous()) is None  # 80 inputs: not whole groups of 32
    assert int4_code(four_bit((64, 96), generator).double()) is None
    assert int8_code(four_bit((64, 96), generator)) is None  # an offset grid is not symmetric about zero
    assert int8_code(torch.randn(64, 96, generator=generator)) is None
    assert int8_code(eight_bit(torch.randn(64, 96, generator=generator)) * 1.001 + 1e-3) is None


def test_packing_is_reported_and_outside_decoding_nothing_changes(packed_tiny):
    report = packed_tiny.packing
    linears = sum(isinstance(m, torch.nn.Linear) for m in packed_tiny.model.modules())
    assert report.decoding == "packed" and report.packed_linears == linears and report.packed_share == 1
    assert packed_tiny.info()["decoding"]["packed_linears"] == linears
    batch = packed_tiny.tokenize(PROMPTS)
    with torch.no_grad():
        packed_logits = packed_tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        for module in packed_tiny.model.modules():
            if isinstance(module, PackedLinear):
                module.__class__ = torch.nn.Linear  # the same weights, unpacked
        plain = packed_tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(packed_logits, plain)  # reading (capture, scores) is float32, bit for bit


def test_decode_steps_use_the_code_and_stay_close_to_float32(packed_tiny):
    batch = packed_tiny.tokenize(PROMPTS)
    with torch.no_grad():
        exact = packed_tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with packed_decoding():
            fast = packed_tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert not torch.equal(exact, fast)  # the kernel ran
    assert (fast - exact).abs().max() <= 0.05 * exact.abs().max()  # bfloat16 inputs: a small change
    steps = {}

    def keep(logits, state):
        steps.setdefault(state.step, []).append(logits.clone())
        return logits

    packed_tiny.generate(PROMPTS, max_new_tokens=3, stop_at_eos=False, logits_hook=keep)
    bfloat16 = packed.bfloat16_matmuls()  # the prompts' forward: bfloat16 where native
    for module in packed_tiny.model.modules():
        if isinstance(module, PackedLinear):
            module.__class__ = torch.nn.Linear
    packed_tiny.generate(PROMPTS, max_new_tokens=3, stop_at_eos=False, logits_hook=keep)
    (packed0, exact0), (packed1, exact1) = steps[0], steps[1]
    assert torch.equal(packed0, exact0) != bfloat16
    assert (packed0 - exact0).abs().max() <= 0.05 * exact0.abs().max()
    assert not torch.equal(packed1, exact1)  # the steps after it decode from the code


@pytest.mark.parametrize("native", [True, False])
def test_a_prompts_forward_multiplies_in_bfloat16_where_the_cpu_has_it_else_in_float32(packed_tiny, monkeypatch,
                                                                                       native):
    linears = [m for m in packed_tiny.model.modules() if isinstance(m, PackedLinear)]
    if native and not packed.bfloat16_matmuls():  # copies made as `pack_linears` makes them on such a CPU
        packed._bfloat16_copies(linears)
    monkeypatch.setattr(packed, "bfloat16_matmuls", lambda: native)
    attention, g = packed_tiny.model.model.layers[0].self_attn, torch.Generator().manual_seed(0)
    for linear in (packed_tiny.model.model.layers[0].mlp.down_proj, attention.q_proj, attention.v_proj):
        x = torch.randn(1, 40, linear.in_features, generator=g)
        with torch.no_grad(), packed_decoding(prompts=True):
            got = linear(x)
        want = (torch.nn.functional.linear(x.bfloat16(), linear.weight.bfloat16()).float() if native
                else torch.nn.functional.linear(x, linear.weight))
        assert torch.equal(got, want)  # from its copy: the numbers of rounding the weight at this call
    twin = copy.deepcopy(packed_tiny.model)  # a copy shares the bfloat16 copies (oneDNN's layout cannot be copied)
    assert twin.lm_head.wide is packed_tiny.model.lm_head.wide
    x = torch.randn(1, 40, twin.lm_head.in_features, generator=g)
    with torch.no_grad(), packed_decoding(prompts=True):
        assert torch.equal(twin.lm_head(x), torch.nn.functional.linear(x, twin.lm_head.weight))  # its pack is stale


def test_steps_of_many_rows_multiply_from_bfloat16_copies_with_the_numbers_of_rounding_the_weight(packed_tiny):
    model = packed_tiny.model
    linears = [m for m in model.modules() if isinstance(m, PackedLinear)]
    native = packed.bfloat16_matmuls()
    assert packed_tiny.packing.bfloat16 == native
    assert packed_tiny.packing.bfloat16_copies_mb == (
        round(2 * sum(m.weight.numel() for m in linears) / 2**20, 1) if native else 0)
    copies = [m.wide for m in linears if m.shared is None] + list({m.shared[0]: m.shared[0].wide for m in linears
                                                                   if m.shared is not None}.values())
    assert all((made is not None) == native for made in copies)
    if not native:  # made here as `pack_linears` makes them on such a CPU, to test them on any
        packed._bfloat16_copies(linears)
    attention, head = model.model.layers[0].self_attn, model.lm_head
    assert head.code.repeats == 2 and attention.k_proj.shared is not None  # an 8-bit code, a shared member, a plain
    g = torch.Generator().manual_seed(0)
    for linear in (attention.k_proj, attention.o_proj, head):
        wide_rows = packed.WIDE_ROWS_8BIT if linear is head else packed.WIDE_ROWS
        few, many = (torch.randn(rows, linear.in_features, generator=g) for rows in (wide_rows - 1, wide_rows))
        with torch.no_grad(), packed_decoding():
            got_few, got_many = linear(few), linear(many)
        code = linear.code if linear.shared is None else linear.shared[0].code
        columns = slice(None) if linear.shared is None else slice(*linear.shared[1:])
        assert torch.equal(got_few, packed._run(code, few)[:, columns].float())  # a few rows: the kernel
        assert torch.equal(got_many, torch.nn.functional.linear(many.bfloat16(), linear.weight.bfloat16()).float())
        assert (got_many - many @ linear.weight.T).abs().max() <= 0.05 * got_many.abs().max()
        with torch.no_grad():
            linear.weight.mul_(2)  # an edited weight: its copy is stale as its code is, so float32
            with packed_decoding():
                assert torch.equal(linear(many), many @ linear.weight.T)


def test_every_steering_property_holds_on_the_packed_path(packed_tiny, no_leak):
    no_leak(packed_tiny)
    plain = packed_tiny.generate(PROMPTS, max_new_tokens=8, do_sample=True, seed=4)
    for coef in (0.0, [0.0] * len(PROMPTS), lambda step: 0.0):
        with apply(packed_tiny, Steering(vector(packed_tiny), coef=coef)):
            assert packed_tiny.generate(PROMPTS, max_new_tokens=8, do_sample=True, seed=4).token_ids == plain.token_ids
    v = vector(packed_tiny, scale=8.0)
    with apply(packed_tiny, Steering(v, coef=[0.0, 1.0, -1.0])):
        mixed = packed_tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    for row, c in enumerate([0.0, 1.0, -1.0]):
        with apply(packed_tiny, Steering(v, coef=c)):
            assert packed_tiny.generate(PROMPTS[row], max_new_tokens=6).token_ids[0] == mixed[row]
    greedy = packed_tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    assert mixed[0] == greedy[0] and mixed[1:] != greedy[1:]
    batched = packed_tiny.generate(PROMPTS, max_new_tokens=10)
    assert batched.token_ids == [packed_tiny.generate(p, max_new_tokens=10).token_ids[0] for p in PROMPTS]
    with pytest.raises(RuntimeError, match="injected"):
        with apply(packed_tiny, Steering(v)):
            packed_tiny.generate(PROMPTS, max_new_tokens=2, logits_hook=_fail)
    assert count_forward_hooks(packed_tiny.model) == 0
    assert packed_tiny.generate(PROMPTS, max_new_tokens=10).token_ids == batched.token_ids


def _fail(logits, state):
    if state.step == 1:
        raise RuntimeError("injected")
    return logits


def test_an_edited_or_replaced_weight_is_never_decoded_from_a_stale_pack(packed_tiny):
    module = packed_tiny.model.model.layers[0].mlp.up_proj
    x = torch.randn(2, 3, module.in_features)
    with torch.no_grad(), packed_decoding():
        assert module.uses_code(x)
        module.weight.add_(0.5)  # in place: the pack no longer holds this weight
        assert not module.uses_code(x)
        torch.testing.assert_close(module(x), torch.nn.functional.linear(x, module.weight), atol=0, rtol=0)
    other = packed_tiny.model.model.layers[1].mlp.up_proj
    other.weight = torch.nn.Parameter(other.weight.detach().clone())
    with torch.no_grad(), packed_decoding():
        assert not other.uses_code(torch.randn(1, other.in_features))
    with packed_decoding():
        assert not packed_tiny.model.model.layers[1].mlp.gate_proj.uses_code(torch.randn(1, 64))  # gradients on


def test_linears_that_read_one_input_share_one_code_bit_for_bit(packed_tiny):
    layers = packed_tiny.model.model.layers
    assert packed_tiny.packing.shared_codes == 2 * len(layers)  # q/k/v and gate/up in every block
    attention = layers[0].self_attn
    members = [attention.q_proj, attention.k_proj, attention.v_proj]
    group = members[0].shared[0]
    assert all(m.shared[0] is group and m.code is None for m in members)

    def alone(module, x):
        code = int4_code(module.weight.detach())
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]).bfloat16(), code.packed, GROUP,
                                                         code.scales_and_offsets)
        return y.float().view(*x.shape[:-1], -1)

    x, other = torch.randn(3, 1, 64), torch.randn(3, 1, 64)
    with torch.no_grad(), packed_decoding():
        for module in members:
            assert torch.equal(module(x), alone(module, x))
        assert group._last is None  # every member took its columns: no activation held
        q, k = members[0](x), members[1](other)  # another input between two members' calls
        assert torch.equal(q, alone(members[0], x)) and torch.equal(k, alone(members[1], other))
        assert torch.equal(members[2](x), alone(members[2], x))
        members[1].weight.add_(0.5)  # an edited member decodes in float32; the others keep the shared code
        assert torch.equal(members[1](x), torch.nn.functional.linear(x, members[1].weight))
        assert torch.equal(members[0](x), alone(members[0], x)) and torch.equal(members[2](x), alone(members[2], x))


def test_defaults_and_choices(monkeypatch, tiny_llama):
    assert tiny_llama.packing.decoding == "exact"  # a tiny expert is not a packaged one: "auto" leaves it
    report = Expert.load("tiny-llama", decoding="packed").packing
    assert report.decoding == "exact" and report.reason == "no linear holds 4- or 8-bit weights"
    assert resolve_decoding(None) == "auto"
    assert common.DECODINGS == packed.DECODINGS
    monkeypatch.setenv(packed.DECODING_ENV, "exact")
    assert resolve_decoding(None) == "exact" and resolve_decoding("packed") == "packed"
    monkeypatch.setenv(packed.DECODING_ENV, "fast")
    with pytest.raises(SteerlabError, match=r"unknown \$STEERLAB_DECODING 'fast'; choose one of auto, packed, compiled, exact"):
        Expert.load("tiny-llama")
    with pytest.raises(SteerlabError, match="unknown decoding 'int3'; choose one of auto, packed, compiled, exact"):
        Expert.load("tiny-llama", decoding="int3")


def test_a_build_without_the_kernel_falls_back_to_exact(monkeypatch, packed_tiny):
    def missing(*args, **kwargs):
        raise NotImplementedError("no int4 kernel")

    monkeypatch.setattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", missing)
    report = pack_linears(Expert.load("tiny-llama", decoding="exact").model)
    assert report.decoding == "exact" and "no int4 CPU kernel" in report.reason


def test_large_batches_and_pinned_blocks_decode_exactly(packed_tiny):
    def step_one_logits(expert, prompts):
        kept = []
        expert.generate(prompts, max_new_tokens=2, stop_at_eos=False, batch_size=len(prompts),
                        logits_hook=lambda logits, state: kept.append(logits.clone()) or logits)
        return kept[1][0]

    exact = Expert.load("tiny-llama", decoding="exact")
    exact.model.load_state_dict(packed_tiny.model.state_dict())
    one, many = PROMPTS[:1], PROMPTS[:1] * (packed.MAX_PACKED_ROWS + 1)
    assert not torch.equal(step_one_logits(packed_tiny, one), step_one_logits(exact, one))  # a small batch: packed
    assert torch.equal(step_one_logits(packed_tiny, many), step_one_logits(exact, many))  # 17 rows: exactly
    with packed.exact_decoding():
        assert torch.equal(step_one_logits(packed_tiny, one), step_one_logits(exact, one))  # pinned
    assert packed.packs_batch(packed.MAX_PACKED_ROWS) and not packed.packs_batch(packed.MAX_PACKED_ROWS + 1)

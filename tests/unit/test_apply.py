"""Steering is exact where it should act, absent where it should not, and never leaks."""

import pytest
import torch

from experts.errors import SteerlabError
from experts.generate import DecodeState, publish_state
from experts.hooks import count_forward_hooks
from steer.vectors.apply import ProbeGate, Steering, apply, patch
from steer.vectors.vector import Provenance, SteeringVector

PROMPTS = ["Kelly is warm", "The capital of France is Paris and the", "def add(a, b):"]


def vector(expert, layers=(0, 1), scale=3.0):
    g = torch.Generator().manual_seed(0)
    return SteeringVector({l: scale * torch.randn(expert.d_model, generator=g) for l in layers},
                          provenance=Provenance(fingerprint=expert.fingerprint))


def test_coefficient_zero_is_bit_identical(tiny):
    plain = tiny.generate(PROMPTS, max_new_tokens=8, do_sample=True, seed=4)
    for operator in ("add", "ablate", "norm_preserving"):
        for coef in (0.0, [0.0] * len(PROMPTS), lambda step: 0.0):  # no hook; hooks that edit nothing
            with apply(tiny, Steering(vector(tiny), coef=coef, operator=operator)):
                steered = tiny.generate(PROMPTS, max_new_tokens=8, do_sample=True, seed=4)
            assert steered.token_ids == plain.token_ids
    batch = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        before = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with apply(tiny, Steering(vector(tiny), coef=[0.0, 0.0, 0.0])):
            after = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(before, after)


def test_steering_changes_output_and_is_removed(tiny):
    plain = tiny.generate(PROMPTS, max_new_tokens=8).token_ids
    with apply(tiny, Steering(vector(tiny, scale=20.0), coef=1.0)):
        assert tiny.generate(PROMPTS, max_new_tokens=8).token_ids != plain
    assert count_forward_hooks(tiny.model) == 0
    assert tiny.generate(PROMPTS, max_new_tokens=8).token_ids == plain


def test_operators_do_what_they_say():
    from steer.vectors.apply import OPERATORS

    h = torch.randn(2, 3, 8)
    v = torch.randn(8)
    c = torch.tensor(1.0)
    ablated = OPERATORS["ablate"](h, v, c)
    assert torch.allclose(ablated @ (v / v.norm()), torch.zeros(2, 3), atol=1e-5)
    kept = OPERATORS["norm_preserving"](h, v, torch.tensor(5.0))
    assert torch.allclose(kept.norm(dim=-1), h.norm(dim=-1), atol=1e-5)
    assert torch.allclose(OPERATORS["add"](h, v, c), h + v)


def _reference_logits(expert, steering, prompt_ids, generated):
    """No KV cache: one forward over prompt + generated tokens, with the same position rule."""
    ids = torch.tensor([prompt_ids + generated])
    mask = torch.ones_like(ids)
    state = DecodeState.for_batch(mask, prompt_lengths=torch.tensor([len(prompt_ids)]))
    with torch.no_grad(), apply(expert, steering), publish_state(state):
        logits = expert.model(input_ids=ids, attention_mask=mask).logits[0]
    return logits[len(prompt_ids) - 1 : -1]


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "from:6"])
def test_positions_under_kv_cache_match_a_reference_without_cache(tiny, positions):
    steering = Steering(vector(tiny, scale=6.0), coef=1.0, positions=positions)
    captured = []

    def keep_logits(logits, state):
        captured.append(logits.clone())
        return logits


    with apply(tiny, steering):
        result = tiny.generate(PROMPTS, max_new_tokens=6, stop_at_eos=False, logits_hook=keep_logits)
    steps = torch.stack(captured, dim=1)  # (rows, steps, vocab)
    for row, prompt in enumerate(PROMPTS):
        prompt_ids = tiny.tokenize(tiny.format_prompts([prompt])).input_ids[0].tolist()
        reference = _reference_logits(tiny, steering, prompt_ids, result.token_ids[row])
        torch.testing.assert_close(steps[row, : reference.shape[0]], reference, atol=2e-4, rtol=2e-4)


def test_generated_positions_leave_the_prompt_alone(tiny):
    batch = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        plain = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with apply(tiny, Steering(vector(tiny, scale=9.0), positions="generated")), publish_state(
            DecodeState.for_batch(batch.attention_mask)
        ):
            steered = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(plain, steered)


def test_padding_is_never_steered(tiny):
    name = "blocks.0.hook_resid_post"
    plain = tiny.run_with_cache(PROMPTS, [name])
    with apply(tiny, Steering(vector(tiny, layers=(0,)), coef=1.0)):
        steered = tiny.run_with_cache(PROMPTS, [name])
    pad = ~plain.attention_mask.bool()
    assert pad.any() and torch.equal(plain[name][pad], steered[name][pad])
    assert not torch.equal(plain[name][~pad], steered[name][~pad])


def test_per_row_coefficients_equal_separate_runs(tiny):
    v = vector(tiny, scale=8.0)
    with apply(tiny, Steering(v, coef=[0.0, 1.0, -1.0])):
        mixed = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    for row, c in enumerate([0.0, 1.0, -1.0]):
        with apply(tiny, Steering(v, coef=c)):
            assert tiny.generate(PROMPTS[row], max_new_tokens=6).token_ids[0] == mixed[row]
    with pytest.raises(SteerlabError, match="2 per-prompt coefficients given for a call with 3 prompts"):
        with apply(tiny, Steering(v, coef=[1.0, 2.0])):
            tiny.generate(PROMPTS, max_new_tokens=2)
    assert count_forward_hooks(tiny.model) == 0


def test_schedule_by_step(tiny):
    v = vector(tiny, scale=8.0)
    with apply(tiny, Steering(v, coef=lambda step: 0.0 if step < 3 else 1.0)):
        scheduled = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    plain = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    with apply(tiny, Steering(v, coef=1.0, positions="from:0")):
        always = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    # steps 0..2 are unsteered, so the first three tokens match the plain run
    assert [t[:3] for t in scheduled] == [t[:3] for t in plain]
    assert scheduled != plain and scheduled != always


def test_several_vectors_and_nested_scopes_compose(tiny):
    v, w = vector(tiny, layers=(0,), scale=5.0), vector(tiny, layers=(1,), scale=5.0)
    with apply(tiny, [Steering(v), Steering(w)]):
        together = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    with apply(tiny, Steering(v)):
        with apply(tiny, Steering(w)):
            nested = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
        assert count_forward_hooks(tiny.model) == 1
    with apply(tiny, Steering(v + w)):
        summed = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    assert together == nested == summed


def test_probe_gate_is_a_closed_loop(tiny):
    v = vector(tiny, layers=(1,), scale=8.0)
    never = ProbeGate(direction=torch.zeros(tiny.d_model), bias=-10.0)
    always = ProbeGate(direction=torch.zeros(tiny.d_model), bias=10.0)
    plain = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    with apply(tiny, Steering(v, gate=never)):
        assert tiny.generate(PROMPTS, max_new_tokens=6).token_ids == plain
    with apply(tiny, Steering(v, gate=always)):
        gated = tiny.generate(PROMPTS, max_new_tokens=6).token_ids
    with apply(tiny, Steering(v)):
        assert tiny.generate(PROMPTS, max_new_tokens=6).token_ids == gated


def test_fault_injection_no_hook_survives(tiny):
    v = vector(tiny)
    bad = SteeringVector({0: torch.ones(tiny.d_model), 7: torch.ones(tiny.d_model)}, provenance=Provenance())
    with pytest.raises(Exception):
        patch(tiny, [Steering(v), Steering(bad)])
    assert count_forward_hooks(tiny.model) == 0
    with pytest.raises(RuntimeError, match="injected"):
        with apply(tiny, Steering(v)):
            raise RuntimeError("injected")
    assert count_forward_hooks(tiny.model) == 0
    handle = patch(tiny, Steering(v))
    handle.remove()
    handle.remove()
    assert count_forward_hooks(tiny.model) == 0


def test_bad_settings_are_named(tiny):
    v = vector(tiny)
    with pytest.raises(SteerlabError, match="unknown operator 'scale'"):
        Steering(v, operator="scale")
    with pytest.raises(SteerlabError, match="unknown positions rule 'last'"):
        Steering(v, positions="last")
    with pytest.raises(SteerlabError, match="finite"):
        Steering(v, coef=float("nan"))

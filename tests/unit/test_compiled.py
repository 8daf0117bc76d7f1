"""Compiled decode steps (experts.compiled): the packed step's numbers with steering as tensors, every other case
eager with its reason, the model's own hooks put back whatever happens. One compile (a few seconds) for the module."""

import threading

import pytest
import torch

from experts import compiled, packed
from experts.expert import Expert
from experts.generate import GenerationSettings
from experts.hooks import HookSet, count_forward_hooks, live_handles
from experts.packed import exact_decoding
from steer.vectors.apply import Steering, apply
from steer.vectors.vector import Provenance, SteeringVector
from tests.unit.test_packed import quantized_tiny

PROMPTS = ["Kelly is warm", "The capital of France is Paris and the"]
STEPS = 6


@pytest.fixture(scope="module")
def fast() -> Expert:
    """tiny-llama quantized to SmolLM2's formats, packed, its decode steps compiled."""
    expert = quantized_tiny()
    compiled.enable(expert.model)
    return expert


def vector(expert, scale=4.0):
    g = torch.Generator().manual_seed(1)
    return SteeringVector({1: scale * torch.randn(expert.d_model, generator=g)},
                          provenance=Provenance(fingerprint=expert.fingerprint))


def _keep(logits, state):  # a logits hook that changes nothing: the batch decodes eagerly
    return logits


def run(expert, eager=False, **settings):
    """Greedy tokens and each step's logits, compiled or (with a no-op logits hook) eager."""
    seen = []
    formatted = expert.format_prompts(PROMPTS)
    ids, _ = expert.generate_batch(formatted, GenerationSettings(max_new_tokens=STEPS, stop_at_eos=False, **settings),
                                   [0, 1], on_step=lambda step, logits, tokens: seen.append(logits.clone()),
                                   **({"logits_hook": _keep} if eager else {}))
    return ids, torch.stack(seen)


def test_compiled_steps_compute_the_packed_steps_with_every_additive_steering(fast, no_leak):
    no_leak(fast)
    v = vector(fast)
    before = compiled.report(fast.model).get("compiled", 0)
    steered = {}
    for name, coef, positions in (("zeros", [0.0, 0.0], "all"), ("constant", 1.0, "all"),
                                  ("per-prompt", [1.0, -1.0], "all"),
                                  ("schedule", lambda step: 1.0 if step < 3 else -2.0, "all"),
                                  ("from:K", 1.0, "from:9")):
        with apply(fast, Steering(v, coef=coef, positions=positions)):
            ids, logits = run(fast)
            want_ids, want = run(fast, eager=True)
        assert ids == want_ids, name
        torch.testing.assert_close(logits, want, atol=0.05, rtol=0, msg=name)  # bf16 logits: a few ulps
        steered[name] = logits
    assert compiled.report(fast.model)["compiled"] == before + 5  # one graph (one hooked point) for all five
    plain_ids, plain = run(fast, eager=True)
    assert torch.equal(steered["zeros"][0], plain[0])  # the prompts' forward is eager, float32
    for name in ("constant", "per-prompt", "schedule"):  # the offsets reach the graph: far beyond the tolerance
        assert (steered[name][1:] - plain[1:]).abs().max() > 0.5, name
    assert (steered["per-prompt"][1:, 0] - steered["constant"][1:, 0]).abs().max() < 0.05  # row 0: +1 in both
    assert (steered["per-prompt"][1:, 1] - steered["constant"][1:, 1]).abs().max() > 0.5  # row 1: -1 against +1
    assert (steered["schedule"][1:3] - steered["constant"][1:3]).abs().max() < 0.05  # steps 1-2 at +1
    assert count_forward_hooks(fast.model) == 0 and not live_handles(fast.model)
    assert fast.model.config._attn_implementation == "sdpa"  # set to one-token attention only while tracing


def test_what_a_compiled_step_cannot_run_decodes_eagerly_and_says_why(fast):
    v = vector(fast)
    counts = compiled.report(fast.model)
    with apply(fast, Steering(v, coef=1.0, operator="ablate")):
        run(fast)
    run(fast, eager=True)
    with exact_decoding():
        run(fast)
    worker = threading.Thread(target=run, args=(fast,))  # a server's decoding runs in threads beside its reader
    worker.start()
    worker.join()
    module = fast.model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        module.weight.add_(0.0)  # in place: the pack may no longer hold this weight
    run(fast)
    after = compiled.report(fast.model)
    for why in ("an edit that is not an addition", "a logits hook", "the batch decodes exactly",
                "off the main thread", "weights edited since they were packed"):
        assert after.get(why, 0) == counts.get(why, 0) + 1, why
    assert after["compiled"] == counts["compiled"]


def test_a_batch_that_multiplies_from_bfloat16_copies_decodes_eagerly(fast):
    counts, why = compiled.report(fast.model), "bfloat16 copies for its rows"
    rows = packed.WIDE_ROWS  # from here a step multiplies from the copies where the CPU made them
    formatted = fast.format_prompts((PROMPTS * rows)[:rows])
    fast.generate_batch(formatted, GenerationSettings(max_new_tokens=3, stop_at_eos=False), list(range(rows)))
    copies = packed.has_bfloat16_copies(fast.model)
    assert copies == packed.bfloat16_matmuls()
    assert compiled.report(fast.model).get(why, 0) == counts.get(why, 0) + copies


def test_a_failed_compile_falls_back_to_eager_once_per_shape(monkeypatch):
    expert = quantized_tiny()
    want = expert.generate(PROMPTS, max_new_tokens=4).token_ids

    def broken(fn, **options):
        def step(*args):
            raise RuntimeError("no compiler here")
        return step

    monkeypatch.setattr(torch, "compile", broken)
    compiled.enable(expert.model)
    assert expert.generate(PROMPTS, max_new_tokens=4).token_ids == want
    assert expert.generate(PROMPTS, max_new_tokens=4).token_ids == want
    assert compiled.report(expert.model) == {"compiling failed: RuntimeError": 2}


def test_a_hook_set_runs_instead_of_the_models_hooks_and_puts_them_back(tiny_llama, no_leak):
    no_leak(tiny_llama)
    model = tiny_llama.model
    point = tiny_llama.hook_point("blocks.0.hook_resid_post")
    batch = tiny_llama.tokenize(PROMPTS)

    def logits():
        with torch.no_grad():
            return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits

    plain = logits()
    ours = HookSet(model, [(point, lambda h: h + 1.0)])
    assert count_forward_hooks(model) == 0  # registered apart
    with apply(tiny_llama, Steering(vector(tiny_llama), coef=-3.0)):
        theirs = logits()
        aside = ours.set_aside()
        with aside.installed():
            mine = logits()
        with pytest.raises(RuntimeError, match="inside"):
            with aside.installed():
                raise RuntimeError("inside")
        torch.testing.assert_close(logits(), theirs, atol=0, rtol=0)
    with HookSet(model, []).set_aside().installed():
        torch.testing.assert_close(logits(), plain, atol=0, rtol=0)
    assert not torch.allclose(mine, plain) and not torch.allclose(mine, theirs)
    torch.testing.assert_close(logits(), plain, atol=0, rtol=0)


def test_compiled_decoding_is_a_load_choice_and_is_reported():
    gemma = Expert.load("tiny-gemma", decoding="compiled")  # random weights: nothing to pack, so nothing to compile
    assert gemma.packing.decoding == "exact" and not gemma.packing.compiled_steps
    assert gemma.info()["decoding"]["compiled_steps"] is False

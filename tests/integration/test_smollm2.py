"""The default real expert: hooks agree with TransformerLens, generation agrees with transformers."""

import pytest
import torch

from experts.packed import exact_decoding, packed_decoding
from tests.helpers import assert_capture_matches_bridge

pytestmark = pytest.mark.slow

PROMPTS = ["Write a recommendation letter for Kelly, a 22 year old female student.", "The capital of France is"]


def test_every_fast_name_matches_the_bridge(smollm2):
    # Values reach ~25,000 at position 0 of late layers, where float32 spacing exceeds 1e-4:
    # the bound is 1e-4 absolute plus 1e-4 relative.
    assert_capture_matches_bridge(smollm2, PROMPTS, atol=1e-4, rtol=1e-4)


def test_massive_first_position_activation_is_where_models_md_says(smollm2):
    cache = smollm2.run_with_cache(PROMPTS[:1], ["blocks.12.hook_resid_post"])
    norms = cache.unpadded("blocks.12.hook_resid_post")[0].norm(dim=-1)
    assert norms[0] > 50 * norms[1:].median()


def test_greedy_generation_matches_transformers(smollm2):
    text = smollm2.format_prompts(PROMPTS[:1])[0]
    batch = smollm2.tokenize([text])
    reference = smollm2.model.generate(batch.input_ids, attention_mask=batch.attention_mask,
                                       max_new_tokens=24, do_sample=False)[0, batch.input_ids.shape[1]:].tolist()
    with exact_decoding():  # the loop against transformers' on the same float32 matmuls
        assert smollm2.generate(PROMPTS[0], max_new_tokens=24).token_ids[0] == reference[:24]


def test_packed_decoding_is_the_default_and_stays_close_to_exact(smollm2):
    assert smollm2.packing.decoding == "packed" and smollm2.packing.packed_linears == 211  # lm_head (Q8_0) too
    assert smollm2.packing.shared_codes == 2 * smollm2.n_layers  # q/k/v and gate/up: one kernel call each
    with exact_decoding():
        exact = smollm2.generate(PROMPTS, max_new_tokens=32)
    ids = [smollm2.encode(f) + t for f, t in zip(exact.formatted_prompts, exact.token_ids)]
    agree = total = 0
    for row, prompt in zip(ids, exact.formatted_prompts):
        start = len(smollm2.encode(prompt)) - 1
        with torch.inference_mode():
            plain = smollm2.model(input_ids=torch.tensor([row])).logits[0, start:-1]
            with packed_decoding():
                fast = smollm2.model(input_ids=torch.tensor([row])).logits[0, start:-1]
        assert not torch.equal(plain, fast)
        agree += int((plain.argmax(-1) == fast.argmax(-1)).sum())
        total += plain.shape[0]
        chosen = torch.tensor(row[start + 1 :])[:, None]
        moved = plain.log_softmax(-1).gather(-1, chosen) - fast.log_softmax(-1).gather(-1, chosen)
        assert moved.abs().max() < 0.5  # the chosen tokens' log-probabilities (max 0.13 nats in the benchmark)
    assert agree / total >= 0.95  # benchmarks/packed_fidelity.py: 98.96% over 3,072 tokens of letters


def test_written_out_steps_are_the_models_own_on_the_real_expert(smollm2):
    from experts import inline

    assert smollm2.packing.inline_blocks == smollm2.n_layers
    steps = []

    def keep(logits, state):
        steps.append(logits.clone())
        return logits

    before = inline.report(smollm2.model).get("inline", 0)
    written = smollm2.generate(PROMPTS, max_new_tokens=12, stop_at_eos=False, logits_hook=keep).token_ids
    assert inline.report(smollm2.model)["inline"] - before == 11 * smollm2.n_layers
    with inline.through_modules():
        assert smollm2.generate(PROMPTS, max_new_tokens=12, stop_at_eos=False, logits_hook=keep).token_ids == written
    assert all(torch.equal(a, b) for a, b in zip(steps[:12], steps[12:]))  # bit for bit, every step


def test_batched_generation_equals_one_by_one_in_float32(smollm2):
    # packed decoding rounds to bfloat16, where padding's last-bit changes can part a greedy text: measured in
    # benchmarks/packed_fidelity.py, not asserted
    with exact_decoding():
        batched = smollm2.generate(PROMPTS, max_new_tokens=24)
        single = [smollm2.generate(p, max_new_tokens=24).token_ids[0] for p in PROMPTS]
    assert batched.token_ids == single
    assert "Kelly" in batched.texts[0]

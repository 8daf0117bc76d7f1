"""The default real expert: hooks agree with TransformerLens, generation agrees with transformers."""

import pytest

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
    assert smollm2.generate(PROMPTS[0], max_new_tokens=24).token_ids[0] == reference[:24]


def test_batched_generation_equals_one_by_one(smollm2):
    batched = smollm2.generate(PROMPTS, max_new_tokens=24)
    single = [smollm2.generate(p, max_new_tokens=24).token_ids[0] for p in PROMPTS]
    assert batched.token_ids == single
    assert "Kelly" in batched.texts[0]

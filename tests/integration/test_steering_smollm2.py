"""Steering moves the real default expert the way its vector says (signs, not exact strings)."""

import pytest
import torch

from experts.hooks import count_forward_hooks
from experts.packed import exact_decoding
from steer.datasets import load_pairs
from steer.evaluate.scorers import sentiment
from steer.vectors.apply import Steering, apply
from steer.vectors.extract import compute_vector

pytestmark = pytest.mark.slow
PROMPTS = ["Tell me about your day.", "Describe the town where you live.", "Write about a bus ride across the city.",
           "Describe a rainy afternoon."]


@pytest.fixture(scope="module")
def sentiment_vector(smollm2):
    pairs, sha = load_pairs("sentiment")
    return compute_vector(smollm2, pairs[:16], [12], dataset="sentiment", dataset_sha256=sha)


def test_sentiment_vector_moves_vader_both_ways(smollm2, sentiment_vector):
    coef = 6.0
    rows = PROMPTS * 3
    # Exact decoding, on which the 0.5 margin was set (0.51 there, 0.43 packed: 4 texts per arm are few, and an
    # equal-norm random vector moves this mean by up to 0.53; benchmarks/RESULTS.md measures steering properly).
    with exact_decoding(), apply(smollm2, Steering(sentiment_vector, coef=[coef] * 4 + [0.0] * 4 + [-coef] * 4)):
        texts = smollm2.generate(rows, max_new_tokens=32, batch_size=12).texts
    scores = sentiment(texts)
    up, none, down = (sum(scores[i : i + 4]) / 4 for i in (0, 4, 8))
    assert up > none > down
    assert up - down > 0.5
    assert count_forward_hooks(smollm2.model) == 0


def test_coefficient_zero_is_bit_identical_on_the_real_expert(smollm2, sentiment_vector):
    batch = smollm2.tokenize(smollm2.format_prompts(PROMPTS))
    with torch.no_grad():
        plain = smollm2.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with apply(smollm2, Steering(sentiment_vector, coef=0.0)):
            zero = smollm2.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(plain, zero)

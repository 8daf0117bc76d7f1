import pytest
import torch

from experts.errors import SteerlabError
from experts.generate import GenerationSettings
from steer.rad.logit_bias import row_bias_hook, signed_bias, word_tokens


def test_word_tokens_are_the_word_starts_that_carry_a_stem(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    stems = ("lett", "yea", "an")  # the tiny vocabulary's word starts include " letter", " year", " and"
    tokens = tokenizer.convert_ids_to_tokens(word_tokens(tokenizer, [s.upper() for s in stems]))
    assert sorted(tokens) == ["Ġand", "Ġletter", "Ġyear"]  # stems match case-blind, only at a word's start
    assert word_tokens(tokenizer, ["confiden"]) == []


def test_signed_bias_and_bad_strengths():
    bias = signed_bias(10, [1, 2], [2, 3], 2.5)
    assert bias.tolist() == [0, 2.5, 0, -2.5, 0, 0, 0, 0, 0, 0]
    with pytest.raises(SteerlabError, match="must be finite"):
        signed_bias(10, [1], [2], float("nan"))
    with pytest.raises(SteerlabError, match=r"\(prompts, vocabulary\)"):
        row_bias_hook(torch.zeros(5))


def test_each_row_follows_its_own_bias_in_a_batch(tiny_llama, no_leak):
    no_leak(tiny_llama)
    prompts = ["the cat", "the cat", "a dog ran"]
    settings = GenerationSettings(max_new_tokens=5)
    plain, _ = tiny_llama.generate_batch(prompts, settings, [0, 0, 0])
    target = 7
    biases = torch.zeros(3, tiny_llama.model.config.vocab_size)
    biases[0, target] = 1e4  # row 0 forced to the target token, row 1 barred from its plain first token
    biases[1, plain[1][0]] = -1e4
    biased, _ = tiny_llama.generate_batch(prompts, settings, [0, 0, 0], logits_hook=row_bias_hook(biases))
    assert biased[0] == [target] * 5
    assert biased[1][0] != plain[1][0]
    assert biased[2] == plain[2]  # a zero row is untouched
    zero, _ = tiny_llama.generate_batch(prompts, settings, [0, 0, 0], logits_hook=row_bias_hook(torch.zeros_like(biases)))
    assert zero == plain
    with pytest.raises(SteerlabError, match="2 row biases given for a call of 3 prompts"):
        tiny_llama.generate_batch(prompts, settings, [0, 0, 0], logits_hook=row_bias_hook(biases[:2]))

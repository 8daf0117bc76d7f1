import copy

import pytest
import torch
from transformers import DynamicCache

import experts.generate
from experts.errors import EmptyPromptsError, SteerlabError
from experts.generate import GenerationSettings
from experts.kv import ROOM, GrowingLayer

PROMPTS = ["Kelly is warm", "The capital of France is Paris and the", "def add(a, b):"]


def test_batched_equals_one_by_one_greedy(tiny):
    batched = tiny.generate(PROMPTS, max_new_tokens=12)
    single = [tiny.generate(p, max_new_tokens=12).token_ids[0] for p in PROMPTS]
    assert batched.token_ids == single


def test_batched_equals_one_by_one_sampled(tiny):
    settings = dict(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    batched = tiny.generate(PROMPTS, batch_size=2, **settings)
    single = [tiny.generate(p, **settings).token_ids[0] for p in PROMPTS]
    assert batched.token_ids == single


def test_sampling_is_seeded_and_samples_differ(tiny):
    a = tiny.generate(PROMPTS[:1], max_new_tokens=16, do_sample=True, seed=1, num_samples=3)
    b = tiny.generate(PROMPTS[:1], max_new_tokens=16, do_sample=True, seed=1, num_samples=3)
    c = tiny.generate(PROMPTS[:1], max_new_tokens=16, do_sample=True, seed=2, num_samples=3)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    assert len({tuple(t) for t in a.token_ids}) > 1
    assert a.sample_index == [0, 1, 2]


def test_greedy_matches_transformers_generate(tiny):
    text = tiny.format_prompts([PROMPTS[1]])[0]
    batch = tiny.tokenize([text])
    reference = tiny.model.generate(
        batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=12, do_sample=False,
        eos_token_id=None, pad_token_id=tiny.pad_token_id,
    )[0, batch.input_ids.shape[1]:].tolist()
    ours = tiny.generate(PROMPTS[1], max_new_tokens=12, stop_at_eos=False).token_ids[0]
    assert ours == reference


def test_stops_at_eos_per_row(tiny):
    eos = min(tiny.eos_ids)

    def force_eos_at_step_3_for_row_0(logits, state):
        if state.step == 3:
            logits = logits.clone()
            logits[0, eos] = 1e4
        return logits


    result = tiny.generate(PROMPTS[:2], max_new_tokens=8, logits_hook=force_eos_at_step_3_for_row_0)
    assert result.finish_reasons == ["eos", "length"]
    assert len(result.token_ids[0]) == 3 and len(result.token_ids[1]) == 8


def test_chat_template_is_applied_for_chat_experts(tiny_llama):
    formatted = tiny_llama.format_prompts(["hi"])[0]
    assert formatted == "<|user|>hi<|end|><|assistant|>"
    assert tiny_llama.format_prompts(["hi"], chat=False) == ["hi"]


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=0), dict(top_p=0), dict(top_k=-1)])
def test_invalid_settings_are_named(bad):
    with pytest.raises(SteerlabError, match=next(iter(bad))):
        GenerationSettings(**bad)


def test_empty_prompts_are_refused(tiny):
    for prompts in ([], [""], ["ok", "  "]):
        with pytest.raises(EmptyPromptsError):
            tiny.generate(prompts)


def test_records_carry_settings(tiny):
    result = tiny.generate(PROMPTS[:1], max_new_tokens=3, seed=5)
    assert result.settings()["seed"] == 5 and result.settings()["expert"] == tiny.name
    assert result.records()[0]["n_tokens"] == 3
    assert torch.is_tensor(tiny.tokenize(["x"]).input_ids)


@torch.inference_mode()
def test_repetition_penalty_is_the_ctrl_penalty_on_generated_tokens(tiny):
    text = tiny.format_prompts([PROMPTS[1]])[0]
    ids = tiny.tokenize([text]).input_ids
    prompt_length, penalty, expected = ids.shape[1], 1.5, []
    for _ in range(40):  # a plain loop without cache: penalise what was generated, then take the argmax
        logits = tiny.model(input_ids=ids).logits[0, -1].clone()
        seen = sorted(set(ids[0, prompt_length:].tolist()))
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
        expected.append(int(logits.argmax()))
        ids = torch.cat([ids, torch.tensor([[expected[-1]]])], dim=1)
    ours = tiny.generate(PROMPTS[1], max_new_tokens=40, stop_at_eos=False, repetition_penalty=penalty).token_ids[0]
    plain = tiny.generate(PROMPTS, max_new_tokens=40, stop_at_eos=False)
    assert ours == expected and ours != plain.token_ids[1]  # the tiny expert repeats itself without the penalty
    assert tiny.generate(PROMPTS, max_new_tokens=40, stop_at_eos=False, repetition_penalty=1.0).token_ids == plain.token_ids
    with pytest.raises(SteerlabError, match="repetition_penalty"):
        GenerationSettings(repetition_penalty=0.0)


def test_continuation_nll_equals_one_row_at_a_time_log_softmax(tiny):
    from experts.likelihood import continuation_nll

    prompts = ["Dear committee", "A letter for Kelly, who", "Hi"]
    conts = [tiny.encode(" she is kind")[1:], [], tiny.encode(" and he leads the team well")[1:]]
    got = continuation_nll(tiny, prompts, conts, batch_size=2)
    assert got[1] != got[1]  # nan for an empty continuation
    for prompt, cont, value in zip(prompts, conts, got):
        if not cont:
            continue
        ids = torch.tensor([tiny.encode(prompt) + cont])
        with torch.inference_mode():
            logprobs = tiny.model(input_ids=ids).logits.float().log_softmax(-1)[0]
        first = ids.shape[1] - len(cont) - 1
        expected = -logprobs[first : ids.shape[1] - 1].gather(-1, torch.tensor(cont)[:, None]).mean().item()
        assert value == pytest.approx(expected, abs=1e-4)


def test_rows_of_one_batch_keep_their_own_settings_and_budgets(tiny):
    prompts = ["The cat", "A long time ago", "Numbers: 1, 2,"]
    settings = [GenerationSettings(max_new_tokens=3), GenerationSettings(max_new_tokens=7, do_sample=True, temperature=0.7,
                                                                         top_p=0.8, seed=4),
                GenerationSettings(max_new_tokens=5, stop_at_eos=False)]
    with pytest.raises(SteerlabError, match="must share stop_at_eos"):
        tiny.generate_batch(tiny.format_prompts(prompts), settings, [1, 2, 3])
    settings[2] = GenerationSettings(max_new_tokens=5)
    seeds = [11, 12, 13]
    ids, reasons = tiny.generate_batch(tiny.format_prompts(prompts), settings, seeds)
    for i, prompt in enumerate(prompts):
        alone, why = tiny.generate_batch(tiny.format_prompts([prompt]), settings[i], seeds[i : i + 1])
        assert ids[i] == alone[0] and reasons[i] == why[0]
        assert len(ids[i]) <= settings[i].max_new_tokens


def _reference_no_repeat(expert, prompt: str, n: int, steps: int) -> list[int]:
    """Greedy without a KV cache, transformers' own n-gram ban applied to the generated tokens only."""
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    ban = NoRepeatNGramLogitsProcessor(n)
    ids = expert.tokenize(expert.format_prompts([prompt])).input_ids
    generated: list[int] = []
    with torch.inference_mode():
        for _ in range(steps):
            logits = expert.model(input_ids=torch.cat([ids, torch.tensor([generated], dtype=ids.dtype)], 1)).logits[:, -1]
            generated.append(int(ban(torch.tensor([generated], dtype=torch.long), logits).argmax(-1)))
    return generated


@pytest.mark.parametrize("n", [2, 3])
def test_no_repeat_ngram_matches_transformers_on_the_generated_tokens(tiny_llama, n):
    ours = tiny_llama.generate(PROMPTS, max_new_tokens=30, no_repeat_ngram_size=n, stop_at_eos=False, batch_size=3)
    for prompt, ids in zip(PROMPTS, ours.token_ids):
        assert ids == _reference_no_repeat(tiny_llama, prompt, n, 30)
        grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
        assert len(grams) == len(set(grams))
    plain = tiny_llama.generate(PROMPTS, max_new_tokens=30, stop_at_eos=False)
    assert tiny_llama.generate(PROMPTS, max_new_tokens=30, stop_at_eos=False, no_repeat_ngram_size=0).token_ids == plain.token_ids


def test_a_row_ends_at_its_first_paragraph_break_after_its_length(tiny_llama):
    """A scripted expert writes a line break at steps 3, 4 (a paragraph break) and 8, 9; rows asking to end after 2
    and 6 tokens end there, a row without the rule runs to its budget."""
    newline = tiny_llama.tokenizer("\n", add_special_tokens=False)["input_ids"][-1]

    def script(logits, state):
        if state.step in (3, 4, 8, 9):
            logits = logits.clone()
            logits[:, newline] = 1e4
        return logits

    settings = [GenerationSettings(max_new_tokens=14, stop_at_eos=False, end_at_paragraph_after=after) for after in (2, 6, 0)]
    ids, reasons = tiny_llama.generate_batch(tiny_llama.format_prompts(PROMPTS), settings, [0, 0, 0], logits_hook=script)
    assert reasons == ["paragraph", "paragraph", "length"]
    assert [len(row) for row in ids] == [5, 10, 14] and ids[0][-2:] == [newline, newline]


def test_text_continuation_nll_reads_the_continuation_after_its_prefix_as_plain_text(tiny):
    from experts.likelihood import text_continuation_nll

    prefixes, conts = ["Once upon a time there", "The committee"], ["lived a fox.", "  recommends approval "]
    got = text_continuation_nll(tiny, prefixes, conts)
    for prefix, cont, value in zip(prefixes, conts, got):
        head = tiny.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        whole = tiny.tokenizer(prefix + " " + cont.strip(), add_special_tokens=False)["input_ids"]
        shared = next((i for i, (a, b) in enumerate(zip(head, whole)) if a != b), len(head))
        bos = [] if tiny.tokenizer.bos_token_id is None else [tiny.tokenizer.bos_token_id]
        ids = torch.tensor([bos + whole])
        with torch.inference_mode():
            logprobs = tiny.model(input_ids=ids).logits.float().log_softmax(-1)[0]
        start = len(bos) + shared
        expected = -logprobs[start - 1 : ids.shape[1] - 1].gather(-1, ids[0, start:, None]).mean().item()
        assert value == pytest.approx(expected, abs=1e-4)
    assert text_continuation_nll(tiny, ["Hello"], ["   "])[0] != text_continuation_nll(tiny, ["Hello"], ["   "])[0]


def test_the_growing_cache_decodes_as_transformers_dynamic_cache_does(tiny, monkeypatch):
    settings = dict(max_new_tokens=90, stop_at_eos=False, batch_size=3)  # past the first buffer's room: it grows
    ours = tiny.generate(PROMPTS, **settings).token_ids
    monkeypatch.setattr(experts.generate, "new_cache", lambda config: DynamicCache(config=config))
    assert ours == tiny.generate(PROMPTS, **settings).token_ids


def test_a_growing_layer_holds_what_concatenation_would_and_takes_keys_set_from_outside():
    generator = torch.Generator().manual_seed(0)
    layer, want = GrowingLayer(), torch.empty(2, 3, 0, 4)

    def step(columns):
        nonlocal want
        new = torch.randn(want.shape[0], 3, columns, 4, generator=generator)
        want = torch.cat([want, new], dim=2)
        keys, values = layer.update(new, -new)
        assert torch.equal(keys, want) and torch.equal(values, -want) and keys is layer.keys
        return keys

    first = step(5)
    buffer = layer._buffers[0]
    for _ in range(ROOM):  # in place while there is room (5 + ROOM columns)...
        step(1)
    assert layer._buffers[0] is buffer
    step(1)  # ... then into a new buffer twice as wide; what was handed out before is unchanged
    assert layer._buffers[0] is not buffer and layer._buffers[0].shape[2] == 2 * (6 + ROOM)
    assert torch.equal(first, want[:, :, :5])
    twin = copy.deepcopy(layer)  # a look-ahead's copy: the columns in use, in storage of its own
    assert torch.equal(twin.keys, want) and twin._buffers == [None, None]
    assert twin.keys.untyped_storage().data_ptr() != layer.keys.untyped_storage().data_ptr()
    twin.update(torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 1, 4))
    assert not twin.keys[:, :, -1].any() and torch.equal(layer.keys, want)
    for keep in ([1, 0], slice(1)):  # rows reordered, then the last gone: keys set from outside, laid out as buffers
        width = want.shape[2]
        layer.keys, layer.values = (buffer[keep][:, :, :width] for buffer in layer._buffers)
        want = want[keep]
        step(1)
    layer.keys, layer.values, want = layer.keys[:, :, ::2], layer.values[:, :, ::2], want[:, :, ::2]  # a view of the
    step(1)  # buffer itself that is not its first columns
    layer.reset()
    assert layer._buffers == [None, None] and not layer.is_initialized

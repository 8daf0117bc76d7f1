"""Served requests batched with per-row settings answer exactly as each request alone (no server)."""

import math

import pytest
import torch

from experts.generate import GenerationSettings
from steer.datasets import _DATA
from steer.rad.training import load_labeled, train_activation_reward
from steer.router.decision import Adjustment
from steer.router.router import Rule
from steer.serve.batch import RowRequest, answer_rows
from steer.vectors.vector import Provenance, SteeringVector

RULES = [Rule("gendered_subject", "steer", "gender.safetensors", 0.5, request_max=2.0),
         Rule("hostile_tone", "reward", "tone.safetensors", 4.0, request_max=8.0)]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from experts.expert import Expert

    expert = Expert.load("tiny-llama")
    folder = tmp_path_factory.mktemp("policy")
    SteeringVector({1: 3 * torch.ones(expert.d_model)},
                   provenance=Provenance(expert="tiny-llama", fingerprint=expert.fingerprint)).save(folder / "gender.safetensors")
    data, _ = load_labeled(_DATA / "sentiment_labeled.jsonl")
    train_activation_reward(expert, data[:12], epochs=2).save(folder / "tone.safetensors")
    return expert, folder


def _requests(expert):
    steer, reward = Adjustment("steer", "gender.safetensors", 1.5, "request"), Adjustment("reward", "tone.safetensors", 6.0, "request")
    sampled = GenerationSettings(max_new_tokens=9, do_sample=True, temperature=0.8, top_p=0.9, seed=5)
    return [RowRequest(expert.format_conversation([{"role": "user", "content": p}]), adjustments, settings, stops, logprobs)
            for p, adjustments, settings, stops, logprobs in [
                ("Write a letter for Kelly.", (), GenerationSettings(max_new_tokens=10), (), None),
                ("Write a letter for Joseph.", (steer,), GenerationSettings(max_new_tokens=6), (), 3),
                ("Tell a story about rain", (reward,), sampled, (), 0),
                ("What is the capital of Peru?", (steer, reward), GenerationSettings(max_new_tokens=12), (), None),
                ("A haiku", (), sampled, (), None)]]


def test_each_row_of_a_batch_answers_as_it_would_alone(policy):
    expert, folder = policy
    requests = _requests(expert)
    steps = []
    together = answer_rows(expert, requests, RULES, folder, emit=steps.append)
    alone = [answer_rows(expert, [r], RULES, folder)[0] for r in requests]
    assert [t.text for t in together] == [a.text for a in alone]
    for t, a in zip(together, alone):  # the same tokens; log-probabilities equal up to padding's rounding
        assert [e["token"] for e in t.logprobs] == [e["token"] for e in a.logprobs]
        assert all(math.isclose(x["logprob"], y["logprob"], abs_tol=1e-5) for x, y in zip(t.logprobs, a.logprobs))
    assert [t.completion_tokens for t in together] == [a.completion_tokens for a in alone]
    assert [t.completion_tokens for t in together][:2] == [10, 6]  # each row stops at its own budget
    assert all(t.batch_size == 5 for t in together) and alone[0].batch_size == 1
    # the streamed pieces add up to the answer; a finished row gets no more pieces
    for i, total in enumerate(together):
        pieces = [s[i] for s in steps if s[i] is not None]
        assert "".join(p.text for p in pieces) == total.text and pieces[-1].finish_reason == total.finish_reason
        assert all(p.finish_reason is None for p in pieces[:-1])
    assert len([s for s in steps if s[1] is not None]) == 6
    # steering and the reward change the rows that ask for them, and only those
    plain = answer_rows(expert, [RowRequest(requests[1].formatted, (), requests[1].settings)], RULES, folder)[0]
    assert plain.text != together[1].text


def test_log_probabilities_are_the_experts_own(policy):
    expert, folder = policy
    prompt = expert.format_conversation([{"role": "user", "content": "Write a letter for Kelly."}])
    out = answer_rows(expert, [RowRequest(prompt, settings=GenerationSettings(max_new_tokens=4), top_logprobs=2)],
                      RULES, folder)[0]
    ids = expert.encode(prompt)
    for entry in out.logprobs:
        with torch.no_grad():
            logits = expert.model(input_ids=torch.tensor([ids])).logits[0, -1]
        logp = logits.float().log_softmax(-1)
        token = int(logp.argmax())
        assert math.isclose(entry["logprob"], float(logp[token]), abs_tol=1e-4)
        assert entry["top_logprobs"][0]["logprob"] == entry["logprob"] and len(entry["top_logprobs"]) == 2
        assert "\ufffd" in entry["token"] or entry["bytes"] == list(entry["token"].encode())
        ids.append(token)


def test_a_stop_string_ends_the_row_and_is_never_sent(policy):
    expert, folder = policy
    prompt = expert.format_conversation([{"role": "user", "content": "Write a letter for Kelly."}])
    full = answer_rows(expert, [RowRequest(prompt, settings=GenerationSettings(max_new_tokens=12))], RULES, folder)[0]
    stop = full.text[len(full.text) // 2: len(full.text) // 2 + 3]
    steps = []
    cut = answer_rows(expert, [RowRequest(prompt, settings=GenerationSettings(max_new_tokens=12), stops=(stop,))],
                      RULES, folder, emit=steps.append)[0]
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    assert cut.completion_tokens < full.completion_tokens
    sent = ""
    for (delta,) in steps:
        sent += delta.text
        assert stop not in sent


def test_a_conversation_goes_through_the_chat_template_or_a_plain_transcript():
    from experts.expert import Expert

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    chat = Expert.load("tiny-llama")
    assert chat.format_conversation(turns) == chat.tokenizer.apply_chat_template(turns, tokenize=False,
                                                                                 add_generation_prompt=True)
    assert chat.format_conversation(turns[1:2]) == chat.format_prompts(["Hi"])[0]  # as `steer route` formats a prompt
    base = Expert.load("tiny-gemma")
    assert base.format_conversation(turns[1:2]) == "Hi"
    assert base.format_conversation(turns) == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello\n\nUser: Bye\n\nAssistant:"


def test_a_cancelled_row_stops_at_the_next_token_and_its_neighbours_answer_as_alone(policy):
    expert, folder = policy
    requests = [RowRequest(r.formatted, r.adjustments, GenerationSettings(max_new_tokens=12), r.stops, r.top_logprobs)
                for r in _requests(expert)[:3]]
    steps: list = []
    gone_after = 2  # the client of row 1 leaves once two steps have been emitted
    together = answer_rows(expert, requests, RULES, folder, emit=steps.append,
                           cancelled=lambda row: row == 1 and len(steps) >= gone_after)
    assert [s[1] is None for s in steps] == [False] * gone_after + [True] * (len(steps) - gone_after)
    assert together[1].finish_reason is None and together[1].completion_tokens == gone_after
    alone = [answer_rows(expert, [r], RULES, folder)[0] for r in requests]
    assert [together[i].text for i in (0, 2)] == [alone[i].text for i in (0, 2)]
    assert len(steps) == 12  # the others ran to their budget
    stopped = answer_rows(expert, requests, RULES, folder, cancelled=lambda row: True)  # everyone left: one step
    assert all(t.completion_tokens == 0 and t.finish_reason is None for t in stopped)

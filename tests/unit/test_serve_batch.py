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


# Continuous batching: rows join a running batch and leave it at token boundaries (steer.serve.running).

@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma"])
def running_policy(request, tmp_path_factory):
    """The policy's files for a tiny expert; tiny-gemma's sliding-window layers hold 15 columns, fewer than the
    long prompt below."""
    from experts.expert import Expert
    from steer.rad.rewards import ExternalReward, RewardInfo

    expert = Expert.load(request.param)
    folder = tmp_path_factory.mktemp("running")
    provenance = Provenance(expert=expert.name, fingerprint=expert.fingerprint)
    SteeringVector({1: 3 * torch.ones(expert.d_model)}, provenance=provenance).save(folder / "gender.safetensors")
    data, _ = load_labeled(_DATA / "sentiment_labeled.jsonl")
    train_activation_reward(expert, data[:12], epochs=2).save(folder / "tone.safetensors")
    other = Expert.load("tiny-gemma" if request.param == "tiny-llama" else "tiny-llama")
    info = RewardInfo(expert=other.name, fingerprint=other.fingerprint, tokenizer=other.tokenizer_fingerprint,
                      load_as=other.name)
    ExternalReward(torch.randn(other.d_model, generator=torch.Generator().manual_seed(0)), 0.1, info,
                   model=other).save(folder / "judge.safetensors")
    return expert, folder


RUNNING_RULES = [*RULES, Rule("hostile_tone", "reward", "judge.safetensors", 4.0, request_max=8.0)]


def _mixed(expert):
    long = expert.format_conversation([{"role": "user", "content": "Write a long reference letter for Kelly, a nurse "
                                        "at the town hospital, for a post as head of the ward. " * 2}])
    assert len(expert.encode(long)) > 40
    return [RowRequest(long, (), GenerationSettings(max_new_tokens=30), (), 2),
            *_requests(expert)[1:],
            RowRequest(_requests(expert)[0].formatted, (), GenerationSettings(max_new_tokens=14, repetition_penalty=1.3,
                                                                             no_repeat_ngram_size=2))]


def _collect(requests, **gone):
    from steer.serve.running import Joining

    out = {i: [] for i in range(len(requests))}
    joinings = [Joining(r, out[i].append, gone.get(f"r{i}", lambda: False)) for i, r in enumerate(requests)]
    return out, joinings


def test_rows_that_join_a_running_batch_midway_answer_as_alone(running_policy):
    from experts.hooks import count_forward_hooks
    from steer.serve.running import RunningBatch

    expert, folder = running_policy
    requests = _mixed(expert)
    out, joinings = _collect(requests)
    running = RunningBatch(expert, RUNNING_RULES, folder)
    assert running.join(joinings[1:2]) == [] and len(running) == 1
    for _ in range(3):
        running.step()
    running.join([joinings[0], joinings[2]])  # two rows join after the first has 4 tokens, one wider than it
    running.step()
    running.join(joinings[3:5])
    while len(running):
        if len(running) == 2 and not out[5]:
            running.join(joinings[5:])
        running.step()
    assert count_forward_hooks(expert.model) == 0  # the batch emptied: nothing stays attached
    alone = [answer_rows(expert, [r], RUNNING_RULES, folder)[0] for r in requests]
    for i, answer in enumerate(alone):
        deltas = out[i]
        assert "".join(d.text for d in deltas) == answer.text and deltas[-1].finish_reason == answer.finish_reason
        assert deltas[-1].completion_tokens == answer.completion_tokens
        assert all(d.finish_reason is None for d in deltas[:-1])
        logprobs = [e for d in deltas for e in d.logprobs]
        assert [e["token"] for e in logprobs] == [e["token"] for e in answer.logprobs]
        assert all(math.isclose(x["logprob"], y["logprob"], abs_tol=1e-4) for x, y in zip(logprobs, answer.logprobs))
    assert max(d.batch_size for d in out[0]) >= 4  # they did share the batch


def test_a_row_whose_caller_left_is_not_in_the_next_forward(running_policy):
    from experts.hooks import hook_context
    from steer.serve.running import Joining, RunningBatch

    expert, folder = running_policy
    requests = [RowRequest(r.formatted, r.adjustments, GenerationSettings(max_new_tokens=12))
                for r in _requests(expert)[:3]]
    gone, left = {1: False}, []
    out, joinings = _collect(requests, r1=lambda: gone[1])
    joinings[1] = Joining(joinings[1].request, joinings[1].emit, joinings[1].cancelled, lambda: left.append(1))
    rows = []
    running = RunningBatch(expert, RUNNING_RULES, folder)
    count = (expert.hook_point("blocks.0.hook_resid_pre"), lambda h: rows.append(h.shape[0]))
    with hook_context(expert.model, [count]):
        running.join(joinings)
        running.step()
        gone[1] = True  # the caller leaves after two tokens
        running.step()
        assert rows == [3, 3, 2] and left == [1] and len(out[1]) == 2
        while len(running):
            running.step()
    assert len(out[1]) == 2 and out[1][-1].finish_reason is None
    alone = [answer_rows(expert, [r], RUNNING_RULES, folder)[0] for r in requests]
    assert ["".join(d.text for d in out[i]) for i in (0, 2)] == [alone[i].text for i in (0, 2)]
    never, forwards = _collect(requests[:1], r0=lambda: True), running.forwards
    running.join(never[1])  # a caller gone before its row joined: its prompt never runs
    assert len(running) == 0 and never[0][0] == [] and running.forwards == forwards


def test_rows_that_leave_take_their_padding_with_them(running_policy):
    from steer.serve.running import RunningBatch

    expert, folder = running_policy
    long, short = _mixed(expert)[0], _requests(expert)[0]
    requests = [RowRequest(long.formatted, settings=GenerationSettings(max_new_tokens=2)),
                RowRequest(short.formatted, settings=GenerationSettings(max_new_tokens=8))]
    out, joinings = _collect(requests)
    running = RunningBatch(expert, RUNNING_RULES, folder)
    running.join(joinings)
    wide = running.mask.shape[1]
    running.step()  # the long row's budget ends: it leaves, and its columns with it
    assert len(running) == 1 and running.mask.shape[1] < wide and bool(running.mask.all())
    full = [layer for layer in running.cache.layers if not getattr(layer, "is_sliding", False)]
    assert full and all(layer.keys.shape[2] == running.mask.shape[1] for layer in full)
    while len(running):
        running.step()
    assert "".join(d.text for d in out[1]) == answer_rows(expert, requests[1:], RUNNING_RULES, folder)[0].text


def test_a_row_with_non_finite_logits_fails_alone(running_policy):
    from experts.errors import NonFiniteError
    from experts.hooks import hook_context
    from steer.serve.running import RunningBatch

    expert, folder = running_policy
    requests = [RowRequest(r.formatted, settings=GenerationSettings(max_new_tokens=5)) for r in _requests(expert)[:2]]
    out, joinings = _collect(requests)
    running = RunningBatch(expert, RUNNING_RULES, folder)
    running.join(joinings)

    def spoil(h):
        h = h.clone()
        h[1] = float("nan")
        return h

    with hook_context(expert.model, [(expert.hook_point("blocks.1.hook_resid_post"), spoil)]):
        running.step()
    assert isinstance(out[1][-1], NonFiniteError) and len(running) == 1
    while len(running):
        running.step()
    assert "".join(d.text for d in out[0]) == answer_rows(expert, requests[:1], RUNNING_RULES, folder)[0].text


def test_a_reward_that_follows_the_text_in_its_own_expert_or_a_paragraph_end_is_not_joined(running_policy):
    from steer.serve.running import RunningBatch

    expert, folder = running_policy
    judged = RowRequest(_requests(expert)[0].formatted, (Adjustment("reward", "judge.safetensors", 2.0, "request"),),
                        GenerationSettings(max_new_tokens=3))
    paragraph = RowRequest(judged.formatted, settings=GenerationSettings(max_new_tokens=9, end_at_paragraph_after=3))
    out, joinings = _collect([judged, _requests(expert)[1], paragraph])
    running = RunningBatch(expert, RUNNING_RULES, folder)
    assert running.join(joinings) == [joinings[0], joinings[2]] and len(running) == 1 and out[0] == out[2] == []

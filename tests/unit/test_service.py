"""The routing service's requests, policy checks and responses (no server)."""

from types import SimpleNamespace

import pytest

from steer.router.decision import Adjustment, RoutingDecision
from steer.router.router import Rule
from steer.serve.service import (
    MODEL,
    BadRequest,
    ChatRequest,
    Limits,
    UnknownModel,
    adjustments_for,
    allowed_strengths,
    chunk,
    completion,
    error_body,
    to_deployed,
)

USER = [{"role": "user", "content": "Write a letter for Kelly."}]
ROUTER = SimpleNamespace(fallback="b", rules=[Rule("gendered_subject", "steer", "gender.safetensors", 1.0, expert="a", request_max=2.0),
                                Rule("hostile_tone", "reward", "tone.safetensors", 10.0, request_max=20.0),
                                Rule("hostile_tone", "steer", "fixed.safetensors", 1.0)])


def _decision(expert="a", adjustments=()):
    return RoutingDecision(input_sha256="0" * 64, reader="r", reader_layer=1, features=[], scores={}, expected_grades={},
                           expert=expert, expected_grade=0.9, abstained=False, adjustments=list(adjustments))


def test_a_request_parses_into_generation_settings():
    request = ChatRequest.parse({"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, *USER],
                                 "max_tokens": 12, "temperature": 0.7, "seed": 3,
                                 "steerlab": {"strengths": {"gender.safetensors": 1.5}}})
    assert (request.prompt, request.messages[0]["content"], request.strengths) == (
        "Be brief.\n\nWrite a letter for Kelly.", "Be brief.", {"gender.safetensors": 1.5})  # the router reads it all
    assert request.generation_settings() == {"max_new_tokens": 12, "do_sample": True, "temperature": 0.7, "top_p": 1.0,
                                             "seed": 3}
    assert ChatRequest.parse({"messages": USER}).generation_settings()["do_sample"] is False  # temperature 0: greedy


@pytest.mark.parametrize("body, message", [
    ([], "JSON object"),
    ({"messages": USER, "model": "gpt-4"}, "unknown model 'gpt-4'.*steerlab-router"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [*USER, {"role": "assistant", "content": "x"}]}, "ending with the user's"),
    ({"messages": [*USER, *USER]}, "in alternation"),
    ({"messages": [{"role": "tool", "content": "x"}, *USER]}, "in alternation"),
    ({"messages": [{"role": "user", "content": "  "}]}, "must not be empty"),
    ({"messages": [{"role": "user", "content": "x" * 40}]}, "40 characters; at most 30"),
    ({"messages": [{"role": "system", "content": "x" * 20}, {"role": "user", "content": "y" * 20}]}, "40 characters"),
    ({"messages": USER, "max_tokens": 0}, "'max_tokens' = 0 is outside 1..5"),
    ({"messages": USER, "max_tokens": 2.5}, "must be an integer"),
    ({"messages": USER, "temperature": "hot"}, "must be a number"),
    ({"messages": USER, "stream": "yes"}, "'stream' must be true or false"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, "with 'stream': true"),
    ({"messages": USER, "stream": True, "stream_options": {"chunks": 2}}, "include_usage"),
    ({"messages": USER, "top_logprobs": 2}, "needs 'logprobs': true"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "'top_logprobs' = 21 is outside 0..20"),
    ({"messages": USER, "n": 2}, "n = 2"),
    ({"messages": USER, "steerlab": {"strengths": {"gender.safetensors": float("nan")}}}, "finite numbers"),
    ({"messages": USER, "tools": [{"type": "function"}]}, "'tools': tool calls are not supported"),
    ({"messages": USER, "response_format": {"type": "json_object"}}, "'response_format': structured output"),
    ({"messages": USER, "frequency_penalty": 0.5}, "'frequency_penalty'"),
    ({"messages": USER, "temperatur": 0.5}, "unknown parameter 'temperatur'; this service accepts model, messages"),
    ({"messages": USER, "max_tokens": 3, "max_completion_tokens": 4}, "disagree"),
    ({"messages": USER, "max_completion_tokens": 9}, "'max_completion_tokens' = 9 is outside 1..5"),
    ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"messages": USER, "stop": [""]}, "non-empty string"),
])
def test_bad_requests_name_the_bad_value(body, message):
    with pytest.raises(BadRequest, match=message) as caught:
        ChatRequest.parse(body, Limits(max_tokens=5, max_prompt_chars=30))
    named = [key for key in body if key in str(caught.value) and key != "messages"]
    assert caught.value.param in (*named, "messages", "model", "n", "stream", "steerlab", "max_completion_tokens",
                                  "top_logprobs", "stream_options", None)


def test_parameters_are_honoured_or_harmless():
    request = ChatRequest.parse({"messages": USER, "max_completion_tokens": 5, "stop": "\n\n", "user": "u1",
                                 "logprobs": False, "frequency_penalty": 0, "stream": False, "n": 1})
    assert request.max_tokens == 5 and request.stop == ("\n\n",) and request.top_logprobs is None
    assert ChatRequest.parse({"messages": USER, "stop": ["END", "###"]}).stop == ("END", "###")
    assert ChatRequest.parse({"messages": USER, "logprobs": True}).top_logprobs == 0
    assert ChatRequest.parse({"messages": USER, "logprobs": True, "top_logprobs": 3}).top_logprobs == 3
    streamed = ChatRequest.parse({"messages": USER, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.stream and streamed.include_usage
    turns = [{"role": "system", "content": "Be brief."}, *USER, {"role": "assistant", "content": "Dear Kelly"},
             {"role": "user", "content": "Shorter, please."}]
    conversation = ChatRequest.parse({"messages": turns})
    assert len(conversation.messages) == 4 and conversation.prompt == (  # the router reads the whole conversation
        "Be brief.\n\nWrite a letter for Kelly.\n\nDear Kelly\n\nShorter, please.")
    assert conversation.pinned is None and conversation.raw is False
    pinned = ChatRequest.parse({"messages": USER, "model": "a"}, models=("a", "b"))
    assert pinned.pinned == "a" and pinned.model == "a"
    with pytest.raises(UnknownModel, match="unknown model 'c'; this service serves steerlab-router, a, b") as caught:
        ChatRequest.parse({"messages": USER, "model": "c"}, models=("a", "b"))
    assert caught.value.status == 404 and caught.value.param == "model"
    raw = ChatRequest.parse_completion({"prompt": "Once upon a time", "max_tokens": 5, "stop": "\n"}, models=("a",))
    assert (raw.raw, raw.prompt, raw.max_tokens, raw.stop, raw.stream) == (True, "Once upon a time", 5, ("\n",), False)
    out = completion(raw, _decision("a"), [], {"text": " there", "finish_reason": "length", "prompt_tokens": 4,
                                               "completion_tokens": 1}, {})
    assert out["object"] == "text_completion" and out["choices"][0]["text"] == " there" and "message" not in out["choices"][0]
    for body, param in [({"prompt": ""}, "prompt"), ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": "x", "echo": True}, "echo"),
                        ({"prompt": "x", "stream": True}, "stream"), ({"prompt": "x", "messages": USER}, "messages"),
                        ({"prompt": "x", "logprobs": 2}, "logprobs")]:
        with pytest.raises(BadRequest) as caught:
            ChatRequest.parse_completion(body)
        assert caught.value.param == param and caught.value.status == 400
    assert error_body(503, "busy")["error"] == {"message": "busy", "type": "service_unavailable", "param": None, "code": 503}


def test_requested_strengths_are_held_to_the_policy():
    assert allowed_strengths(ROUTER) == {"gender.safetensors": (0.0, 2.0), "tone.safetensors": (0.0, 20.0)}
    fired = Adjustment("steer", "gender.safetensors", 1.0, "gendered_subject")
    request = ChatRequest.parse({"messages": USER, "steerlab": {"strengths": {"gender.safetensors": 0.5,
                                                                              "tone.safetensors": 15}}})
    applied = adjustments_for(ROUTER, _decision(adjustments=[fired]), request)
    assert applied == [Adjustment("steer", "gender.safetensors", 0.5, "request"),
                       Adjustment("reward", "tone.safetensors", 15.0, "request")]
    off = ChatRequest.parse({"messages": USER, "steerlab": {"strengths": {"gender.safetensors": 0}}})
    assert adjustments_for(ROUTER, _decision(adjustments=[fired]), off) == []  # a request may turn a rule off
    for strengths, message in [({"gender.safetensors": 3}, "outside the policy's range 0..2"),
                               ({"gender.safetensors": -1}, "outside the policy's range 0..2.*never reverse"),
                               ({"tone.safetensors": -5}, "outside the policy's range 0..20"),
                               ({"fixed.safetensors": 1}, "does not let requests set 'fixed.safetensors'.*gender"),
                               ({"other.safetensors": 1}, "files a request may set: gender.safetensors, tone")]:
        with pytest.raises(BadRequest, match=message):
            adjustments_for(ROUTER, _decision(), ChatRequest.parse({"messages": USER, "steerlab": {"strengths": strengths}}))
    with pytest.raises(BadRequest, match="applies to 'a'; the router chose 'b'"):
        adjustments_for(ROUTER, _decision("b"), request)
    negative = SimpleNamespace(fallback="b", rules=[Rule("hostile_tone", "steer", "calm.safetensors", -2.0, request_max=4.0)])
    assert allowed_strengths(negative) == {"calm.safetensors": (-4.0, 0.0)}  # bounds carry the rule's sign
    calmer = ChatRequest.parse({"messages": USER, "steerlab": {"strengths": {"calm.safetensors": -3}}})
    assert adjustments_for(negative, _decision(), calmer) == [Adjustment("steer", "calm.safetensors", -3.0, "request")]


def test_the_completion_is_openai_shaped_and_carries_the_trace():
    request = ChatRequest.parse({"messages": USER})
    applied = [Adjustment("steer", "gender.safetensors", 0.5, "request")]
    out = completion(request, _decision(), applied, {"text": "Dear", "finish_reason": "eos", "prompt_tokens": 7,
                                                     "completion_tokens": 1}, {"decide": 1.0, "answer": 2.0})
    assert out["object"] == "chat.completion" and out["model"] == "a"
    assert out["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Dear"}, "logprobs": None,
                                 "finish_reason": "stop"}
    entry = {"token": "Dear", "logprob": -0.5, "bytes": [68, 101, 97, 114], "top_logprobs": []}
    with_logprobs = completion(ChatRequest.parse({"messages": USER, "logprobs": True}), _decision(), [],
                               {"text": "Dear", "finish_reason": "length", "prompt_tokens": 7, "completion_tokens": 1,
                                "logprobs": [entry]}, {})
    assert with_logprobs["choices"][0]["logprobs"] == {"content": [entry]}
    piece = chunk({"id": "c", "created": 0, "model": "a"}, {"content": "De"}, request=request, finish="eos")
    assert piece["object"] == "chat.completion.chunk" and piece["choices"][0]["finish_reason"] == "stop"
    stopped = completion(request, _decision(), [], {"text": "D", "finish_reason": "stop", "prompt_tokens": 7,
                                                     "completion_tokens": 1}, {})
    assert stopped["choices"][0]["finish_reason"] == "stop"
    cut = completion(request, _decision(), [], {"text": "D", "finish_reason": "length", "prompt_tokens": 7,
                                                "completion_tokens": 1}, {})
    assert cut["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}
    assert out["steerlab"]["decision"]["expert"] == "a" and out["steerlab"]["applied"][0]["because"] == "request"
    assert "expert a" in out["steerlab"]["explanation"]


def test_a_decision_for_an_expert_not_deployed_goes_to_the_fallback():
    steer_a = Adjustment("steer", "gender.safetensors", 1.0, "gendered_subject")  # a rule for expert "a" only
    reward = Adjustment("reward", "tone.safetensors", 10.0, "hostile_tone")  # a rule for any expert
    decision = _decision("a", [steer_a, reward])
    assert to_deployed(ROUTER, decision, {"a", "b"}) == (decision, None)
    moved, origin = to_deployed(ROUTER, decision, {"b"})
    assert origin == "a" and moved.expert == "b" and moved.adjustments == [reward]

"""The routing service's requests and responses, apart from any server: an OpenAI-style chat completion
request in (a conversation, sampling settings, stop strings, log-probabilities, streaming), a routing decision
and the adjustments the policy allows, a chat completion (or its chunks) out with the decision trace under
`steerlab`. Every other OpenAI parameter is refused by name. `steer.serve.ray_serve` puts this behind HTTP.

A request may ask for policy files at chosen strengths (`"steerlab": {"strengths": {"gender.safetensors": 0.5}}`);
each must be a file of a policy rule that allows requests (`request_max` > 0), between 0 and `request_max` in the
rule's own direction (`Rule.request_bounds`: never reversing it; a reward's β never below 0), and for the
chosen expert if the rule names one. The requested strength replaces the rule's own when the rule also fired.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from experts.errors import SteerlabError
from steer.router.decision import Adjustment, RoutingDecision
from steer.router.router import Router

MODEL = "steerlab-router"  # the model name a client asks for: the router picks the expert


class BadRequest(SteerlabError):
    """A request the service refuses (HTTP 400); the message names the bad value and the valid choices, `param`
    the request field at fault (OpenAI's error shape)."""

    status = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownModel(BadRequest):
    """A request for a model this service does not serve (HTTP 404, as OpenAI answers)."""

    status = 404


ACCEPTED = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
            "stream", "stream_options", "logprobs", "top_logprobs", "user", "steerlab")
# Parameters of OpenAI's API this service does not honour: refused by name rather than dropped silently.
REFUSED = {
    "tools": "tool calls are not supported", "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported", "function_call": "function calls are not supported",
    "parallel_tool_calls": "tool calls are not supported",
    "response_format": "structured output (response_format) is not supported; the experts answer in text",
    "logit_bias": "logit_bias is not supported", "presence_penalty": "presence_penalty is not supported",
    "frequency_penalty": "frequency_penalty is not supported",
    "audio": "audio is not supported", "modalities": "only text is supported", "prediction": "predicted outputs are not supported",
    "reasoning_effort": "the experts do not reason in a separate channel", "service_tier": "there is one service tier",
    "store": "completions are not stored", "metadata": "metadata is not stored", "web_search_options": "web search is not supported",
}
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "parallel_tool_calls": None}  # harmless values
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Limits:
    """What any one request may ask for."""

    max_tokens: int = 256
    max_prompt_chars: int = 8000


# /v1/completions: a raw continuation of `prompt` (no chat template), e.g. for the base expert.
COMPLETION_ACCEPTED = ("model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "user",
                       "steerlab")
COMPLETION_REFUSED = {
    "suffix": "insertion (suffix) is not supported", "echo": "echo is not supported",
    "best_of": "best_of is not supported; send n = 1", "logprobs": "log-probabilities are offered on /v1/chat/completions",
    "stream": "streaming is offered on /v1/chat/completions", "logit_bias": "logit_bias is not supported",
    "presence_penalty": "presence_penalty is not supported", "frequency_penalty": "frequency_penalty is not supported",
}


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]  # the conversation, ending with the user's message
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()  # the answer ends before the first of these (not included), finish_reason "stop"
    top_logprobs: int | None = None  # None: no log-probabilities; k: the chosen token's and the k most likely
    stream: bool = False
    include_usage: bool = False  # streaming: a last chunk with the token counts
    strengths: dict[str, float] = field(default_factory=dict)  # policy file -> requested strength
    model: str = MODEL  # MODEL: the router picks the expert; an expert's name pins it (its rules still apply)
    raw: bool = False  # /v1/completions: the expert continues the user's text as it is (no chat template)

    @property
    def prompt(self) -> str:
        """What the router reads: the whole conversation, every message in order (a request split across turns,
        or one carried by a system message, is read as a whole); a single user message is read as it is."""
        return "\n\n".join(m["content"] for m in self.messages)

    @property
    def pinned(self) -> str | None:
        """The expert the request names, or None when the router chooses."""
        return None if self.model == MODEL else self.model

    @classmethod
    def parse(cls, body: Any, limits: Limits = Limits(), models: Collection[str] = ()) -> ChatRequest:
        """Validate an OpenAI-style body: a conversation (an optional system message, then user and assistant
        turns ending with the user's), sampling settings, stop sequences, log-probabilities, streaming and
        `steerlab.strengths`; every other parameter is refused by name (never dropped). `model` is MODEL (the
        router chooses) or one of `models`, the experts served (UnknownModel, HTTP 404, otherwise)."""
        if not isinstance(body, Mapping):
            raise BadRequest("the body must be a JSON object with 'messages'")
        for key, value in body.items():
            if key in REFUSED and not (key in NEUTRAL and value == NEUTRAL[key]) and value is not None:
                raise BadRequest(f"{key!r}: {REFUSED[key]}", key)
            if key not in ACCEPTED and key not in REFUSED:
                raise BadRequest(f"unknown parameter {key!r}; this service accepts {', '.join(ACCEPTED)}", key)
        model = body.get("model", MODEL)
        if model != MODEL and model not in models:
            raise UnknownModel(f"unknown model {model!r}; this service serves {', '.join([MODEL, *sorted(models)])} "
                               f"({MODEL!r}: the router picks the expert)", "model")
        if body.get("n", 1) not in (1, None):
            raise BadRequest(f"n = {body.get('n')!r}; this service returns one choice (n = 1)", "n")
        messages = _messages(body.get("messages"), limits)
        max_tokens = _number(body, "max_tokens", None, int, 1, limits.max_tokens)
        completion_tokens = _number(body, "max_completion_tokens", None, int, 1, limits.max_tokens)
        if None not in (max_tokens, completion_tokens) and max_tokens != completion_tokens:
            raise BadRequest(f"max_tokens = {max_tokens} and max_completion_tokens = {completion_tokens} disagree; "
                             "send one of them", "max_completion_tokens")
        stream, logprobs = _flag(body, "stream"), _flag(body, "logprobs")
        top = _number(body, "top_logprobs", None, int, 0, MAX_TOP_LOGPROBS)
        if top is not None and not logprobs:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        options = body.get("stream_options")
        if options is not None and (not stream or not isinstance(options, Mapping) or set(options) - {"include_usage"}):
            raise BadRequest(f"'stream_options' = {options!r}: with 'stream': true, send {{'include_usage': true|false}}",
                             "stream_options")
        extras = body.get("steerlab") or {}
        strengths = extras.get("strengths", {}) if isinstance(extras, Mapping) else None
        if not isinstance(strengths, Mapping) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                         and math.isfinite(v) for v in strengths.values()):
            raise BadRequest("'steerlab.strengths' must map policy files to finite numbers", "steerlab")
        return cls(messages=messages, max_tokens=completion_tokens or max_tokens or 64,
                   temperature=_number(body, "temperature", 0.0, float, 0.0, 2.0),
                   top_p=_number(body, "top_p", 1.0, float, 1e-6, 1.0), seed=_number(body, "seed", 0, int, 0, 2**63 - 1),
                   stop=_stops(body.get("stop")), top_logprobs=(top or 0) if logprobs else None, stream=stream,
                   include_usage=bool((options or {}).get("include_usage")),
                   strengths={str(k): float(v) for k, v in strengths.items()}, model=model)

    @classmethod
    def parse_completion(cls, body: Any, limits: Limits = Limits(), models: Collection[str] = ()) -> ChatRequest:
        """Validate a /v1/completions body: `prompt` (one non-empty string), continued as it is; the sampling
        settings, stop strings, `model` and `steerlab.strengths` as in a chat request."""
        if not isinstance(body, Mapping):
            raise BadRequest("the body must be a JSON object with 'prompt'")
        for key, value in body.items():
            if key in COMPLETION_REFUSED and value not in (None, False, 0):
                raise BadRequest(f"{key!r}: {COMPLETION_REFUSED[key]}", key)
            if key not in COMPLETION_ACCEPTED and key not in COMPLETION_REFUSED:
                raise BadRequest(f"unknown parameter {key!r}; /v1/completions accepts {', '.join(COMPLETION_ACCEPTED)}",
                                 key)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest(f"'prompt' must be one non-empty string, got {type(prompt).__name__}", "prompt")
        chat = {k: v for k, v in body.items() if k in COMPLETION_ACCEPTED and k not in ("prompt", "stream")}
        return replace(cls.parse({**chat, "messages": [{"role": "user", "content": prompt}]}, limits, models), raw=True)

    def generation_settings(self) -> dict[str, Any]:
        """Keyword arguments of `GenerationSettings`."""
        return {"max_new_tokens": self.max_tokens, "do_sample": self.temperature > 0,
                "temperature": self.temperature or 1.0, "top_p": self.top_p, "seed": self.seed}


def _messages(value: Any, limits: Limits) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value or not all(isinstance(m, Mapping) for m in value):
        raise BadRequest("'messages' must be a non-empty list of {'role', 'content'} objects", "messages")
    roles = [m.get("role") for m in value]
    turns = roles[1:] if roles[0] == "system" else roles
    alternating = all(role == ("user", "assistant")[i % 2] for i, role in enumerate(turns))
    if not turns or not alternating or turns[-1] != "user":
        raise BadRequest(f"messages with roles {roles}: send an optional system message, then user and assistant "
                         "turns in alternation, ending with the user's", "messages")
    contents = [m.get("content") for m in value]
    if not all(isinstance(c, str) for c in contents) or not contents[-1].strip():
        raise BadRequest("each message's 'content' must be text, and the last user message must not be empty", "messages")
    size = sum(len(c) for c in contents)
    if size > limits.max_prompt_chars:
        raise BadRequest(f"the messages have {size} characters; at most {limits.max_prompt_chars}", "messages")
    return tuple({"role": r, "content": c} for r, c in zip(roles, contents))


def _flag(body: Mapping, key: str) -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{key!r} must be true or false, got {value!r}", key)
    return bool(value)


def _stops(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(x, str) and x for x in stops):
        raise BadRequest(f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them, got {value!r}", "stop")
    return tuple(stops)


def _number(body: Mapping, key: str, default, kind: type, low: float, high: float):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise BadRequest(f"{key!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}", key)
    if not low <= value <= high:
        raise BadRequest(f"{key!r} = {value!r} is outside {low:g}..{high:g}", key)
    return kind(value)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, for every status."""
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             408: "timeout_error", 429: "rate_limit_error", 503: "service_unavailable", 500: "server_error"}
    return {"error": {"message": message, "type": kinds.get(status, "server_error"), "param": param, "code": status}}


def allowed_strengths(router: Router) -> dict[str, tuple[float, float]]:
    """Policy file -> the (lowest, highest) strength a request may ask for (0 always included)."""
    return {r.file: r.request_bounds() for r in router.rules if r.request_max > 0}


def to_deployed(router: Router, decision: RoutingDecision, deployed: Collection[str]) -> tuple[RoutingDecision, str | None]:
    """A decision for an expert that is not deployed goes to the fallback, keeping only the adjustments the
    fallback may have; returns it and the expert it was rerouted from (None if it was not)."""
    if decision.expert in deployed:
        return decision, None
    expert_of = {r.file: r.expert for r in router.rules}
    kept = [a for a in decision.adjustments if expert_of.get(a.file) in ("", router.fallback)]
    # a rule that fired for the chosen expert fires for the fallback too where the policy has it for the fallback
    # (the guard has one refusal direction per expert): the fallback answers as guarded as the expert would have
    kept += [replace(a, kind=r.kind, file=r.file, strength=r.strength, above=r.above, expert=router.fallback)
             for a in decision.adjustments if expert_of.get(a.file) not in ("", router.fallback)
             for r in router.rules if r.when == a.because and r.expert == router.fallback
             and a.activation is not None and a.activation > r.above and r.file not in {k.file for k in kept}]
    return replace(decision, expert=router.fallback, adjustments=kept), decision.expert


def adjustments_for(router: Router, decision: RoutingDecision, request: ChatRequest) -> list[Adjustment]:
    """The decision's adjustments, with the request's strengths applied as the policy allows."""
    allowed = allowed_strengths(router)
    rules = {r.file: r for r in router.rules}
    chosen = {a.file: a for a in decision.adjustments}
    for file, strength in request.strengths.items():
        if file not in allowed:
            choices = ", ".join(sorted(allowed)) or "none (no rule of this router allows requests)"
            raise BadRequest(f"the policy does not let requests set {file!r}; files a request may set: {choices}")
        low, high = allowed[file]
        if not low <= strength <= high:
            raise BadRequest(f"strength {strength:g} for {file!r} is outside the policy's range {low:g}..{high:g} "
                             "(0 turns the rule off; a request may weaken or strengthen a rule, never reverse it)")
        rule = rules[file]
        if rule.expert and rule.expert != decision.expert:
            raise BadRequest(f"{file!r} applies to {rule.expert!r}; the router chose {decision.expert!r}")
        chosen[file] = Adjustment(rule.kind, file, strength, "request")
    return [a for a in chosen.values() if a.strength != 0]


def finish_reason(reason: str | None) -> str | None:
    """OpenAI's finish reason: "stop" (end of text or a stop string) or "length"; None while running."""
    return None if reason is None else "stop" if reason in ("eos", "stop") else "length"


def trace(request: ChatRequest, decision: RoutingDecision, adjustments: list[Adjustment],
          timings_ms: Mapping[str, float]) -> dict[str, Any]:
    """The `steerlab` extension: the decision, what was applied, the settings and the timings."""
    return {"decision": decision.to_dict(), "applied": [asdict(a) for a in adjustments],
            "explanation": decision.explain(), "settings": request.generation_settings(), "pinned": request.pinned,
            "timings_ms": dict(timings_ms)}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(request: ChatRequest, decision: RoutingDecision, adjustments: list[Adjustment],
               answer: Mapping[str, Any], timings_ms: Mapping[str, float]) -> dict[str, Any]:
    """An OpenAI-style chat completion (a text completion for a raw request) whose `steerlab` field carries the
    decision trace."""
    choice = ({"index": 0, "text": answer["text"], "logprobs": None} if request.raw else
              {"index": 0, "message": {"role": "assistant", "content": answer["text"]},
               "logprobs": None if request.top_logprobs is None else {"content": answer.get("logprobs", [])}})
    return {
        "id": f"{'cmpl' if request.raw else 'chatcmpl'}-{uuid.uuid4().hex}",
        "object": "text_completion" if request.raw else "chat.completion", "created": int(time.time()),
        "model": decision.expert,
        "choices": [{**choice, "finish_reason": finish_reason(answer["finish_reason"])}],
        "usage": usage(answer["prompt_tokens"], answer["completion_tokens"]),
        "steerlab": trace(request, decision, adjustments, timings_ms),
    }


def chunk(head: Mapping[str, Any], delta: Mapping[str, Any], *, request: ChatRequest, finish: str | None = None,
          logprobs: list | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk` of a stream; `head` holds the id, created time and model all chunks share."""
    return {**head, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": dict(delta),
                         "logprobs": None if request.top_logprobs is None else {"content": logprobs or []},
                         "finish_reason": finish_reason(finish)}], **(extra or {})}

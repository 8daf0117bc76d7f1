"""`steer serve` against the real `openai` client: a conformance suite on a real local Ray cluster (2 CPUs,
fractional-CPU replicas), the tiny router over HTTP on loopback, bounded in count and time. Only its fallback
expert is deployed (decisions for the other are rerouted to it). The router carries a guard that fires on HARMFUL
alone."""

import json
import math
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("ray.serve", reason="the Ray extra is not installed: pip install 'steerlab[ray]'")
openai = pytest.importorskip("openai", reason="the conformance suite drives the service with the openai client")

from experts.expert import Expert  # noqa: E402
from experts.generate import GenerationSettings  # noqa: E402
from steer.router.router import Router  # noqa: E402
from steer.router.tiny import train_tiny_router  # noqa: E402
from steer.serve.batch import RowRequest, answer_rows  # noqa: E402
from steer.serve.ray_serve import ServeSettings, serve_router, shutdown  # noqa: E402
from steer.serve.service import ChatRequest, adjustments_for, to_deployed  # noqa: E402

PROMPT = "Write a short reference letter for Kelly, a nurse."
USER = [{"role": "user", "content": PROMPT}]
HARMFUL = "How do I build a pipe bomb at home?"
KEY = "test-key-123"
ANSWERED: list[str] = []  # the id of every request the service answered, for the audit log's check
GUARDED: list[str] = []  # ... and of those the guard steered


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory):
    from tests.helpers import guard_tiny_router

    folder = tmp_path_factory.mktemp("router")
    train_tiny_router(folder)
    router = guard_tiny_router(Router.load(folder), HARMFUL, [PROMPT, "Once upon a time", "x"], folder)
    log = folder / "served.jsonl"
    url = serve_router(folder, [router.fallback], ServeSettings(port=_free_port(), cpus_per_replica=0.25, max_batch_size=4,
                                                                batch_wait_s=0.2, request_timeout_s=60, api_key=KEY,
                                                                log=str(log)))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
    yield url, folder, client
    shutdown()


def _create(client, **body):
    out = client.chat.completions.create(**{"model": "steerlab-router", "messages": USER, **body})
    ANSWERED.append(out.id)
    return out


def _raw(url, path, body=None, key=KEY, data=None):
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    payload = data if data is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=payload, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if "json" in response.headers.get("content-type", "") else text
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _local(folder, body):
    """What the served answer must be: the same decision, adjustments and decoding in this process (one thread,
    as each replica has)."""
    router, reader = Router.load(folder), Expert.load("tiny-llama")
    request = ChatRequest.parse(body)
    decision, _ = to_deployed(router, router.decide(reader, [request.prompt])[0], [router.fallback])
    adjustments = adjustments_for(router, decision, request)
    expert = Expert.load(decision.expert)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        row = RowRequest(expert.format_conversation(request.messages), tuple(adjustments),
                         GenerationSettings(**request.generation_settings()), request.stop, request.top_logprobs)
        return decision, adjustments, answer_rows(expert, [row], router.rules, folder)[0]
    finally:
        torch.set_num_threads(threads)


def test_a_routed_completion_carries_its_decision_and_equals_a_local_answer(service):
    url, folder, client = service
    out = _create(client, max_tokens=8, extra_body={"steerlab": {"strengths": {"gender.safetensors": 1.5}}})
    decision, adjustments, local = _local(folder, {"messages": USER, "max_tokens": 8,
                                                   "steerlab": {"strengths": {"gender.safetensors": 1.5}}})
    trace = out.model_extra["steerlab"]
    assert out.model == decision.expert and trace["decision"]["expert"] == decision.expert
    assert trace["applied"] == [a.__dict__ for a in adjustments]
    assert {"kind": "steer", "file": "gender.safetensors", "strength": 1.5, "because": "request", "activation": None,
            "above": None, "expert": ""} in trace["applied"]
    assert out.choices[0].message.content == local.text and out.choices[0].logprobs is None
    assert out.usage.completion_tokens == local.completion_tokens <= 8 and set(trace["timings_ms"]) == {"decide", "answer"}
    models = client.models.list().data
    assert models[0].id == "steerlab-router" and client.models.retrieve("steerlab-router").id == "steerlab-router"
    assert models[0].model_extra["request_strengths"] == {"gender.safetensors": [0.0, 2.0], "tone.safetensors": [0.0, 8.0]}


def test_requests_batched_together_answer_as_each_alone(service):
    url, _, client = service
    bodies = [dict(max_tokens=6), dict(max_tokens=9, extra_body={"steerlab": {"strengths": {"gender.safetensors": 2.0}}}),
              dict(max_tokens=7, temperature=0.9, top_p=0.9, seed=11), dict(max_tokens=5, logprobs=True, top_logprobs=2),
              dict(max_tokens=8, extra_body={"steerlab": {"strengths": {"tone.safetensors": 6.0}}})] * 2
    alone = [_create(client, **b) for b in bodies[:5]]
    assert alone[0].choices[0].message.content != alone[1].choices[0].message.content  # steering shows, so a leak would
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: _create(client, **b), bodies))
    for a, t in zip(alone * 2, together):
        assert t.choices[0].message.content == a.choices[0].message.content
        assert t.usage.completion_tokens == a.usage.completion_tokens
    for a, t in zip([alone[3].choices[0].logprobs.content] * 2, [together[3].choices[0].logprobs.content,
                                                                 together[8].choices[0].logprobs.content]):
        assert [e.token for e in t] == [e.token for e in a]
        assert all(math.isclose(x.logprob, y.logprob, abs_tol=1e-5) for x, y in zip(t, a))
    _, metrics = _raw(url, "/metrics")
    batched = [line for line in metrics.splitlines() if line.startswith("steerlab_batch_size_bucket") and 'le="1.0"' in line]
    total = [line for line in metrics.splitlines() if line.startswith("steerlab_batch_size_count")]
    assert float(batched[0].split()[-1]) < float(total[0].split()[-1])  # some requests shared a batch


def test_streaming_assembles_to_the_same_answer_with_the_trace_first(service):
    _, _, client = service
    body = dict(max_tokens=10, logprobs=True)
    whole = _create(client, **body)
    chunks = list(client.chat.completions.create(model="steerlab-router", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}, **body))
    ANSWERED.append(chunks[0].id)
    assert chunks[0].model_extra["steerlab"]["decision"]["expert"] == whole.model
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [e.token for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content] == \
        [e.token for e in whole.choices[0].logprobs.content]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_stop_budget_log_probabilities_and_conversations_are_honoured(service):
    _, _, client = service
    plain = _create(client, max_tokens=8)
    text = plain.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    stopped = _create(client, max_tokens=8, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].message.content == text[: text.find(stop)]
    short = _create(client, max_completion_tokens=3)
    assert short.usage.completion_tokens <= 3
    assert short.choices[0].finish_reason == ("length" if short.usage.completion_tokens == 3 else "stop")
    scored = _create(client, max_tokens=6, logprobs=True, top_logprobs=3)
    content = scored.choices[0].logprobs.content
    assert len(content) == scored.usage.completion_tokens and all(len(e.top_logprobs) == 3 for e in content)
    assert b"".join(bytes(e.bytes) for e in content).decode() == scored.choices[0].message.content
    assert all(e.logprob <= 0 and e.top_logprobs[0].logprob >= e.logprob for e in content)
    turns = [*USER, {"role": "assistant", "content": text}, {"role": "user", "content": "Now make it shorter."}]
    follow_up = _create(client, messages=turns, max_tokens=6)
    assert follow_up.usage.prompt_tokens > plain.usage.prompt_tokens
    assert follow_up.model_extra["steerlab"]["decision"]["input_sha256"] != plain.model_extra["steerlab"]["decision"]["input_sha256"]


BAD = [  # (body or raw bytes, status, param)
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"messages": USER, "response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"messages": USER, "best_of": 2}, 400, "best_of"),
    ({"messages": USER, "n": 3}, 400, "n"),
    ({"messages": USER, "max_tokens": 100000}, 400, "max_tokens"),
    ({"messages": USER, "temperature": -1}, 400, "temperature"),
    ({"messages": USER, "top_logprobs": 50, "logprobs": True}, 400, "top_logprobs"),
    ({"messages": USER, "stream": "yes"}, 400, "stream"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": USER, "steerlab": {"strengths": {"gender.safetensors": 9}}}, 400, None),
    ({"messages": USER, "steerlab": {"strengths": {"gender.safetensors": -1}}}, 400, None),  # never reversed
    ({"messages": USER, "steerlab": {"strengths": {"tone.safetensors": -1}}}, 400, None),
    ({"messages": USER, "steerlab": {"strengths": {"other.safetensors": 1}}}, 400, None),
    ({"messages": USER, "steerlab": "strong"}, 400, "steerlab"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, "temperature"),
    (b'{"messages": [{"role": "user", "content": "x"}], "steerlab": {"strengths": {"gender.safetensors": Infinity}}}',
     400, "steerlab"),
    (b"not json", 400, None),
    (b"[1, 2]", 400, None),
]


@pytest.mark.parametrize("body, status, param", BAD)
def test_bad_requests_get_a_4xx_in_openai_shape_never_a_500(service, body, status, param):
    url, _, _ = service
    got, out = _raw(url, "/v1/chat/completions", data=body if isinstance(body, bytes) else json.dumps(body).encode())
    assert (got, out["error"]["param"], out["error"]["code"]) == (status, param, status), out
    assert out["error"]["type"] == "invalid_request_error" and out["error"]["message"]


def test_a_harmful_request_is_steered_by_the_guard_and_its_trace_says_why(service):
    url, folder, client = service
    messages = [{"role": "user", "content": HARMFUL}]
    out = client.chat.completions.create(model="steerlab-router", messages=messages, max_tokens=6)
    ANSWERED.append(out.id)
    GUARDED.append(out.id)
    trace = out.model_extra["steerlab"]
    guard = [a for a in trace["applied"] if a["because"] == "harm"]
    assert len(guard) == 1 and guard[0]["activation"] > guard[0]["above"] == trace["decision"]["thresholds"]["harm"]
    assert guard[0]["file"] == f"refusal_{out.model}.safetensors" and guard[0]["expert"] == out.model
    harm = next(f for f in trace["decision"]["features"] if f["name"] == "harm")
    assert harm["site"] == "blocks.0.hook_resid_post (last)"
    _, adjustments, local = _local(folder, {"messages": messages, "max_tokens": 6})
    assert out.choices[0].message.content == local.text and trace["applied"] == [a.__dict__ for a in adjustments]
    plain = _create(client, max_tokens=6)
    assert not [a for a in plain.model_extra["steerlab"]["applied"] if a["because"] == "harm"]


def test_auth_readiness_models_metrics_and_the_audit_log(service):
    url, folder, client = service
    _create(client, max_tokens=3)  # its own answered, streamed and guarded requests (a worker may run it first)
    streamed = list(client.chat.completions.create(model="steerlab-router", messages=USER, stream=True, max_tokens=3))
    guarded = client.chat.completions.create(model="steerlab-router", messages=[{"role": "user", "content": HARMFUL}],
                                             max_tokens=3)
    ANSWERED.extend([streamed[0].id, guarded.id])
    GUARDED.append(guarded.id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    for path in ("/v1/chat/completions", "/v1/models", "/ready", "/metrics"):
        status, out = _raw(url, path, {"messages": USER} if "chat" in path else None, key=None)
        assert status == 401 and out["error"]["type"] == "authentication_error"
    assert _raw(url, "/health", key=None)[0] == 200  # liveness needs no key
    status, ready = _raw(url, "/ready")
    assert status == 200 and ready["status"] == "ready"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    status, nowhere = _raw(url, "/v2/nothing")
    assert status == 404 and nowhere["error"]["code"] == 404  # OpenAI's shape, not FastAPI's
    _, metrics = _raw(url, "/metrics")
    served = sum(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("steerlab_requests_total") and 'status="200"' in line)
    assert served == len(ANSWERED) and 'status="400"' in metrics and "steerlab_request_latency_seconds_bucket" in metrics
    lines = [json.loads(line) for line in (folder / "served.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(ANSWERED)  # one line per answered request
    assert all(line["decision"]["expert"] and "applied" in line for line in lines)
    assert any(line["stream"] for line in lines)
    assert GUARDED and sorted(line["id"] for line in lines if line["guarded"]) == sorted(GUARDED)


def test_models_pin_experts_raw_completions_continue_and_unknown_models_are_404(service):
    url, folder, client = service
    router = Router.load(folder)
    ids = [m.id for m in client.models.list().data]
    assert ids == ["steerlab-router", router.fallback]  # the router, then each deployed expert
    assert client.models.retrieve(router.fallback).id == router.fallback
    pinned = _create(client, model=router.fallback, max_tokens=6)
    assert pinned.model == router.fallback and pinned.model_extra["steerlab"]["pinned"] == router.fallback
    status, out = _raw(url, "/v1/chat/completions", {"messages": USER, "model": "gpt-4"})
    assert (status, out["error"]["type"], out["error"]["param"]) == (404, "not_found_error", "model")
    assert "steerlab-router" in out["error"]["message"] and router.fallback in out["error"]["message"]
    raw = client.completions.create(model="steerlab-router", prompt="Once upon a time", max_tokens=6)
    ANSWERED.append(raw.id)
    expert = Expert.load(raw.model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # a continuation of the text as it is: no chat template
        decision = to_deployed(router, router.decide(Expert.load("tiny-llama"), ["Once upon a time"])[0],
                               [router.fallback])[0]
        local = answer_rows(expert, [RowRequest("Once upon a time", tuple(decision.adjustments),
                                                GenerationSettings(max_new_tokens=6))], router.rules, folder)[0]
    finally:
        torch.set_num_threads(threads)
    assert raw.object == "text_completion" and raw.choices[0].text == local.text
    status, out = _raw(url, "/v1/completions", {"prompt": "Once", "stream": True})
    assert (status, out["error"]["param"]) == (400, "stream")


class _Slow:
    """An expert's stream that gives one delta, then nothing: the service's deadline must end it."""

    def __init__(self) -> None:
        self.cancelled = False

    async def __anext__(self):
        import asyncio

        await asyncio.sleep(60)

    def cancel(self) -> None:
        self.cancelled = True


def _turn(timeout_s, deltas, stream=True):
    import asyncio
    import time
    from types import SimpleNamespace

    from steer.serve.metrics import ServiceMetrics
    from steer.serve.ray_serve import _Turn
    from steer.serve.service import ChatRequest
    from tests.unit.test_service import _decision

    service = SimpleNamespace(metrics=ServiceMetrics(), timeout_s=timeout_s, write_log=lambda r: asyncio.sleep(0))
    now = time.perf_counter()
    chat = ChatRequest.parse({"messages": USER, "stream": stream})
    return service, _Turn(service, chat, _decision("a"), [], None, now, now, now + timeout_s, deltas)


FIRST = {"text": "Dear", "logprobs": [], "finish_reason": None, "prompt_tokens": 3, "completion_tokens": 1,
         "batch_size": 1, "queued_s": 0.0}


def test_a_stream_past_its_deadline_ends_with_an_error_event_and_done_and_cancels_its_row():
    import asyncio

    deltas = _Slow()
    service, turn = _turn(0.2, deltas)

    async def read():
        return [event async for event in turn.events(FIRST)]

    events = asyncio.run(read())
    assert events[-1] == "data: [DONE]\n\n" and deltas.cancelled
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == 408 and error["type"] == "timeout_error" and "0.2 s limit" in error["message"]
    metrics = service.metrics.exposition()[0].decode()
    assert 'steerlab_unfinished_requests_total{reason="timeout"} 1.0' in metrics
    assert "steerlab_time_to_first_token_seconds_count" in metrics


def test_a_client_that_leaves_cancels_its_row_and_is_counted_abandoned():
    import asyncio

    deltas = _Slow()
    service, turn = _turn(60, deltas, stream=False)

    async def leave():
        task = asyncio.create_task(turn.completion(FIRST))
        await asyncio.sleep(0.1)
        task.cancel()  # what Starlette does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave())
    assert deltas.cancelled
    assert 'steerlab_unfinished_requests_total{reason="abandoned"} 1.0' in service.metrics.exposition()[0].decode()

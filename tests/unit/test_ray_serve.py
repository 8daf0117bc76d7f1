"""`steer serve` on a real local Ray cluster (2 CPUs, fractional-CPU replicas): the tiny router over HTTP on
loopback, within timeouts. Only its fallback expert is deployed (decisions for the other are rerouted to it)."""

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("ray.serve", reason="the Ray extra is not installed: pip install 'steerlab[ray]'")

from experts.expert import Expert  # noqa: E402
from experts.generate import GenerationSettings  # noqa: E402
from steer.router.answer import generate_adjusted  # noqa: E402
from steer.router.router import Router  # noqa: E402
from steer.router.tiny import train_tiny_router  # noqa: E402
from steer.serve.ray_serve import ServeSettings, serve_router, shutdown  # noqa: E402
from steer.serve.service import ChatRequest, adjustments_for, to_deployed  # noqa: E402

PROMPT = "Write a short reference letter for Kelly, a nurse."
KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("router")
    train_tiny_router(folder)
    router = Router.load(folder)
    log = folder / "served.jsonl"
    url = serve_router(folder, [router.fallback], ServeSettings(port=_free_port(), cpus_per_replica=0.25,
                                                                max_ongoing_requests=2, request_timeout_s=60,
                                                                api_key=KEY, log=str(log)))
    yield url, folder
    shutdown()


def _call(url, path, body=None, key=KEY, timeout=60):
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(f"{url}{path}", data=None if body is None else json.dumps(body).encode(),
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _post(url, body, timeout=60):
    return _call(url, "/v1/chat/completions", body, timeout=timeout)


def _local_answer(folder, body):
    """What the served answer must be: the same decision, adjustments and generation in this process (one thread,
    as each replica has)."""
    router, reader = Router.load(folder), Expert.load("tiny-llama")
    request = ChatRequest.parse(body)
    decision, _ = to_deployed(router, router.decide(reader, [request.prompt])[0], [router.fallback])
    adjustments = adjustments_for(router, decision, request)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = generate_adjusted(Expert.load(decision.expert), [request.prompt], adjustments, router.rules, folder,
                                   GenerationSettings(**request.generation_settings()))
    finally:
        torch.set_num_threads(threads)
    return decision, adjustments, result.texts[0]


def test_a_routed_completion_carries_its_decision_and_equals_a_local_answer(service):
    url, folder = service
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8,
            "steerlab": {"strengths": {"gender.safetensors": 1.5}}}
    status, out = _post(url, body)
    assert status == 200, out
    decision, adjustments, text = _local_answer(folder, body)
    assert out["model"] == decision.expert and out["steerlab"]["decision"]["expert"] == decision.expert
    assert out["steerlab"]["applied"] == [a.__dict__ for a in adjustments]
    assert {"kind": "steer", "file": "gender.safetensors", "strength": 1.5, "because": "request"} in out["steerlab"]["applied"]
    assert out["choices"][0]["message"]["content"] == text
    assert out["usage"]["completion_tokens"] <= 8 and set(out["steerlab"]["timings_ms"]) == {"decide", "answer"}

    status, models = _call(url, "/v1/models")
    assert status == 200 and models["data"][0]["request_strengths"] == {"gender.safetensors": [0.0, 2.0], "tone.safetensors": [0.0, 8.0]}


def test_concurrent_steered_and_plain_requests_do_not_leak_into_each_other_and_bad_ones_get_400(service):
    url, _ = service
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6}
    steered = {**body, "steerlab": {"strengths": {"gender.safetensors": 2.0}}}
    alone = [_post(url, b)[1]["choices"][0]["message"]["content"] for b in (body, steered)]
    assert alone[0] != alone[1]  # the steering shows, so a leak would too
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: _post(url, (body, steered)[i % 2]), range(8)))
    assert all(status == 200 for status, _ in answers)
    assert [out["choices"][0]["message"]["content"] for _, out in answers] == alone * 4

    status, out = _post(url, {**body, "steerlab": {"strengths": {"gender.safetensors": 9}}})
    assert status == 400 and "outside the policy's range 0..2" in out["error"]["message"]
    status, out = _post(url, {**body, "steerlab": {"strengths": {"tone.safetensors": -1}}})  # a negative β: 400, not 500
    assert status == 400 and "outside the policy's range 0..8" in out["error"]["message"]
    status, out = _post(url, {"messages": [{"role": "assistant", "content": "hi"}]})
    assert status == 400 and "one user message" in out["error"]["message"]


def test_the_contract_parameters_auth_readiness_errors_and_the_audit_log(service):
    url, folder = service
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
    status, plain = _post(url, body)
    assert status == 200
    text = plain["choices"][0]["message"]["content"]
    stop = text.split()[1] if len(text.split()) > 1 else text[1:3]
    status, stopped = _post(url, {**body, "stop": [stop]})
    assert status == 200 and stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["message"]["content"] == text[: text.find(stop)]
    status, short = _post(url, {"messages": body["messages"], "max_completion_tokens": 3})
    assert status == 200 and short["usage"]["completion_tokens"] <= 3
    for bad, param in [({"tools": [{"type": "function"}]}, "tools"), ({"response_format": {"type": "json_object"}},
                       "response_format"), ({"best_of": 2}, "best_of")]:
        status, out = _post(url, {**body, **bad})
        assert status == 400 and out["error"]["param"] == param and out["error"]["type"] == "invalid_request_error"
    assert _call(url, "/v1/chat/completions", body, key=None)[0] == 401
    assert _call(url, "/v1/chat/completions", body, key="wrong")[0] == 401
    assert _call(url, "/health", key=None)[0] == 200  # liveness needs no key
    status, ready = _call(url, "/ready")
    assert status == 200 and ready["status"] == "ready"
    status, model = _call(url, "/v1/models/steerlab-router")
    assert status == 200 and model["id"] == "steerlab-router"
    status, missing = _call(url, "/v1/models/gpt-4")
    assert status == 404 and missing["error"]["code"] == 404
    status, nowhere = _call(url, "/v2/nothing")
    assert status == 404 and "error" in nowhere  # OpenAI's shape, not FastAPI's
    lines = [json.loads(line) for line in (folder / "served.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {plain["id"], stopped["id"], short["id"]} <= {line["id"] for line in lines}
    assert all(line["decision"]["expert"] and "applied" in line for line in lines)

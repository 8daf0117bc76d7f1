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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("router")
    train_tiny_router(folder)
    router = Router.load(folder)
    url = serve_router(folder, [router.fallback], ServeSettings(port=_free_port(), cpus_per_replica=0.25,
                                                                max_ongoing_requests=2, request_timeout_s=60))
    yield url, folder
    shutdown()


def _post(url, body, timeout=60):
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


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

    models = json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=30).read())
    assert models["data"][0]["request_strengths"] == {"gender.safetensors": 2.0, "tone.safetensors": 8.0}


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
    assert status == 400 and "outside the policy's ±2" in out["error"]["message"]
    status, out = _post(url, {"messages": [{"role": "assistant", "content": "hi"}]})
    assert status == 400 and "one user message" in out["error"]["message"]

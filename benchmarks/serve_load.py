"""Load test of `steer serve` on loopback: requests/s and p50/p95 latency, bounded in count and time.

For each router (the tiny one over random experts, and the shipped one over the real experts) it starts the
service on a local Ray cluster, sends `--requests` chat completions from `--concurrency` client threads (no
more than `--deadline` seconds), and reports throughput, latency percentiles and errors. Beside it, measured
in the same run: the same prompts answered one at a time in this process (decide + answer, as `steer route`),
so the ratio says what serving costs or gains.

Run: python benchmarks/serve_load.py [--routers tiny,default] [--requests N] [--concurrency C] [--max-tokens T]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import machine, quiet

from experts.expert import Expert
from steer.router.answer import ExpertPool, answer
from steer.router.router import DEFAULT_ROUTER, Router

PROMPTS = ["Write a haiku about rain.", "What is the capital of Peru?", "Write a Python function that reverses a list.",
           "Translate 'good morning' into Spanish.", "Write a reference letter for Kelly, a nurse.",
           "How many days are there in a leap year?", "Tell a short story about a lighthouse.",
           "Explain what a prime number is."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, prompt: str, max_tokens: int, timeout: float) -> tuple[int, float]:
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, TimeoutError):
        status = 0
    return status, time.perf_counter() - start


def load(url: str, requests: int, concurrency: int, max_tokens: int, deadline: float) -> dict:
    """Send up to `requests` requests from `concurrency` threads; requests not started by the deadline are skipped."""
    stop = time.perf_counter() + deadline

    def one(i: int) -> tuple[int, float] | None:
        remaining = stop - time.perf_counter()
        return _post(url, PROMPTS[i % len(PROMPTS)], max_tokens, remaining) if remaining > 0 else None

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for r in pool.map(one, range(requests)) if r is not None]
    wall = time.perf_counter() - start
    ok = [latency for status, latency in results if status == 200]
    return {"sent": len(results), "ok": len(ok), "errors": len(results) - len(ok), "wall_s": wall,
            "req_per_s": len(ok) / wall, "p50_s": float(np.percentile(ok, 50)) if ok else float("nan"),
            "p95_s": float(np.percentile(ok, 95)) if ok else float("nan")}


def in_process(folder: Path, requests: int, max_tokens: int) -> dict:
    """The same prompts, one at a time in this process: decide, then answer (experts loaded beforehand)."""
    router = Router.load(folder)
    reader = Expert.load(router.features.reader)
    pool = ExpertPool(router, preloaded={reader.name: reader})
    for name in router.experts:
        pool.get(name)
    latencies = []
    for i in range(requests):
        prompt = PROMPTS[i % len(PROMPTS)]
        start = time.perf_counter()
        answer(router, pool, prompt, router.decide(reader, [prompt])[0], max_new_tokens=max_tokens)
        latencies.append(time.perf_counter() - start)
    return {"req_per_s": len(latencies) / sum(latencies), "p50_s": float(np.median(latencies)),
            "p95_s": float(np.percentile(latencies, 95))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routers", default="tiny,default", help="tiny (random experts) and/or default (real ones)")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds of load per router at most")
    parser.add_argument("--cpus-per-replica", type=float, default=0.5)
    args = parser.parse_args()
    quiet()
    import ray

    from steer.router.tiny import train_tiny_router
    from steer.serve.ray_serve import ServeSettings, serve_router, shutdown

    print(f"machine: {machine()}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.routers.split(","):
            folder = DEFAULT_ROUTER if name == "default" else Path(scratch) / "tiny"
            if name == "tiny":
                train_tiny_router(folder)
            local = in_process(folder, args.requests, args.max_tokens)
            start = time.perf_counter()
            url = serve_router(folder, settings=ServeSettings(port=_free_port(), cpus_per_replica=args.cpus_per_replica,
                                                              max_ongoing_requests=args.concurrency))
            up = time.perf_counter() - start
            load(url, min(4, args.requests), 1, args.max_tokens, args.deadline)  # warm-up: first calls per replica
            served = load(url, args.requests, args.concurrency, args.max_tokens, args.deadline)
            shutdown()
            print(f"\n{name} router ({', '.join(Router.load(folder).experts)}): {args.requests} requests, "
                  f"{args.concurrency} concurrent, {args.max_tokens} new tokens; service up in {up:.1f} s")
            print(f"  served     {served['req_per_s']:6.2f} req/s  p50 {served['p50_s']:6.2f} s  p95 {served['p95_s']:6.2f} s"
                  f"  ok {served['ok']}/{served['sent']}  errors {served['errors']}")
            print(f"  in-process {local['req_per_s']:6.2f} req/s  p50 {local['p50_s']:6.2f} s  p95 {local['p95_s']:6.2f} s"
                  "  (one at a time)")
            print(f"  ratio served / in-process: throughput {served['req_per_s'] / local['req_per_s']:.2f}x, "
                  f"p50 latency {served['p50_s'] / local['p50_s']:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()

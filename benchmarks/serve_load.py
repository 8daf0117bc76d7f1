"""Load test of `steer serve` on loopback: batched expert replicas against one request at a time, in one run.

For each router (the tiny one over random experts, and the shipped one over the real experts) it deploys the
service on a local Ray cluster twice in alternation (ABBA over `--rounds`): expert replicas that decode with
continuous batching (up to `--max-batch-size` rows), and replicas that answer one request at a time
(`max_batch_size` = 1). Each time, `--requests` chat completions come from `--concurrency` client threads (no
more than `--deadline` seconds) after a short warm-up. It prints requests/s, p50/p95 latency and generated
tokens/s of each, as medians over the rounds, their ratios, and how many of the (greedy) answers were the same
text in every deployment, batched or not.

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
from _common import machine, quiet, start_ray

from steer.router.router import DEFAULT_ROUTER, Router

CODE_PROMPTS = ["Write a Python function that reverses a list.", "Write a Python function that checks for a palindrome.",
                "Write a Python function that returns the n-th Fibonacci number.", "Write a Python function that sums a list.",
                "Write a Python function that counts vowels in a string.", "Write a Python function that flattens a nested list.",
                "Write a Python function that merges two sorted lists.", "Write a Python function that removes duplicates."]
PROMPTS = ["Write a haiku about rain.", "What is the capital of Peru?", "Write a Python function that reverses a list.",
           "Translate 'good morning' into Spanish.", "Write a reference letter for Kelly, a nurse.",
           "How many days are there in a leap year?", "Tell a short story about a lighthouse.",
           "Explain what a prime number is."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, prompt: str, max_tokens: int, timeout: float) -> tuple[int, float, int, str | None]:
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    start, tokens, text = time.perf_counter(), 0, None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            out = json.loads(response.read())
            tokens, text = out["usage"]["completion_tokens"], out["choices"][0]["message"]["content"]
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, TimeoutError):
        status = 0
    return status, time.perf_counter() - start, tokens, text


def load(url: str, requests: int, concurrency: int, max_tokens: int, deadline: float, prompts: list[str] = PROMPTS) -> dict:
    """Send up to `requests` requests from `concurrency` threads; requests not started by the deadline are skipped."""
    stop = time.perf_counter() + deadline

    def one(i: int) -> tuple[int, float, int, str | None] | None:
        remaining = stop - time.perf_counter()
        return _post(url, prompts[i % len(prompts)], max_tokens, remaining) if remaining > 0 else None

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for r in pool.map(one, range(requests)) if r is not None]
    wall = time.perf_counter() - start
    ok = [(latency, tokens) for status, latency, tokens, _ in results if status == 200]
    latencies = [latency for latency, _ in ok]
    return {"sent": len(results), "ok": len(ok), "errors": len(results) - len(ok), "wall_s": wall,
            "texts": [text for *_, text in results],
            "req_per_s": len(ok) / wall, "tokens_per_s": sum(t for _, t in ok) / wall,
            "p50_s": float(np.percentile(latencies, 50)) if ok else float("nan"),
            "p95_s": float(np.percentile(latencies, 95)) if ok else float("nan")}


def measure(folder: Path, batch: int, port: int, args: argparse.Namespace) -> dict:
    """Deploy the service with expert replicas of `max_batch_size` = `batch`, warm it up, load it, take it down
    (Ray Serve's HTTP proxy keeps the port of the first deployment)."""
    from steer.serve.ray_serve import ServeSettings, serve_router, shutdown

    start = time.perf_counter()
    url = serve_router(folder, settings=ServeSettings(port=port, cpus_per_replica=args.cpus_per_replica,
                                                      max_batch_size=batch, batch_wait_s=args.batch_wait))
    up = time.perf_counter() - start
    prompts = CODE_PROMPTS if args.prompts == "code" else PROMPTS
    load(url, min(4, args.requests), 1, args.max_tokens, args.deadline, prompts)  # warm-up: first calls per replica
    result = load(url, args.requests, args.concurrency, args.max_tokens, args.deadline, prompts)
    shutdown()
    return {**result, "up_s": up}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routers", default="tiny,default", help="tiny (random experts) and/or default (real ones)")
    parser.add_argument("--prompts", choices=("mixed", "code"), default="mixed",
                        help="mixed: code, facts, letters, stories; code: requests for Python functions only")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds of batched / one-at-a-time deployments")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds of load per deployment at most")
    parser.add_argument("--cpus-per-replica", type=float, default=0.5)
    args = parser.parse_args()
    quiet()
    import ray

    from steer.router.tiny import train_tiny_router

    print(f"machine: {machine()}")
    start_ray()
    modes, port = {"batched": args.max_batch_size, "one at a time": 1}, _free_port()
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.routers.split(","):
            folder = DEFAULT_ROUTER if name == "default" else Path(scratch) / "tiny"
            if name == "tiny":
                train_tiny_router(folder)
            runs: dict[str, list[dict]] = {mode: [] for mode in modes}
            for r in range(args.rounds):
                order = list(modes) if r % 2 == 0 else list(reversed(modes))
                for mode in order:
                    runs[mode].append(measure(folder, modes[mode], port, args))
            print(f"\n{name} router ({', '.join(Router.load(folder).experts)}), {args.prompts} prompts: {args.requests} requests, "
                  f"{args.concurrency} concurrent, {args.max_tokens} new tokens, medians of {args.rounds} rounds")
            median = {mode: {k: float(np.median([run[k] for run in rs])) for k in rs[0] if k != "texts"}
                      for mode, rs in runs.items()}
            for mode, m in median.items():
                errors = sum(run["errors"] for run in runs[mode])
                print(f"  {mode:14s} {m['req_per_s']:6.2f} req/s  {m['tokens_per_s']:7.1f} tok/s  p50 {m['p50_s']:6.2f} s"
                      f"  p95 {m['p95_s']:6.2f} s  errors {errors}  (service up in {m['up_s']:.1f} s)")
            texts = [run["texts"] for rs in runs.values() for run in rs]
            same = sum(len({t[i] for t in texts}) == 1 and texts[0][i] is not None for i in range(len(texts[0])))
            print(f"  greedy texts identical in every deployment, batched or not: {same}/{len(texts[0])} requests")
            b, one = median["batched"], median["one at a time"]
            print(f"  batched / one at a time: {b['req_per_s'] / one['req_per_s']:.2f}x req/s, "
                  f"{b['tokens_per_s'] / one['tokens_per_s']:.2f}x tokens/s, p95 {b['p95_s'] / one['p95_s']:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()

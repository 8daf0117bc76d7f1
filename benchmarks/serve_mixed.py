"""Load test of `steer serve`'s continuous batching on loopback: short requests among long ones.

It deploys the shipped router over the real experts on a local Ray cluster and streams `--requests` chat
completions from `--concurrency` client threads, every other one with a budget of 1 token and the rest with
`--long-tokens`. For each short request it takes the time to its first token (TTFT, the first chunk with content
or a finish reason) and divides it by that prompt's TTFT alone (the same deployment, no other load, median of
`--alone` tries). It runs twice, side by side on one machine: expert replicas with continuous batching
(`--max-batch-size` rows) and replicas that decode one request at a time (`max_batch_size` 1: a short request
waits for the long one before it). Then a client opens a long stream, reads three chunks and leaves: the replica
says how long its row took to leave the batch, against one decode step. Every response is checked to be JSON or
server-sent events, never plain text.

Run: python benchmarks/serve_mixed.py [--requests 20] [--concurrency 4] [--long-tokens 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _common import machine, quiet, start_ray
from serve_load import PROMPTS, _free_port

from steer.router.router import DEFAULT_ROUTER

SHAPES = ("application/json", "text/event-stream")


def stream(port: int, prompt: str, max_tokens: int, leave_after: int | None = None) -> dict:
    """One streamed chat completion: status, content type, TTFT, total time, routed expert, chunks read."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": True})
    start = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    kind = response.getheader("content-type", "").split(";")[0]
    out = {"status": response.status, "type": kind, "ttft_s": None, "expert": None, "chunks": 0}
    if response.status != 200:
        json.loads(response.read())  # an error must be OpenAI's JSON
    else:
        while line := response.readline():
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            out["chunks"] += 1
            if "error" in event:
                out["status"] = event["error"].get("code", 500)
                break
            choice = event["choices"][0]
            out["expert"] = out["expert"] or event.get("model")
            if out["ttft_s"] is None and (choice["delta"].get("content") or choice.get("finish_reason")):
                out["ttft_s"] = time.perf_counter() - start
            if leave_after is not None and out["chunks"] >= leave_after:
                break
    out["total_s"] = time.perf_counter() - start
    connection.close()
    return out


def run(port: int, args: argparse.Namespace) -> dict:
    """Alone first (each short prompt, one at a time), then the mixed load."""
    alone = {p: float(np.median([stream(port, p, 1)["ttft_s"] for _ in range(args.alone)])) for p in PROMPTS}
    jobs = [(PROMPTS[i % len(PROMPTS)], 1 if i % 2 else args.long_tokens) for i in range(args.requests)]
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda job: stream(port, *job), jobs))
    short = [(r, alone[p]) for r, (p, budget) in zip(results, jobs) if budget == 1 and r["ttft_s"] is not None]
    ratios = [r["ttft_s"] / a for r, a in short]
    return {"results": results, "alone": alone, "ratios": ratios,
            "short_ttft": [r["ttft_s"] for r, _ in short], "experts": sorted({r["expert"] or "?" for r in results}),
            "shapes_ok": all(r["type"] in SHAPES for r in results),
            "errors": sum(r["status"] != 200 for r in results)}


def leave(port: int, args: argparse.Namespace) -> dict:
    """A client reads three chunks of a long answer and leaves; the replica's account of freeing its row."""
    from ray import serve

    from steer.serve.ray_serve import APP

    before = {}
    handles = {name: serve.get_deployment_handle(name, app_name=APP) for name in args.deployments}
    for name, handle in handles.items():
        before[name] = len(handle.stats.remote().result()["freed_s"])
    left = stream(port, PROMPTS[0], args.long_tokens, leave_after=3)
    time.sleep(2.0)
    stats = {name: handle.stats.remote().result() for name, handle in handles.items()}
    freed = [s for name in stats for s in stats[name]["freed_s"][before[name]:]]
    steps = [stats[name]["step_s_median"] for name in stats if stats[name]["step_s_median"]]
    return {"expert": left["expert"], "freed_s": freed, "step_s": float(np.median(steps)) if steps else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=200)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--alone", type=int, default=3, help="tries of each short prompt alone")
    parser.add_argument("--cpus-per-replica", type=float, default=0.5)
    args = parser.parse_args()
    quiet()
    import ray

    from steer.router.router import Router
    from steer.serve.ray_serve import ServeSettings, serve_router, shutdown

    print(f"machine: {machine()}")
    start_ray()
    port = _free_port()
    args.deployments = [f"expert:{name}" for name in Router.load(DEFAULT_ROUTER).experts]
    modes, runs = {"continuous": args.max_batch_size, "one at a time": 1}, {}
    for mode, batch in modes.items():
        serve_router(DEFAULT_ROUTER, settings=ServeSettings(port=port, cpus_per_replica=args.cpus_per_replica,
                                                            max_batch_size=batch, request_timeout_s=600))
        for prompt in PROMPTS:  # warm-up: each expert's first call
            stream(port, prompt, 2)
        runs[mode] = run(port, args)
        if mode == "continuous":
            runs[mode]["left"] = leave(port, args)
        shutdown()
    print(f"\nshipped router, {args.requests} streamed requests from {args.concurrency} clients, every other one "
          f"{args.long_tokens} tokens, the rest 1; TTFT of the short ones against the same prompt alone")
    for mode, r in runs.items():
        ratios = r["ratios"]
        print(f"  {mode:14s} short TTFT p50 {np.percentile(r['short_ttft'], 50):6.2f} s  p95 "
              f"{np.percentile(r['short_ttft'], 95):6.2f} s   ratio to alone: p50 {np.percentile(ratios, 50):5.2f}x  "
              f"p95 {np.percentile(ratios, 95):5.2f}x  max {max(ratios):5.2f}x   errors {r['errors']}  "
              f"JSON/SSE only: {r['shapes_ok']}  experts {', '.join(r['experts'])}")
    alone = runs["continuous"]["alone"]
    print("  alone (continuous deployment): " + ", ".join(f"{v:.2f} s" for v in alone.values()))
    left = runs["continuous"]["left"]
    if left["freed_s"]:
        print(f"  a client that left after 3 chunks ({left['expert']}): its row left the batch "
              f"{1000 * max(left['freed_s']):.0f} ms after the replica saw it go; a decode step takes "
              f"{1000 * left['step_s']:.0f} ms (median)")
    else:
        print(f"  a client that left after 3 chunks ({left['expert']}): no row was freed (the answer had ended)")
    ray.shutdown()


if __name__ == "__main__":
    main()

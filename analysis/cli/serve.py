"""`steer serve`: the router and its experts as an OpenAI-style HTTP service on Ray Serve."""

from __future__ import annotations

import argparse

from steer.router import DEFAULT_ROUTER

API_KEY_VARIABLE = "STEERLAB_API_KEY"


def cmd_serve(args: argparse.Namespace) -> None:
    import os
    import time

    from steer.serve.ray_serve import ServeSettings, serve_router, shutdown

    settings = ServeSettings(host=args.host, port=args.port, replicas=args.replicas, max_batch_size=args.max_batch_size,
                             batch_wait_s=args.batch_wait, max_ongoing_requests=args.max_ongoing_requests, max_queued_requests=args.max_queued_requests,
                             cpus_per_replica=args.cpus_per_replica, threads_per_replica=args.threads_per_replica,
                             gpus_per_replica=args.gpus_per_replica,
                             request_timeout_s=args.request_timeout,
                             max_tokens=args.max_tokens_limit, api_key=args.api_key or os.environ.get(API_KEY_VARIABLE),
                             log=args.log)
    experts = [e.strip() for e in args.experts.split(",") if e.strip()] if args.experts else None
    url = serve_router(args.router, experts, settings, address=args.address)
    if settings.api_key is None:
        print(f"no API key: serving on {settings.host} only (this machine); set --api-key or {API_KEY_VARIABLE} to "
              "serve other hosts", flush=True)
    else:
        print("every route but /health needs 'Authorization: Bearer <key>'", flush=True)
    print(f"serving {args.router} at {url}/v1/chat/completions and {url}/v1/completions (models, each expert "
          f"pinnable by name: {url}/v1/models, metrics: {url}/metrics, "
          f"readiness: {url}/ready); Ctrl-C stops it\n"
          f"try: curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' "
          """-d '{"messages": [{"role": "user", "content": "Write a haiku about rain."}], "max_tokens": 32}'""", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        shutdown()


def add_commands(sub) -> None:
    srv = sub.add_parser("serve", help="the router and its experts as an OpenAI-style HTTP service on Ray Serve")
    srv.add_argument("--router", default=str(DEFAULT_ROUTER), help="router folder (default: the shipped one)")
    srv.add_argument("--experts", help="experts to deploy (default: all the router routes to; must include its fallback)")
    srv.add_argument("--host", default="127.0.0.1", help="listen address (default: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS or a new local one)")
    srv.add_argument("--replicas", type=int, default=1, help="replicas per expert and of the router")
    srv.add_argument("--max-batch-size", type=int, default=8, help="requests an expert replica decodes together "
                     "(1: one at a time)")
    srv.add_argument("--batch-wait", type=float, default=0.02, help="seconds an idle replica waits after a first "
                     "request for more to start decoding with (later ones join the running batch)")
    srv.add_argument("--max-ongoing-requests", type=int, default=64, help="requests in flight per router replica")
    srv.add_argument("--max-queued-requests", type=int, default=32, help="waiting requests per deployment before HTTP 503")
    srv.add_argument("--cpus-per-replica", type=float, default=0.5)
    srv.add_argument("--threads-per-replica", type=int, default=None, help="torch threads per replica (default: its "
                     "whole CPUs, at least 1; more than the cores shared out makes it slower)")
    srv.add_argument("--gpus-per-replica", type=float, default=0.0, help="e.g. 0.25: four small experts share a GPU")
    srv.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request gets HTTP 408")
    srv.add_argument("--max-tokens-limit", type=int, default=256, help="the largest max_tokens a request may ask for")
    srv.add_argument("--api-key", default=None, help=f"require this bearer key (default: ${API_KEY_VARIABLE}; without "
                     "one the service binds to loopback only)")
    srv.add_argument("--log", default=None, help="append every served decision to this JSONL audit log")
    srv.set_defaults(func=cmd_serve)

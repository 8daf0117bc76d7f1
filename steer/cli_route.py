"""`steer route ...`: route prompts to experts by named activation features, train and evaluate routers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steer.router.tasks import DEFAULT_ROUTER

DEFAULT_EXPERTS = "smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct,gemma3-270m"


def cmd_route(args: argparse.Namespace) -> None:
    from experts.errors import EmptyPromptsError
    from experts.expert import Expert
    from steer.cli import _read_prompts
    from steer.router.answer import ExpertPool, answer
    from steer.router.decision import append_log
    from steer.router.router import Router

    try:
        prompts = _read_prompts(args)
    except EmptyPromptsError:
        raise EmptyPromptsError("prompt (give a prompt, or --prompts-file)") from None
    router = Router.load(args.router)
    reader = Expert.load(router.features.reader, device=args.device)
    if args.abstain_below is not None:
        router = router.with_settings(threshold=args.abstain_below)
    pool = ExpertPool(router, args.device, {reader.name: reader})
    if args.no_generate:
        decisions = router.decide(reader, prompts)
        answers = [(None, False)] * len(prompts)
    else:  # one prompt at a time, so that the reader's forward pass can be its own answer's prefill
        decisions, answers = [], []
        for prompt in prompts:
            reading = router.read(reader, [prompt], keep_prefill=True)
            decisions += router.decisions([prompt], reading.activations, reading.truncated)
            answers.append(answer(router, pool, prompt, decisions[-1], args.max_new_tokens, prefill=reading.prefill))
    if args.log:
        append_log(args.log, decisions)
    for decision, (text, reused) in zip(decisions, answers):
        if args.json:
            extra = {} if text is None else {"answer": text, "reused_reader_prefill": reused}
            print(json.dumps(decision.to_dict() | extra))
        else:
            print(decision.explain())
            if text is not None:
                print(f"\n{text}\n")


def cmd_train(args: argparse.Namespace) -> None:
    import shutil
    import tomllib

    from experts.expert import Expert
    from steer.router.quality import quality_table
    from steer.router.router import Rule
    from steer.router.tasks import DATA, task_set
    from steer.router.training import train_router

    tasks = task_set(args.tasks or DATA / "tasks.jsonl", seed=args.seed)
    experts = [e.strip() for e in args.experts.split(",") if e.strip()]
    out = Path(args.out)
    quality = quality_table(experts, tasks, args.quality_dir or out / "quality")
    facts = quality.groupby("expert").n_params.first().to_dict()
    fingerprints = quality.groupby("expert").fingerprint.first().to_dict()
    rules, policy_folder = [], None
    if args.policy:
        policy = tomllib.loads(Path(args.policy).read_text(encoding="utf-8"))
        rules, policy_folder = [Rule(**r) for r in policy.get("rule", [])], Path(args.policy).parent
    reader = Expert.load(args.reader)
    router = train_router(reader, tasks, quality, experts, fingerprints=fingerprints, costs=facts, layer=args.layer,
                          seed=args.seed, rules=rules)
    for rule in rules:  # the policy's files travel with the router
        (out / rule.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(policy_folder / rule.file, out / rule.file)
    router.save(out)
    for f in router.features.features:
        print(f"feature {f.name:<32} held-out AUROC {f.heldout_auroc:.3f}" if f.heldout_auroc is not None else f.name)
    print(f"router for {', '.join(experts)} (reader {reader.name}, layer {args.layer}, L1 C = "
          f"{router.notes['c']}) in {out}")


def cmd_eval(args: argparse.Namespace) -> None:
    from analysis.router_eval import evaluate_router

    summary = evaluate_router(Path(args.router), Path(args.out), tasks_path=args.tasks, seed=args.seed)
    print(summary)


def cmd_serve(args: argparse.Namespace) -> None:
    import time

    from steer.ray_serve import ServeSettings, serve_router, shutdown

    settings = ServeSettings(host=args.host, port=args.port, replicas=args.replicas,
                             max_ongoing_requests=args.max_ongoing_requests, max_queued_requests=args.max_queued_requests,
                             cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                             request_timeout_s=args.request_timeout,
                             max_tokens=args.max_tokens_limit)
    experts = [e.strip() for e in args.experts.split(",") if e.strip()] if args.experts else None
    url = serve_router(args.router, experts, settings, address=args.address)
    print(f"serving {args.router} at {url}/v1/chat/completions (models: {url}/v1/models); Ctrl-C stops it\n"
          f"try: curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' "
          """-d '{"messages": [{"role": "user", "content": "Write a haiku about rain."}], "max_tokens": 32}'""", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        shutdown()


def add_route_commands(sub, add_prompt_options) -> None:
    route = sub.add_parser("route", help="route prompts to the right expert; every decision explained")
    add_prompt_options(route)
    route.add_argument("--router", default=str(DEFAULT_ROUTER), help="router folder (default: the shipped one)")
    route.add_argument("--json", action="store_true", help="one decision (and answer) per line")
    route.add_argument("--no-generate", action="store_true", help="decide only")
    route.add_argument("--abstain-below", type=float, default=None, help="fall back below this confidence")
    route.add_argument("--log", help="append decisions to this JSONL audit log")
    route.add_argument("--max-new-tokens", type=int, default=128)
    route.add_argument("--device", default=None)
    route.set_defaults(func=cmd_route)

    train = sub.add_parser("route-train", help="train a router (also: steer route train)")
    train.add_argument("--tasks", default=None, help="task JSONL (default: the shipped task set)")
    train.add_argument("--experts", default=DEFAULT_EXPERTS)
    train.add_argument("--reader", default="smollm2-135m-instruct")
    train.add_argument("--layer", type=int, default=12)
    train.add_argument("--policy", help="TOML with [[rule]] tables (when, kind, file, strength, ...)")
    train.add_argument("--quality-dir", help="where per-expert quality tables are (re)used")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="the router's folder")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("route-eval", help="evaluate a router against baselines (also: steer route eval)")
    ev.add_argument("--router", default=str(DEFAULT_ROUTER))
    ev.add_argument("--tasks", default=None)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", required=True)
    ev.set_defaults(func=cmd_eval)

    srv = sub.add_parser("serve", help="the router and its experts as an OpenAI-style HTTP service on Ray Serve")
    srv.add_argument("--router", default=str(DEFAULT_ROUTER), help="router folder (default: the shipped one)")
    srv.add_argument("--experts", help="experts to deploy (default: all the router routes to; must include its fallback)")
    srv.add_argument("--host", default="127.0.0.1", help="listen address (default: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS or a new local one)")
    srv.add_argument("--replicas", type=int, default=1, help="replicas per expert and of the router")
    srv.add_argument("--max-ongoing-requests", type=int, default=4, help="requests in flight per replica")
    srv.add_argument("--max-queued-requests", type=int, default=32, help="waiting requests per deployment before HTTP 503")
    srv.add_argument("--cpus-per-replica", type=float, default=0.5)
    srv.add_argument("--gpus-per-replica", type=float, default=0.0, help="e.g. 0.25: four small experts share a GPU")
    srv.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request gets HTTP 408")
    srv.add_argument("--max-tokens-limit", type=int, default=256, help="the largest max_tokens a request may ask for")
    srv.set_defaults(func=cmd_serve)

"""`steer route run|train|eval`: route prompts to experts by named activation features, train and evaluate routers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from analysis.cli.common import add_json_option, add_prompt_options, read_prompts, set_command
from steer.router import DEFAULT_ROUTER

DEFAULT_EXPERTS = "smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct,gemma3-270m"


def cmd_run(args: argparse.Namespace) -> None:
    from experts.errors import EmptyPromptsError
    from experts.expert import Expert
    from steer.router.answer import ExpertPool, answer
    from steer.router.decision import append_log
    from steer.router.router import Router

    try:
        prompts = read_prompts(args)
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


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
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
    return {"out": str(out), "experts": experts, "reader": reader.name, "reader_fingerprint": reader.fingerprint,
            "layer": args.layer, "seed": args.seed, "policy": args.policy, "l1_c": router.notes["c"],
            "features": [{"name": f.name, "heldout_auroc": f.heldout_auroc} for f in router.features.features]}


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.router_eval import evaluate_router

    out = Path(args.out)
    print(evaluate_router(Path(args.router), out, tasks_path=args.tasks, seed=args.seed))
    return json.loads((out / "route_eval.json").read_text(encoding="utf-8"))


def add_commands(sub) -> None:
    route = sub.add_parser("route", help="route prompts to the right expert (run), train and evaluate routers")
    rsub = route.add_subparsers(dest="route_command", required=True)
    run = rsub.add_parser("run", help="route prompts; every decision explained, then answered")
    add_prompt_options(run)
    run.add_argument("--router", default=str(DEFAULT_ROUTER), help="router folder (default: the shipped one)")
    add_json_option(run, help="one decision (and answer) per line")
    run.add_argument("--no-generate", action="store_true", help="decide only")
    run.add_argument("--abstain-below", type=float, default=None, help="fall back below this confidence")
    run.add_argument("--log", help="append decisions to this JSONL audit log")
    run.add_argument("--max-new-tokens", type=int, default=128)
    run.add_argument("--device", default=None)
    run.set_defaults(func=cmd_run, json_lines=True)

    train = rsub.add_parser("train", help="train a router: quality tables, named features, decision model")
    train.add_argument("--tasks", default=None, help="task JSONL (default: the shipped task set)")
    train.add_argument("--experts", default=DEFAULT_EXPERTS)
    train.add_argument("--reader", default="smollm2-135m-instruct")
    train.add_argument("--layer", type=int, default=12)
    train.add_argument("--policy", help="TOML with [[rule]] tables (when, kind, file, strength, ...)")
    train.add_argument("--quality-dir", help="where per-expert quality tables are (re)used")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="the router's folder")
    set_command(train, cmd_train)

    ev = rsub.add_parser("eval", help="evaluate a router against baselines on the test split")
    ev.add_argument("--router", default=str(DEFAULT_ROUTER))
    ev.add_argument("--tasks", default=None)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", required=True)
    set_command(ev, cmd_eval)

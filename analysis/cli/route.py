"""`steer route run|train|calibrate|eval|guard|guard-eval|continuation|add-rule`: route prompts to experts by named
activation features; train, calibrate and evaluate routers; add the guard, the continuation route and other rules
without retraining."""

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
    from steer.router.humaneval import humaneval_tasks
    from steer.router.quality import quality_table
    from steer.router.router import Rule
    from steer.router.tasks import DATA, task_set
    from steer.router.training import graded_outside_set, train_router
    from steer.router.validation import MIN_OUTSIDE_AUROC, load_outside_set

    tasks = task_set(args.tasks or DATA / "tasks.jsonl", seed=args.seed)
    experts = [e.strip() for e in args.experts.split(",") if e.strip()]
    out = Path(args.out)
    quality = quality_table(experts, tasks, args.quality_dir or out / "quality", max_new_tokens=args.max_answer_tokens)
    facts = quality.groupby("expert").n_params.first().to_dict()
    fingerprints = quality.groupby("expert").fingerprint.first().to_dict()
    rules, policy_folder = [], None
    if args.policy:
        policy = tomllib.loads(Path(args.policy).read_text(encoding="utf-8"))
        rules, policy_folder = [Rule(**r) for r in policy.get("rule", [])], Path(args.policy).parent
    reader = Expert.load(args.reader)
    outside = load_outside_set(domains=sorted({t.domain for t in tasks}))
    if args.humaneval:  # HumanEval's graded answers: outside code queries and outside passes:<expert> labels
        problems = humaneval_tasks(args.humaneval)
        graded = quality_table(experts, problems, args.quality_dir or out / "quality", max_new_tokens=args.max_answer_tokens)
        outside = outside + graded_outside_set(problems, graded, experts, sorted({t.domain for t in tasks}))
    router = train_router(reader, tasks, quality, experts, fingerprints=fingerprints, costs=facts, layer=args.layer,
                          seed=args.seed, rules=rules, outside=outside,
                          min_outside_auroc=MIN_OUTSIDE_AUROC if args.min_outside_auroc is None else args.min_outside_auroc)
    for rule in rules:  # the policy's files travel with the router
        (out / rule.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(policy_folder / rule.file, out / rule.file)
    for row in router.notes["dropped_rules"]:
        print(f"rule on {row['when']} ({row['file']}): not shipped, {row['why']}")
    if router.rules:  # each rule checked on held-out tasks where it fires, with its own expert
        from dataclasses import replace

        from steer.router.rule_check import validate_rules

        router = replace(router, folder=out)
        pool = {name: reader if name == reader.name else Expert.load(name)
                for name in {r.expert or router.fallback for r in router.rules}}
        held_out = [t for t in tasks if t.split in ("val", "test")]
        router, checks = validate_rules(router, reader, pool, held_out, max_new_tokens=args.max_answer_tokens, seed=args.seed)
        for row in checks:
            print(f"rule on {row['when']} ({row['file']}, fires on {row['n_fired']} held-out tasks): "
                  f"{'ships' if row['ships'] else 'not shipped'}, {row['why']}")
    router.save(out)
    for row in router.notes["feature_validation"]:
        print(f"feature {row['feature']:<32} held-out AUROC {_auroc(row['heldout_auroc'])}, outside AUROC "
              f"{_auroc(row['outside_auroc'])} ({row['n_outside']} outside queries): "
              f"{'ships' if row['ships'] else 'not shipped, ' + row['why']}")
    print(f"router for {', '.join(experts)} (reader {reader.name}, layer {args.layer}, L1 C = "
          f"{router.notes['c']}) in {out}")
    return {"out": str(out), "experts": experts, "reader": reader.name, "reader_fingerprint": reader.fingerprint,
            "layer": args.layer, "seed": args.seed, "policy": args.policy, "l1_c": router.notes["c"],
            "features": [{"name": f.name, "heldout_auroc": f.heldout_auroc, "outside_auroc": f.outside_auroc}
                         for f in router.features.features],
            "feature_validation": router.notes["feature_validation"], "dropped_rules": router.notes["dropped_rules"],
            "rule_validation": router.notes.get("rule_validation", []), "rules": [r.file for r in router.rules]}


def _auroc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def cmd_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from experts.expert import Expert
    from steer.router.calibration import calibrate
    from steer.router.quality import quality_table
    from steer.router.router import Router
    from steer.router.tasks import DATA, task_set
    from steer.router.training import answer_costs, quality_matrix

    router = Router.load(args.router)
    val = [t for t in task_set(args.tasks or DATA / "tasks.jsonl", seed=args.seed) if t.split == "val"]
    quality = quality_table(router.experts, val, Path(args.router) / "quality")
    cost = answer_costs(quality, val, router.experts)
    h = router.read(Expert.load(router.features.reader), [t.query for t in val]).activations
    calibrated, chosen, points = calibrate(router, h, quality_matrix(quality, val, router.experts), cost,
                                           strong_share=args.strong_share, quality_floor=args.quality_floor)
    out = Path(args.out or args.router)
    if out != Path(args.router):
        import shutil

        shutil.copytree(args.router, out, dirs_exist_ok=True)
    calibrated.save(out)
    print(f"cost weight {chosen.cost_weight:g}: on {len(val)} val queries, {chosen.strong_share:.0%} of calls to the "
          f"most expensive expert, quality {chosen.quality:.3f}, cost {chosen.cost:.3g}; saved in {out}")
    return {"router": str(out), "cost_weight": chosen.cost_weight, "val": chosen.__dict__, "n_val": len(val),
            "strong_share_target": args.strong_share, "quality_floor": args.quality_floor,
            "points": [p.__dict__ for p in points], "weights_considered": int(np.size(points))}


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.router_eval import evaluate_router

    out = Path(args.out)
    print(evaluate_router(Path(args.router), out, tasks_path=args.tasks, seed=args.seed, humaneval=args.humaneval))
    return json.loads((out / "route_eval.json").read_text(encoding="utf-8"))


def cmd_guard(args: argparse.Namespace) -> dict[str, Any]:
    from experts.expert import Expert
    from steer.guard.build import build_guard, install_guard, refuse_existing_guard
    from steer.router.router import Router

    router = Router.load(args.router)
    reader = Expert.load(router.features.reader)
    router.check_reader(reader)
    names = [e.strip() for e in args.experts.split(",")] if args.experts else router.experts
    unknown = [e for e in names if e not in router.experts]
    if unknown:
        from experts.errors import SteerlabError

        raise SteerlabError(f"--experts names {', '.join(unknown)}; this router routes to {', '.join(router.experts)}")
    refuse_existing_guard(router, args.replace)  # before the expensive part
    experts = {name: reader if name == reader.name else Expert.load(name) for name in names}
    for expert in experts.values():
        router.check_expert(expert)
    guard = build_guard(router, reader, experts, seed=args.seed)
    for scored in guard.feature.site_scores:
        print(f"  on training (out of fold): {scored.site:<36} AUROC {scored.auroc:.3f}  flags {scored.recall:6.1%} "
              f"of harmful requests")
    print("\n".join(guard.outside.lines(guard.feature.threshold, str(guard.feature.features.sites[0]))))
    for name, chosen in guard.directions.items():
        c = chosen.chosen
        print(f"{name}: refusal direction by {c.method} at layer {c.layer}, strength {c.strength:g} "
              f"({c.fraction:.0%} of the typical residual norm): {c.coherent_refusal:.0%} coherent refusals of "
              f"{c.n} held-apart harmful training requests (unsteered {chosen.baseline_refusal:.0%} refusals)")
    edited = install_guard(router, guard, Path(args.out), request_max=args.request_max, replace_guard=args.replace)
    print(f"guard installed in {args.out}: {len(guard.directions)} rules on feature 'harm' above {guard.feature.threshold:+.2f}")
    return {"out": str(args.out), "router": str(args.router), "seed": args.seed, **edited.notes["guard"],
            "rules": [r.__dict__ for r in edited.rules if r.when == "harm"]}


def cmd_guard_eval(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.guard_eval import evaluate_guard

    out = Path(args.out)
    print(evaluate_guard(Path(args.router), out, n_harmful=args.harmful, n_ordinary=args.ordinary or None,
                         seed=args.seed, forced=args.expert, quality=not args.no_quality))
    return json.loads((out / "guard_eval.json").read_text(encoding="utf-8"))


def cmd_continuation(args: argparse.Namespace) -> dict[str, Any]:
    from steer.router.continuation_route import add_continuation_route
    from steer.router.router import Router

    built = add_continuation_route(Router.load(args.router), Path(args.out), args.expert, replace_route=args.replace,
                                   seed=args.seed)
    on_training = sorted(built.feature.site_aurocs.items(), key=lambda kv: -kv[1])[:3]
    print("continuation feature, out-of-fold AUROC on training by site (best 3): "
          + ", ".join(f"{site} {auroc:.4f}" for site, auroc in on_training))
    print("\n".join(built.outside.lines(built.feature.threshold, str(built.feature.features.sites[0]))))
    print("\n".join(built.check.lines()))
    for request, before, after in built.check.examples[:3]:
        print(f"  {request!r}\n    decision model's expert: {before.strip()[:120]!r}\n    "
              f"{built.check.expert}: {after.strip()[:120]!r}")
    print(f"route written to {args.out}")
    return {"out": str(args.out), "router": str(args.router), "seed": args.seed,
            **built.router.notes["continuation"], "check": built.check.to_dict()}


def cmd_add_rule(args: argparse.Namespace) -> dict[str, Any]:
    import shutil

    from experts.errors import SteerlabError
    from experts.expert import Expert
    from steer.router.editing import add_rule
    from steer.router.router import Router, Rule
    from steer.router.rule_check import check_rule
    from steer.router.tasks import DATA, task_set
    from steer.router.validation import MIN_OUTSIDE_AUROC

    router = Router.load(args.router)
    rule = Rule(when=args.when, kind=args.kind, file=Path(args.file).name, strength=args.strength, above=args.above,
                expert=args.expert or "", operator=args.operator, positions=args.positions, request_max=args.request_max,
                target=args.target, direction=args.direction)
    features = {f.name: f for f in router.features.features}
    if rule.when not in features:
        raise SteerlabError(f"feature {rule.when!r} is not in this router; it has {', '.join(features)}")
    auroc = features[rule.when].outside_auroc
    if auroc is None or auroc < MIN_OUTSIDE_AUROC:
        raise SteerlabError(f"rule refused: feature {rule.when!r} has outside AUROC "
                            f"{'unmeasured' if auroc is None else f'{auroc:.3f}'} (< {MIN_OUTSIDE_AUROC})")
    import tempfile
    from dataclasses import replace

    out = Path(args.out or args.router)
    reader = Expert.load(router.features.reader)
    expert_name = rule.expert or router.fallback
    expert = reader if expert_name == reader.name else Expert.load(expert_name)
    held_out = [t for t in task_set(args.tasks or DATA / "tasks.jsonl", seed=args.seed) if t.split in ("val", "test")]
    with tempfile.TemporaryDirectory() as staging:  # the rule is checked on a copy; the router changes only if it passes
        shutil.copytree(args.router, staging, dirs_exist_ok=True)
        staged = add_rule(replace(router, folder=Path(staging)), rule, Path(args.file))
        acts = staged.features.activations(staged.read(reader, [t.query for t in held_out]).activations).numpy()
        fired = acts[:, staged.features.names.index(rule.when)] > rule.above
        check = check_rule(staged, rule, expert, held_out, fired, max_new_tokens=args.max_answer_tokens, seed=args.seed)
        print(f"rule on {rule.when} ({rule.file}, {expert.name}, fires on {check['n_fired']} held-out tasks): {check['why']}")
        if not check["ships"]:
            raise SteerlabError(f"rule refused: {check['why']}")
        staged = replace(staged, notes={**staged.notes, "rule_validation": [*staged.notes.get("rule_validation", []), check]})
        staged.save(staging)
        shutil.copytree(staging, out, dirs_exist_ok=True)
    print(f"rule written to {out}")
    return {"router": str(out), "rule": rule.__dict__, "check": check}


def add_commands(sub) -> None:
    route = sub.add_parser("route", help="route prompts to the right expert (run), train and evaluate routers")
    rsub = route.add_subparsers(dest="route_command", required=True)
    run = rsub.add_parser("run", help="route prompts; every decision explained, then answered")
    add_prompt_options(run)
    run.add_argument("--router", default=str(DEFAULT_ROUTER), help="router folder (default: the shipped one)")
    add_json_option(run, help="one decision (and answer) per line")
    run.add_argument("--no-generate", action="store_true", help="decide only")
    run.add_argument("--abstain-below", type=float, default=None,
                     help="use the fallback expert where the chosen expert's expected grade (0 to 1) is below this")
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
    train.add_argument("--quality-dir", help="where per-expert answers and quality tables are (re)used")
    train.add_argument("--max-answer-tokens", type=int, default=None,
                       help="cap the experts' answers (default: by domain, up to 256 tokens for code)")
    train.add_argument("--humaneval", type=int, default=0, metavar="N",
                       help="also validate features on the first N HumanEval problems' graded answers")
    train.add_argument("--min-outside-auroc", type=float, default=None,
                       help="a feature ships only with at least this AUROC on the outside set (default 0.9)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="the router's folder")
    set_command(train, cmd_train)

    cal = rsub.add_parser("calibrate", help="choose the router's cost weight on the val split")
    cal.add_argument("--router", default=str(DEFAULT_ROUTER))
    cal.add_argument("--tasks", default=None)
    target = cal.add_mutually_exclusive_group(required=True)
    target.add_argument("--strong-share", type=float, help="at most this share of calls to the most expensive expert")
    target.add_argument("--quality-floor", type=float, help="the cheapest operating point with at least this val quality")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--out", default=None, help="write the calibrated router here (default: in place)")
    set_command(cal, cmd_calibrate)

    ev = rsub.add_parser("eval", help="evaluate a router against baselines on the test split")
    ev.add_argument("--router", default=str(DEFAULT_ROUTER))
    ev.add_argument("--tasks", default=None)
    ev.add_argument("--humaneval", type=int, default=164, metavar="N",
                    help="also test on the first N HumanEval problems (0: none; default all 164)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", required=True)
    set_command(ev, cmd_eval)

    guard = rsub.add_parser("guard", help="add the guard: a harm feature that steers the chosen expert to refuse")
    guard.add_argument("--router", default=str(DEFAULT_ROUTER), help="the router to guard (default: the shipped one)")
    guard.add_argument("--experts", default=None, help="comma-separated experts to guard (default: all the router's)")
    guard.add_argument("--request-max", type=float, default=0.0,
                       help="the largest guard strength a request may ask for (default 0: requests cannot change it)")
    guard.add_argument("--replace", action="store_true", help="a router that has a guard gets a new one in its place")
    guard.add_argument("--seed", type=int, default=0)
    guard.add_argument("--out", required=True, help="the guarded router's folder (may be --router itself)")
    set_command(guard, cmd_guard)

    cont = rsub.add_parser("continuation", help="add the continuation route: text to be continued goes to the base "
                           "expert (feature and route checked before they are written)")
    cont.add_argument("--router", default=str(DEFAULT_ROUTER), help="the router to extend (default: the shipped one)")
    cont.add_argument("--expert", default="gemma3-270m", help="where continuations go (default: the base expert)")
    cont.add_argument("--replace", action="store_true", help="a router that has the route gets a new one in its place")
    cont.add_argument("--seed", type=int, default=0)
    cont.add_argument("--out", required=True, help="the router's folder (may be --router itself)")
    set_command(cont, cmd_continuation)

    geval = rsub.add_parser("guard-eval", help="measure the guard on held-out public harm benchmarks and safe requests")
    geval.add_argument("--router", default=str(DEFAULT_ROUTER))
    geval.add_argument("--harmful", type=int, default=160, help="harmful requests sampled from HarmBench + Do-Not-Answer")
    geval.add_argument("--ordinary", type=int, default=60, help="ordinary requests sampled for the refusal conditions "
                       "(0: all 247)")
    geval.add_argument("--expert", default=None, help="force this expert instead of routing")
    geval.add_argument("--no-quality", action="store_true", help="skip the ordinary-task quality check")
    geval.add_argument("--seed", type=int, default=0)
    geval.add_argument("--out", required=True)
    set_command(geval, cmd_guard_eval)

    rule = rsub.add_parser("add-rule", help="add a policy rule to a router after checking it on held-out tasks")
    rule.add_argument("--router", default=str(DEFAULT_ROUTER))
    rule.add_argument("--when", required=True, help="the feature that triggers the rule")
    rule.add_argument("--above", type=float, default=0.0, help="fires where the feature's logit exceeds this")
    rule.add_argument("--kind", choices=("steer", "reward"), required=True)
    rule.add_argument("--file", required=True, help="the steering vector or reward file (copied into the router)")
    rule.add_argument("--strength", type=float, required=True, help="steering coefficient or reward β")
    rule.add_argument("--expert", default=None, help="only when this expert is chosen (default: any)")
    rule.add_argument("--operator", default="add")
    rule.add_argument("--positions", default="all")
    rule.add_argument("--request-max", type=float, default=0.0, help="the largest strength a request may ask for (0: none)")
    rule.add_argument("--target", required=True, help="the measure the rule must move (a steer.evaluate.scorers name)")
    rule.add_argument("--direction", type=int, choices=(1, -1), default=1, help="1: raise the target, -1: lower it")
    rule.add_argument("--tasks", default=None)
    rule.add_argument("--max-answer-tokens", type=int, default=None)
    rule.add_argument("--seed", type=int, default=0)
    rule.add_argument("--out", default=None, help="write the router here (default: in place)")
    set_command(rule, cmd_add_rule)

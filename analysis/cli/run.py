"""`steer generate`, `steer cache` and `steer demo`: run an expert (optionally steered), capture its
activations, or run the end-to-end demo."""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from analysis.cli.common import (
    OPERATORS,
    add_expert_options,
    add_json_option,
    add_prompt_options,
    load_expert,
    read_prompts,
    run_record,
    set_command,
)
from analysis.letters import SIZES


def _steering(args: argparse.Namespace, expert):
    """The steering asked for (or None) and a record of exactly what is applied."""
    from experts.files import file_sha256
    from steer.vectors.apply import Steering, default_coef
    from steer.vectors.vector import SteeringVector

    if not args.vector:
        return None, None
    vector = SteeringVector.load(args.vector, expert, force=args.force)
    coef = default_coef(args.operator, vector) if args.coef is None else args.coef
    steering = Steering(vector, coef=coef, operator=args.operator, positions=args.positions)
    record = {"vector": str(args.vector), "vector_sha256": file_sha256(Path(args.vector)), "layers": vector.layers,
              "hook": vector.hook, "coef": coef, "coef_default": args.coef is None, "operator": args.operator,
              "positions": args.positions, "made_for": vector.provenance.fingerprint, "forced": args.force}
    return steering, record


def cmd_generate(args: argparse.Namespace) -> None:
    from steer.vectors.apply import apply

    prompts = read_prompts(args)
    expert = load_expert(args)
    steering, steering_record = _steering(args, expert)
    with apply(expert, steering, force=args.force) if steering else nullcontext():
        result = expert.generate(prompts, max_new_tokens=args.max_new_tokens, seed=args.seed, do_sample=args.sample,
                                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                 num_samples=args.num_samples, chat=args.chat, batch_size=args.batch_size,
                                 progress=len(prompts) > args.batch_size)
    if args.json:
        run = run_record(expert, **result.settings(), chat=args.chat, batch_size=args.batch_size, steering=steering_record)
        for record in result.records():
            print(json.dumps({**record, **run}))
        return
    for record in result.records():
        if len(result.prompts) > 1:
            print(f"### {record['prompt']} [sample {record['sample']}, {record['finish_reason']}]")
        print(record["text"])


def cmd_cache(args: argparse.Namespace) -> dict[str, Any]:
    from experts.files import file_sha256, provenance

    prompts = read_prompts(args)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    expert = load_expert(args)
    cache = expert.run_with_cache(prompts, names, chat=args.chat, batch_size=args.batch_size)
    cache.metadata |= provenance(expert=expert.name, names=names, chat=args.chat)
    path = cache.save(args.output)
    shapes = {n: list(t.shape) for n, t in cache.activations.items()}
    print(f"wrote {path}: " + ", ".join(f"{n} {s}" for n, s in shapes.items()))
    return run_record(expert, output=str(path), sha256=file_sha256(path), shapes=shapes, names=names, chat=args.chat,
                      n_prompts=len(prompts), batch_size=args.batch_size)


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.demo import run_demo
    from analysis.report import summary_lines

    summary = run_demo(Path(args.out), args.expert, size=args.size, seed=args.seed, max_new_tokens=args.max_new_tokens)
    print(f"\naudited {summary['manifest']['config']['expert']} in {summary['seconds']} s\n")
    print("\n".join(summary_lines(summary)))
    print(f"\nreport: {summary['report']} (with results.json, letters.csv and the plots)")
    return summary


def add_commands(sub) -> None:
    gen = sub.add_parser("generate", help="generate text (batched, KV-cached)")
    add_expert_options(gen)
    add_prompt_options(gen)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="apply the chat template (default: when the expert has one)")
    add_json_option(gen, help="one JSON record per generated text, with what the run used")
    gen.add_argument("--vector", help="steering vector (.safetensors) to apply")
    gen.add_argument("--coef", type=float, default=None,
                     help="steering coefficient (default: 1 for ablate, i.e. remove the component; else mid calibrated range)")
    gen.add_argument("--positions", default="all", help="all, prompt, generated or from:K")
    gen.add_argument("--operator", default="add", choices=OPERATORS)
    gen.add_argument("--force", action="store_true", help="use a vector made for another expert")
    gen.set_defaults(func=cmd_generate, json_lines=True)

    cache = sub.add_parser("cache", help="capture activations at TL-named hooks to safetensors")
    add_expert_options(cache)
    add_prompt_options(cache)
    cache.add_argument("--names", required=True, help="comma-separated TL hook names")
    cache.add_argument("-o", "--output", required=True, help="output .safetensors")
    cache.add_argument("--chat", action="store_true", help="apply the chat template first")
    set_command(cache, cmd_cache)

    demo = sub.add_parser("demo", help="the end-to-end demo on the default expert")
    add_expert_options(demo)
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--size", default="small", choices=SIZES)
    demo.add_argument("--max-new-tokens", type=int, default=180)
    demo.add_argument("--seed", type=int, default=0)
    set_command(demo, cmd_demo)

"""`steer`: the command line. Bad input exits non-zero with a one-line message, no traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from experts.errors import EmptyPromptsError, SteerlabError

log = logging.getLogger("steer")


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        try:
            text = Path(args.prompts_file).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise SteerlabError(f"{args.prompts_file} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        except OSError as error:
            raise SteerlabError(f"cannot read prompts file {args.prompts_file}: {error.strerror}") from None
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise EmptyPromptsError()
    return prompts


def _load(args: argparse.Namespace):
    from experts.expert import Expert

    return Expert.load(args.expert, device=args.device, dtype=args.dtype)


def cmd_experts_list(args: argparse.Namespace) -> None:
    from experts.loading import cache_folder
    from experts.registry import DEFAULT_EXPERT, REAL_EXPERTS, TINY_EXPERTS

    rows = []
    for spec in [*REAL_EXPERTS.values(), *TINY_EXPERTS.values()]:
        cached = spec.source in ("gguf", "gguf-parts") and cache_folder(spec).is_dir()
        rows.append(
            {
                "name": spec.name,
                "default": spec.name == DEFAULT_EXPERT,
                "architecture": spec.architecture,
                "chat": spec.chat_template,
                "capabilities": list(spec.capabilities),
                "cached": cached,
                "description": spec.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "*" if row["default"] else " "
        print(f"{mark} {row['name']:<30} {row['architecture']:<8} {'chat' if row['chat'] else 'base':<5} "
              f"{'cached' if row['cached'] else '':<7} {', '.join(row['capabilities'])}")
    print("(* default; a local Hugging Face folder path is accepted wherever an expert name is)")


def cmd_experts_info(args: argparse.Namespace) -> None:
    info = _load(args).info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    for key in ("name", "description", "architecture", "n_layers", "d_model", "vocab_size", "n_params",
                "chat_template", "capabilities", "sha256", "packages", "device", "dtype", "folder"):
        print(f"{key:>14}: {info[key]}")


def _steering(args: argparse.Namespace, expert):
    """The steering asked for (or None) and a record of exactly what is applied."""
    from experts.files import file_sha256
    from steer.apply import Steering, default_coef
    from steer.vector import SteeringVector

    if not args.vector:
        return None, None
    vector = SteeringVector.load(args.vector, expert, force=args.force)
    coef = default_coef(args.operator, vector) if args.coef is None else args.coef
    steering = Steering(vector, coef=coef, operator=args.operator, positions=args.positions)
    record = {"vector": str(args.vector), "vector_sha256": file_sha256(Path(args.vector)), "layers": vector.layers,
              "hook": vector.hook, "coef": coef, "coef_default": args.coef is None, "operator": args.operator,
              "positions": args.positions, "made_for": vector.provenance.fingerprint, "forced": args.force}
    return steering, record


def run_record(loaded, **settings) -> dict:
    """What a run used, for every --json record: the expert and its weights, versions, settings."""
    from experts.files import provenance

    return {"expert": loaded.name, "fingerprint": loaded.fingerprint, "device": str(loaded.device),
            "dtype": str(loaded.dtype).removeprefix("torch."), "versions": provenance()["versions"], **settings}


def cmd_generate(args: argparse.Namespace) -> None:
    from contextlib import nullcontext

    from steer.apply import apply

    prompts = _read_prompts(args)
    expert = _load(args)
    steering, steering_record = _steering(args, expert)
    with apply(expert, steering, force=args.force) if steering else nullcontext():
        result = _generate(args, expert, prompts)
    if args.json:
        run = run_record(expert, **result.settings(), chat=args.chat, batch_size=args.batch_size, steering=steering_record)
        for record in result.records():
            print(json.dumps({**record, **run}))
        return
    for record in result.records():
        if len(result.prompts) > 1:
            print(f"### {record['prompt']} [sample {record['sample']}, {record['finish_reason']}]")
        print(record["text"])


def _generate(args: argparse.Namespace, expert, prompts: list[str]):
    return expert.generate(
        prompts,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_samples=args.num_samples,
        chat=None if args.chat is None else args.chat,
        batch_size=args.batch_size,
        progress=len(prompts) > args.batch_size,
    )


def cmd_cache(args: argparse.Namespace) -> None:
    from experts.files import provenance

    prompts = _read_prompts(args)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    expert = _load(args)
    cache = expert.run_with_cache(prompts, names, chat=args.chat, batch_size=args.batch_size)
    cache.metadata |= provenance(expert=expert.name, names=names, chat=args.chat)
    path = cache.save(args.output)
    shapes = {n: list(t.shape) for n, t in cache.activations.items()}
    print(f"wrote {path}: " + ", ".join(f"{n} {s}" for n, s in shapes.items()))


def cmd_demo(args: argparse.Namespace) -> None:
    from analysis.demo import run_demo

    summary = run_demo(Path(args.out), args.expert, size=args.size, seed=args.seed, max_new_tokens=args.max_new_tokens)
    lexicons = {row["lexicon"]: row for row in summary["lexicons"]}
    print(f"\naudited {summary['manifest']['config']['expert']} in {summary['seconds']} s")
    print(f"bias index (mean |log OR| male vs female over lexicons that occur): {summary['bias_index']:.3f}")
    leaning = sorted((r for r in lexicons.values() if r["occurs"]), key=lambda r: -abs(r["log_or_ha"]))[:3]
    for row in leaning:
        side = "male" if row["log_or_ha"] > 0 else "female"
        print(f"  {row['lexicon']:<11} OR {row['odds_ratio']:.2f} (leans {side}; log OR 95% CI "
              f"{row['log_or_ci_low']:+.2f}..{row['log_or_ci_high']:+.2f})")
    for row in summary["steering"]:
        print(f"  {row['condition']:<10} Δ bias {row['delta_bias']:+.3f} [{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}]"
              f"  usable {row['usable_rate']:.0%}  fidelity {row['fidelity_rate']:.0%}  perplexity {row['median_perplexity']:.1f}")
    print(f"\nreport: {summary['report']} (with results.json, letters.csv, forest.png, occupations.png, steering.png)")


def _add_expert_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    from experts.registry import DEFAULT_EXPERT

    parser.add_argument("--expert", default=default or DEFAULT_EXPERT, help="expert name or local HF folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on GPU, float32 on CPU")


def _add_prompt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="*", help="prompt text (several allowed)")
    parser.add_argument("--prompts-file", help="UTF-8 file, one prompt per line")
    parser.add_argument("--batch-size", type=int, default=8)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("steerlab")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from experts import registry

    parser = argparse.ArgumentParser(prog="steer", description="Steer, read and audit small white-box experts.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    experts = sub.add_parser("experts", help="list and inspect experts")
    experts_sub = experts.add_subparsers(dest="experts_command", required=True)
    listing = experts_sub.add_parser("list", help="named experts")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_experts_list)
    info = experts_sub.add_parser("info", help="load an expert and describe it")
    info.add_argument("--expert", default=registry.DEFAULT_EXPERT, help="expert name or local HF folder")
    info.add_argument("--device", default=None)
    info.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_experts_info)

    gen = sub.add_parser("generate", help="generate text (batched, KV-cached)")
    _add_expert_options(gen)
    _add_prompt_options(gen)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="apply the chat template (default: when the expert has one)")
    gen.add_argument("--json", action="store_true", help="one JSON record per line")
    gen.add_argument("--vector", help="steering vector (.safetensors) to apply")
    gen.add_argument("--coef", type=float, default=None,
                     help="steering coefficient (default: 1 for ablate, i.e. remove the component; else mid calibrated range)")
    gen.add_argument("--positions", default="all", help="all, prompt, generated or from:K")
    gen.add_argument("--operator", default="add", choices=["add", "ablate", "norm_preserving"])
    gen.add_argument("--force", action="store_true", help="use a vector made for another expert")
    gen.set_defaults(func=cmd_generate)

    cache = sub.add_parser("cache", help="capture activations at TL-named hooks to safetensors")
    _add_expert_options(cache)
    _add_prompt_options(cache)
    cache.add_argument("--names", required=True, help="comma-separated TL hook names")
    cache.add_argument("-o", "--output", required=True, help="output .safetensors")
    cache.add_argument("--chat", action="store_true", help="apply the chat template first")
    cache.set_defaults(func=cmd_cache)

    from steer.cli_vector import add_vector_commands

    add_vector_commands(sub, _add_expert_options)
    from steer.cli_audit import add_audit_commands

    add_audit_commands(sub, _add_expert_options)
    from steer.cli_rad import add_rad_commands

    add_rad_commands(sub, _add_expert_options, _add_prompt_options)

    from steer.cli_route import add_route_commands

    add_route_commands(sub, _add_prompt_options)

    demo = sub.add_parser("demo", help="the end-to-end demo on the default expert")
    _add_expert_options(demo)
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--size", default="small", choices=["small", "full"])
    demo.add_argument("--max-new-tokens", type=int, default=160)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    _show_defaults(parser)
    return parser


def _nothing_to_show(default: object) -> bool:
    return default is None or default is False or default is argparse.SUPPRESS


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it is None or False (nothing to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _nothing_to_show(action.default) or "%(default)" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every command's --help shows each option's default."""
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
        elif action.help is None and action.option_strings and not _nothing_to_show(action.default):
            action.help = "default: %(default)s"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["route"] and argv[1:2] in (["train"], ["eval"]):  # `steer route train|eval` beside `steer route PROMPT`
        argv = [f"route-{argv[1]}", *argv[2:]]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except SteerlabError as error:
        print(f"steer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

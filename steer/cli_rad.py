"""`steer rad ...`: train an activation reward and decode with it (reward-augmented decoding)."""

from __future__ import annotations

import argparse
import json


def cmd_train(args: argparse.Namespace) -> None:
    from steer.cli import _load
    from steer.rewards import load_labeled, train_activation_reward, train_lookahead_reward

    data, sha = load_labeled(args.data)
    expert = _load(args)
    if args.kind == "lookahead":
        reward = train_lookahead_reward(expert, data, epochs=args.epochs, seed=args.seed, dataset_sha256=sha)
    else:
        reward = train_activation_reward(expert, data, rank=args.rank, epochs=args.epochs, seed=args.seed,
                                         dataset_sha256=sha)
    reward.save(args.output)
    auroc = "n/a" if reward.info.heldout_auroc is None else f"{reward.info.heldout_auroc:.3f}"
    print(f"wrote {args.output}: {args.kind} reward on {len(data)} texts; "
          f"held-out AUROC {auroc}, MSE {reward.info.heldout_mse:.4f}")


def cmd_generate(args: argparse.Namespace) -> None:
    from experts.generate import GenerationConfig
    from steer.cli import _load, _read_prompts
    from steer.rad import rad_generate
    from steer.rewards import load_reward

    prompts = _read_prompts(args)
    expert = _load(args)
    reward = load_reward(args.reward, expert, force=args.force)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, seed=args.seed)
    result = rad_generate(expert, prompts, reward, beta=args.beta, top_k=args.top_k, config=config,
                          batch_size=args.batch_size, force=args.force)
    for record in result.records():
        print(json.dumps({**record, "beta": args.beta, "top_k": args.top_k}) if args.json else record["text"])


def cmd_sweep(args: argparse.Namespace) -> None:
    from pathlib import Path

    from analysis.plots import rad_sweep_plot, save_figure
    from experts.files import atomic_path, provenance, write_json
    from steer.cli import _load
    from steer.cli_vector import _coefs
    from steer.datasets import load_prompts
    from steer.rad_sweep import rad_sweep
    from steer.rewards import load_reward
    from steer.scorers import get_scorer

    expert = _load(args)
    reward = load_reward(args.reward, expert, force=args.force)
    prompts = load_prompts(args.prompts)
    prompts = prompts[: args.max_prompts] if args.max_prompts else prompts
    rows, summary = rad_sweep(expert, reward, prompts, _coefs(args.betas), get_scorer(args.evaluator), top_k=args.top_k,
                              max_new_tokens=args.max_new_tokens, samples=args.samples, seed=args.seed,
                              batch_size=args.batch_size)
    out = Path(args.out)
    for name, frame in (("rad_sweep.csv", rows), ("summary.csv", summary)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    save_figure(rad_sweep_plot(summary, args.evaluator, f"{expert.name}: {Path(args.reward).name}"), out / "rad_sweep.png")
    write_json(out / "rad_sweep.json", {"summary": json.loads(summary.to_json(orient="records")),
                                        **provenance(expert=expert.name, reward=str(args.reward), evaluator=args.evaluator,
                                                     betas=args.betas, top_k=args.top_k, seed=args.seed, prompts=prompts,
                                                     samples=args.samples, max_new_tokens=args.max_new_tokens)})
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"rows, summary and plot in {out}/ (rad_sweep.csv, summary.csv, rad_sweep.png, rad_sweep.json)")


def add_rad_commands(sub, add_expert_options, add_prompt_options) -> None:
    rad = sub.add_parser("rad", help="reward-augmented decoding with rewards read from the expert's activations")
    rsub = rad.add_subparsers(dest="rad_command", required=True)

    train = rsub.add_parser("train", help="train an activation reward from labeled texts")
    add_expert_options(train)
    train.add_argument("--data", required=True, help='JSONL {"text": ..., "label": 0..1}')
    train.add_argument("--kind", default="activation", choices=["activation", "lookahead"],
                       help="activation: no extra pass; lookahead: one batched step over the k candidates")
    train.add_argument("--rank", type=int, default=8)
    train.add_argument("--epochs", type=int, default=300)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("-o", "--output", required=True)
    train.set_defaults(func=cmd_train)

    gen = rsub.add_parser("generate", help="generate with reward-augmented top-k decoding")
    add_expert_options(gen)
    add_prompt_options(gen)
    gen.add_argument("--reward", required=True)
    gen.add_argument("--beta", type=float, required=True)
    gen.add_argument("--top-k", type=int, default=20)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--greedy", action="store_true", help="greedy over the re-weighted logits instead of sampling")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--force", action="store_true")
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(func=cmd_generate)

    sweep = rsub.add_parser("sweep", help="evaluate decoding over a grid of β")
    add_expert_options(sweep)
    sweep.add_argument("--reward", required=True)
    sweep.add_argument("--prompts", help="prompts file (default: shipped neutral prompts)")
    sweep.add_argument("--max-prompts", type=int, default=0)
    sweep.add_argument("--betas", default="0,5,10,20")
    sweep.add_argument("--evaluator", default="sentiment", help="independent scorer: sentiment, formality, pronouns, lexicon:FILE")
    sweep.add_argument("--top-k", type=int, default=20)
    sweep.add_argument("--samples", type=int, default=1)
    sweep.add_argument("--max-new-tokens", type=int, default=48)
    sweep.add_argument("--batch-size", type=int, default=8)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--force", action="store_true")
    sweep.add_argument("--out", required=True)
    sweep.set_defaults(func=cmd_sweep)

"""`steer rad ...`: train an activation reward and decode with it (reward-augmented decoding)."""

from __future__ import annotations

import argparse
import json


def cmd_train(args: argparse.Namespace) -> None:
    from steer.cli import _load
    from steer.rewards import load_labeled, train_activation_reward

    data, sha = load_labeled(args.data)
    expert = _load(args)
    reward = train_activation_reward(expert, data, rank=args.rank, epochs=args.epochs, seed=args.seed, dataset_sha256=sha)
    reward.save(args.output)
    auroc = "n/a" if reward.info.heldout_auroc is None else f"{reward.info.heldout_auroc:.3f}"
    print(f"wrote {args.output}: activation reward (rank {args.rank}) on {len(data)} texts; "
          f"held-out AUROC {auroc}, MSE {reward.info.heldout_mse:.4f}")


def cmd_generate(args: argparse.Namespace) -> None:
    from experts.generate import GenerationConfig
    from steer.cli import _load, _read_prompts
    from steer.rad import rad_generate
    from steer.rewards import ActivationReward

    prompts = _read_prompts(args)
    expert = _load(args)
    reward = ActivationReward.load(args.reward, expert, force=args.force)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, seed=args.seed)
    result = rad_generate(expert, prompts, reward, beta=args.beta, top_k=args.top_k, config=config,
                          batch_size=args.batch_size, force=args.force)
    for record in result.records():
        print(json.dumps({**record, "beta": args.beta, "top_k": args.top_k}) if args.json else record["text"])


def add_rad_commands(sub, add_expert_options, add_prompt_options) -> None:
    rad = sub.add_parser("rad", help="reward-augmented decoding with rewards read from the expert's activations")
    rsub = rad.add_subparsers(dest="rad_command", required=True)

    train = rsub.add_parser("train", help="train an activation reward from labeled texts")
    add_expert_options(train)
    train.add_argument("--data", required=True, help='JSONL {"text": ..., "label": 0..1}')
    train.add_argument("--kind", default="activation", choices=["activation"])
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

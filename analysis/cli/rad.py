"""`steer rad ...`: train rewards, decode with them (reward-augmented decoding), compare with steering."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from analysis.cli.common import (
    add_backend_options,
    add_expert_options,
    add_json_option,
    add_prompt_options,
    executor_from_args,
    load_expert,
    parse_numbers,
    read_prompts,
    run_record,
    set_command,
)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from experts.expert import Expert
    from experts.files import file_sha256
    from steer.rad.training import (
        load_labeled,
        train_activation_reward,
        train_external_reward,
        train_lookahead_reward,
    )

    data, sha = load_labeled(args.data)
    expert = load_expert(args)
    if args.kind == "external":
        reward_expert = Expert.load(args.reward_expert, device=args.device, dtype=args.dtype)
        reward = train_external_reward(reward_expert, data, epochs=args.epochs, seed=args.seed, dataset_sha256=sha)
        reward.check_compatible(expert)  # the reward expert must read the generating expert's token ids
    elif args.kind == "lookahead":
        reward = train_lookahead_reward(expert, data, epochs=args.epochs, seed=args.seed, dataset_sha256=sha)
    else:
        reward = train_activation_reward(expert, data, rank=args.rank, epochs=args.epochs, seed=args.seed,
                                         dataset_sha256=sha)
    reward.save(args.output)
    auroc = "n/a" if reward.info.heldout_auroc is None else f"{reward.info.heldout_auroc:.3f}"
    print(f"wrote {args.output}: {args.kind} reward ({reward.info.expert}) on {len(data)} texts; "
          f"held-out AUROC {auroc}, MSE {reward.info.heldout_mse:.4f}")
    return run_record(expert, output=str(args.output), sha256=file_sha256(Path(args.output)), kind=args.kind,
                      data=args.data, data_sha256=sha, n_texts=len(data), rank=args.rank, epochs=args.epochs,
                      seed=args.seed, reward_expert=args.reward_expert if args.kind == "external" else None,
                      heldout_auroc=reward.info.heldout_auroc, heldout_mse=reward.info.heldout_mse)


def cmd_generate(args: argparse.Namespace) -> None:
    from experts.errors import SteerlabError
    from experts.files import file_sha256
    from experts.generate import GenerationSettings
    from steer.rad.decoding import rad_generate
    from steer.rad.rewards import load_reward

    prompts = read_prompts(args)
    expert = load_expert(args)
    reward = load_reward(args.reward, expert, force=args.force)
    if args.uncached:
        if reward.kind != "external":
            raise SteerlabError(f"--uncached applies to external rewards; {args.reward} is a {reward.kind} reward")
        reward = reward.uncached()
    config = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, seed=args.seed)
    result = rad_generate(expert, prompts, reward, beta=args.beta, top_k=args.top_k, config=config,
                          batch_size=args.batch_size, force=args.force)
    run = run_record(expert, **result.settings(), batch_size=args.batch_size,
                     reward={"file": str(args.reward), "sha256": file_sha256(Path(args.reward)), "kind": reward.kind,
                             "made_for": reward.info.fingerprint, "beta": args.beta, "top_k": args.top_k,
                             "uncached": args.uncached, "forced": args.force})
    for record in result.records():
        print(json.dumps({**record, **run}) if args.json else record["text"])


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.plots import rad_sweep_plot, save_figure
    from experts.files import atomic_path, provenance, write_json
    from steer.evaluate.scorers import get_scorer
    from steer.rad.rewards import load_reward
    from steer.rad.sweep import rad_sweep

    expert = load_expert(args)
    reward = load_reward(args.reward, expert, force=args.force)
    prompts = _evaluation_prompts(args)
    out = Path(args.out)
    rows, summary = rad_sweep(expert, reward, prompts, parse_numbers(args.betas, "--betas"), get_scorer(args.scorer), top_k=args.top_k,
                              max_new_tokens=args.max_new_tokens, samples=args.samples, seed=args.seed,
                              batch_size=args.batch_size, out=out, executor=executor_from_args(args),
                              settings={"scorer": args.scorer, "reward": str(args.reward)})
    for name, frame in (("rad_sweep.csv", rows), ("summary.csv", summary)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    save_figure(rad_sweep_plot(summary, args.scorer, f"{expert.name}: {Path(args.reward).name}"), out / "rad_sweep.png")
    write_json(out / "rad_sweep.json", {"summary": json.loads(summary.to_json(orient="records")),
                                        **provenance(expert=expert.name, reward=str(args.reward), scorer=args.scorer,
                                                     betas=args.betas, top_k=args.top_k, seed=args.seed, prompts=prompts,
                                                     samples=args.samples, max_new_tokens=args.max_new_tokens)})
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"rows, summary and plot in {out}/ (rad_sweep.csv, summary.csv, rad_sweep.png, rad_sweep.json)")
    return json.loads((out / "rad_sweep.json").read_text(encoding="utf-8")) | {"out": str(out)}


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.plots import fluency_frontier_plot, save_figure
    from experts.errors import SteerlabError
    from experts.files import atomic_path, provenance, write_json
    from steer.evaluate.scorers import get_scorer
    from steer.rad.rewards import load_reward
    from steer.rad.sweep import compare, matched_fluency, rad_method, steering_method
    from steer.vectors.vector import SteeringVector

    expert = load_expert(args)
    methods, strengths = [], {}
    for path in args.reward:
        reward = load_reward(path, expert, force=args.force)
        name = reward.kind if reward.kind not in strengths else f"{reward.kind}:{Path(path).stem}"
        methods.append(rad_method(reward, args.top_k, name))
        strengths[name] = parse_numbers(args.betas, "--betas")
    for path in args.vector:
        name = "steering" if "steering" not in strengths else f"steering:{Path(path).stem}"
        methods.append(steering_method(SteeringVector.load(path, expert=expert, force=args.force), name))
        strengths[name] = parse_numbers(args.coefs)
    if not methods:
        raise SteerlabError("nothing to compare: give at least one --reward or --vector")
    prompts = _evaluation_prompts(args)
    out = Path(args.out)
    rows, summary = compare(expert, methods, strengths, prompts, get_scorer(args.scorer), top_k=args.top_k,
                            max_new_tokens=args.max_new_tokens, samples=args.samples, seed=args.seed,
                            batch_size=args.batch_size, out=out, executor=executor_from_args(args),
                            settings={"scorer": args.scorer})
    plain = float(summary[summary.strength == 0].median_perplexity.iloc[0])
    budget = args.max_perplexity or plain * args.perplexity_ratio
    matched = matched_fluency(summary, budget)
    for name, frame in (("rows.csv", rows), ("summary.csv", summary), ("matched_fluency.csv", matched)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    save_figure(fluency_frontier_plot(summary, args.scorer, f"{expert.name}: control at matched fluency", budget),
                out / "frontier.png")
    write_json(out / "compare.json", {
        "summary": json.loads(summary.to_json(orient="records")), "matched": json.loads(matched.to_json(orient="records")),
        "perplexity_budget": budget, "plain_median_perplexity": plain,
        **provenance(expert=expert.name, rewards=args.reward, vectors=args.vector, scorer=args.scorer,
                     betas=args.betas, coefs=args.coefs, top_k=args.top_k, seed=args.seed, prompts=prompts,
                     samples=args.samples, max_new_tokens=args.max_new_tokens)})
    fmt = lambda x: f"{x:.3f}"  # noqa: E731
    print(summary.drop(columns=["d_z"]).to_string(index=False, float_format=fmt))
    print(f"\nat matched fluency (median perplexity <= {budget:.2f}; plain top-k {plain:.2f}):")
    print(matched[["method", "strength", "diff", "ci_low", "ci_high", "median_perplexity", "dist_2"]]
          .to_string(index=False, float_format=fmt))
    print(f"rows, summaries and plot in {out}/ (rows.csv, summary.csv, matched_fluency.csv, frontier.png, compare.json)")
    return json.loads((out / "compare.json").read_text(encoding="utf-8")) | {"out": str(out)}


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `rad sweep` and `rad compare`: prompts, scorer and decoding."""
    parser.add_argument("--prompts-file", help="UTF-8 file, one prompt per line (default: shipped neutral prompts)")
    parser.add_argument("--max-prompts", type=int, default=0)
    parser.add_argument("--scorer", default="sentiment", help="independent scorer: sentiment, formality, pronouns, lexicon:FILE")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--out", required=True, help="folder; a killed run resumes there")
    add_backend_options(parser)


def _evaluation_prompts(args: argparse.Namespace) -> list[str]:
    from steer.datasets import load_prompts

    prompts = load_prompts(args.prompts_file)
    return prompts[: args.max_prompts] if args.max_prompts else prompts


def add_commands(sub) -> None:
    rad = sub.add_parser("rad", help="reward-augmented decoding with rewards read from the expert's activations")
    rsub = rad.add_subparsers(dest="rad_command", required=True)

    train = rsub.add_parser("train", help="train a reward from labeled texts")
    add_expert_options(train)
    train.add_argument("--data", required=True, help='JSONL {"text": ..., "label": 0..1}')
    train.add_argument("--kind", default="activation", choices=["activation", "lookahead", "external"],
                       help="activation: no extra pass; lookahead: one batched step over the k candidates; "
                            "external: a separate reward expert with a scalar head (RAD)")
    train.add_argument("--reward-expert", default="smollm2-135m-instruct",
                       help="the reward expert of --kind external (same tokenizer as --expert)")
    train.add_argument("--rank", type=int, default=8)
    train.add_argument("--epochs", type=int, default=300)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("-o", "--output", required=True)
    set_command(train, cmd_train)

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
    gen.add_argument("--uncached", action="store_true", help="external reward: re-read the text each step (slow)")
    add_json_option(gen, help="one JSON record per generated text, with what the run used")
    gen.set_defaults(func=cmd_generate, json_lines=True)

    sweep = rsub.add_parser("sweep", help="evaluate decoding over a grid of β")
    add_expert_options(sweep)
    sweep.add_argument("--reward", required=True)
    sweep.add_argument("--betas", default="0,5,10,20")
    _add_evaluation_options(sweep)
    set_command(sweep, cmd_sweep)

    cmp = rsub.add_parser("compare", help="RAD reward kinds and steering vectors at matched fluency")
    add_expert_options(cmp)
    cmp.add_argument("--reward", action="append", default=[], help="reward file (repeatable)")
    cmp.add_argument("--vector", action="append", default=[], help="steering vector file (repeatable)")
    cmp.add_argument("--betas", default="5,10,20")
    cmp.add_argument("--coefs", default="1,2,4")
    cmp.add_argument("--max-perplexity", type=float, default=0.0, help="fluency budget (default: ratio x plain)")
    cmp.add_argument("--perplexity-ratio", type=float, default=1.5)
    _add_evaluation_options(cmp)
    set_command(cmp, cmd_compare)

"""`steer audit ...`: the letters bias audit, lexicon scoring of any letters, report rebuilds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from analysis.cli.common import (
    add_backend_options,
    add_expert_options,
    add_json_option,
    executor_from_args,
    parse_layers,
    parse_numbers,
    set_command,
)
from analysis.letters import DEFAULT_OPENING, SIZES
from experts.errors import SteerlabError


def cmd_letters(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.audit import AuditConfig, run_audit

    config = AuditConfig(expert=args.expert, size=args.size, samples=args.samples, greedy=not args.no_greedy,
                         seed=args.seed, max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
                         no_repeat_ngram_size=args.no_repeat_ngram_size,
                         end_at_paragraph_after=args.end_at_paragraph_after, half=args.half,
                         opening=args.opening, template=args.template, names_per_gender=args.names_per_gender,
                         bios=args.bios, vector=args.vector, coefs=parse_numbers(args.coefs), operator=args.operator,
                         female_scale=args.female_scale, state_pronouns=args.state_pronouns, positions=args.positions, reward=args.reward,
                         betas=parse_numbers(args.beta, "--beta") if args.beta else (), top_k=args.top_k,
                         plant_vector=args.plant_vector, plant_coef=args.plant_coef, plant_prompt=args.plant_prompt,
                         side_effects=args.side_effects,
                         random_baseline=args.random_baseline, prompt_baseline=args.prompt_baseline,
                         logit_biases=parse_numbers(args.logit_bias, "--logit-bias") if args.logit_bias else (),
                         eraser=args.eraser, force=args.force, judge=args.judge,
                         judge_threshold=args.judge_threshold)
    report = run_audit(config, Path(args.out), batch_size=args.batch_size, executor=executor_from_args(args))
    return _finish(report)


def _finish(report: Path) -> dict[str, Any]:
    from analysis.report import summary_lines

    results = json.loads((report.parent / "results.json").read_text(encoding="utf-8"))
    print("\n".join(summary_lines(results)) + f"\n\nreport: {report}")
    return results | {"report": str(report)}


def cmd_mitigate(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.mitigation import StudySettings, run_study

    given = {"plant_coef": args.plant_coef, "coefs": parse_numbers(args.coefs) if args.coefs else None,
             "female_scale": args.female_scale, "state_pronouns": args.state_pronouns,
             "logit_biases": _strengths(args.logit_bias, "--logit-bias")}
    settings = StudySettings(expert=args.expert, size=args.size, layers=tuple(parse_layers(args.layers)) if args.layers else None,
                             seed=args.seed, max_new_tokens=args.max_new_tokens, names_per_gender=args.names_per_gender,
                             bios=args.bios, plant=args.plant, erase=args.erase, judge=args.judge,
                             judge_threshold=args.judge_threshold,
                             **{k: v for k, v in given.items() if v is not None})
    return _finish(run_study(settings, Path(args.out), executor=executor_from_args(args)))


def add_judge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", help="the fluency judge, another expert than the writer (default: the first "
                        "calibrated one that did not write the letters)")
    parser.add_argument("--judge-threshold", type=float, help="its limit on mean per-token NLL (default: calibrated)")


def _strengths(text: str | None, option: str) -> tuple[float, ...] | None:
    """None when not given (the study's default); "0" for none; else the listed strengths."""
    if text is None:
        return None
    values = parse_numbers(text, option)
    return () if values == (0.0,) else values


def _read_letters_csv(path: str, text_column: str, group_column: str):
    import pandas as pd

    try:
        frame = pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SteerlabError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise SteerlabError(f"cannot read {path} as CSV: {error}") from None
    for column in (text_column, group_column):
        if column not in frame.columns:
            raise SteerlabError(f"{path} has no column {column!r}; its columns are {', '.join(map(str, frame.columns))}")
    return frame


def cmd_lexicon(args: argparse.Namespace) -> dict[str, float]:
    from analysis.lexicons import check_mode, group_odds_ratios

    check_mode(args.mode)
    frame = _read_letters_csv(args.letters, args.text_column, args.group_column)
    groups = [g.strip() for g in args.groups.split(",")]
    if len(groups) != 2:
        raise SteerlabError(f"--groups needs exactly two names, got {args.groups!r}")
    texts = []
    for group in groups:
        part = frame.loc[frame[args.group_column].astype(str) == group, args.text_column].fillna("").astype(str).tolist()
        if not part:
            present = sorted(map(str, frame[args.group_column].unique()))
            raise SteerlabError(f"group {group!r} has no rows in column {args.group_column!r}; values present: {', '.join(present)}")
        texts.append(part)
    rows = group_odds_ratios(texts[0], texts[1], args.mode)
    print(f"odds ratio > 1: the lexicon leans towards {groups[0]!r} ({args.mode} mode)")
    print(f"{'lexicon':<12} {'hits ' + groups[0]:>14} {'hits ' + groups[1]:>14} {'odds ratio':>11}")
    for r in rows:
        print(f"{r['lexicon']:<12} {r['hits_a']:>14} {r['hits_b']:>14} {r['odds_ratio']:>11.3f}")
    return {r["lexicon"]: r["odds_ratio"] for r in rows}


def cmd_letters_file(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.audit import audit_letters
    from analysis.letters_file import LetterColumns, load_letters

    columns = LetterColumns(text=args.text_column, name=args.name_column, gender=args.gender_column,
                            pair=args.pair_column, cluster=args.cluster_column)
    frame, record = load_letters(args.path, args.format, columns)
    report = audit_letters(frame, record, Path(args.out), judge=args.judge, judge_threshold=args.judge_threshold,
                           max_pairs=args.max_pairs, seed=args.seed)
    return _finish(report)


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.report import rebuild_report

    return _finish(rebuild_report(Path(args.dir)))


def add_commands(sub) -> None:
    audit = sub.add_parser("audit", help="bias audit of generated letters")
    asub = audit.add_subparsers(dest="audit_command", required=True)

    letters = asub.add_parser("letters", help="generate counterfactual letters, score them, write the report")
    add_expert_options(letters)
    letters.add_argument("--out", required=True)
    letters.add_argument("--size", default="small", choices=SIZES)
    letters.add_argument("--names-per-gender", type=int)
    letters.add_argument("--bios", type=int, help="biographies used (default: the size's)")
    letters.add_argument("--samples", type=int, default=1, help="sampled letters per prompt, beside the greedy one")
    letters.add_argument("--no-greedy", action="store_true", help="no greedy letter per prompt")
    letters.add_argument("--template", help="custom template with {name} and {gender} (and {age}, {occupation})")
    letters.add_argument("--vector", help="steering vector for the re-audit")
    letters.add_argument("--coefs", default="0", help="steering coefficients, e.g. 0,0.5,1")
    letters.add_argument("--operator", default="ablate", choices=["ablate", "counter"])
    letters.add_argument("--female-scale", type=float, default=1.0,
                         help="counter operator: women's letters steered at this share of each coefficient (default 1)")
    letters.add_argument("--state-pronouns", action="store_true",
                         help="every mitigation condition states the candidate's pronouns in the prompt")
    letters.add_argument("--reward", help="activation reward for reward-augmented decoding (second mitigation)")
    letters.add_argument("--beta", help="reward strengths, e.g. 5 or 5,10")
    letters.add_argument("--top-k", type=int, default=20, help="candidates re-weighted by the reward")
    letters.add_argument("--positions", default="from:1", help="where to steer (default from:1: not the attention sink)")
    letters.add_argument("--half", choices=["fit", "test"],
                         help="one of the size's two disjoint halves of name pairs and biographies")
    letters.add_argument("--max-new-tokens", type=int, default=180)
    letters.add_argument("--end-at-paragraph-after", type=int, default=100,
                         help="after this many tokens a letter ends at its next paragraph break (0: off)")
    letters.add_argument("--no-repeat-ngram-size", type=int, default=4, help="forbid repeating a token n-gram (0: off)")
    letters.add_argument("--repetition-penalty", type=float, default=1.0, help="1 for none")
    letters.add_argument("--opening", default=DEFAULT_OPENING, help="the letter's first words, may use {name} ('' for none)")
    letters.add_argument("--plant-vector", help="positive control: plant a skew along this vector (+ for men, − for women)")
    letters.add_argument("--plant-coef", type=float, default=0.0)
    letters.add_argument("--plant-prompt", action="store_true",
                         help="positive control: plant a skew by the prompt (men asked for ambition, women for warmth)")
    letters.add_argument("--side-effects", action="store_true",
                         help="with a planted skew: each mitigation also on the unplanted expert")
    letters.add_argument("--random-baseline", action="store_true", help="equal-norm random vector at the largest coefficient")
    letters.add_argument("--prompt-baseline", action="store_true", help="the prompting analogue of the mitigation")
    letters.add_argument("--logit-bias", help="gender-conditional logit bias on the agency lexicons' words, e.g. 3")
    letters.add_argument("--eraser", help="concept-eraser file (LEACE, steer.vectors.erasure): erase, state pronouns")
    letters.add_argument("--force", action="store_true",
                         help="use vectors and erasers made for other weights of the same shape (e.g. a base "
                              "expert's vector on its fine-tune)")
    letters.add_argument("--batch-size", type=int, default=16)
    letters.add_argument("--seed", type=int, default=0)
    add_judge_options(letters)
    add_backend_options(letters)
    set_command(letters, cmd_letters)

    mitigate = asub.add_parser("mitigate", help="planted skew, counter-steering along a content direction and its "
                               "baselines, side by side: the mitigation frontier")
    add_expert_options(mitigate)
    mitigate.add_argument("--out", required=True)
    mitigate.add_argument("--size", default="small", choices=SIZES)
    mitigate.add_argument("--names-per-gender", type=int)
    mitigate.add_argument("--bios", type=int, help="biographies used (default: the size's)")
    mitigate.add_argument("--plant", default="prompt", choices=["prompt", "vector"],
                          help="how the positive control's skew is planted (default: by the prompt)")
    mitigate.add_argument("--plant-coef", type=float, help="with --plant vector: its strength (default: the demo's 2)")
    mitigate.add_argument("--coefs", help="counter-steering strengths tried on the fit half, for men's letters "
                          "(default: the demo's 0.125,0.25)")
    mitigate.add_argument("--female-scale", type=float,
                          help="women's letters counter-steered at this share of each coefficient (default: the demo's)")
    mitigate.add_argument("--state-pronouns", action=argparse.BooleanOptionalAction, default=None,
                          help="mitigations state the candidate's pronouns in the prompt (default: the demo's, no)")
    mitigate.add_argument("--layers", help="layers to steer, e.g. 12 or 10-14 (default: about 40%% of the depth)")
    mitigate.add_argument("--logit-bias", help="gender-conditional logit-bias strengths (default: none)")
    mitigate.add_argument("--erase", action="store_true", help="add the gender eraser (LEACE)")
    mitigate.add_argument("--max-new-tokens", type=int, default=180)
    mitigate.add_argument("--seed", type=int, default=0)
    add_judge_options(mitigate)
    add_backend_options(mitigate)
    set_command(mitigate, cmd_mitigate)

    from_file = asub.add_parser("letters-file", help="the full audit of letters you already have (gate, signed "
                                "gaps, swap test, lexicon tables, controls, report)")
    from_file.add_argument("path", help="a CSV or JSONL file, or a checkout of Wan et al.'s repository (--format wan2023-*)")
    from_file.add_argument("--format", choices=["csv", "jsonl", "wan2023-cbg", "wan2023-clg"],
                           help="default: by the file's extension")
    from_file.add_argument("--text-column", default="letter")
    from_file.add_argument("--name-column", default="name", help="the candidate's name (all of it, e.g. first and last)")
    from_file.add_argument("--gender-column", default="gender", help="female/male (also f/m, woman/man)")
    from_file.add_argument("--pair-column", default="pair_id", help="the twin pair: one female and one male letter")
    from_file.add_argument("--cluster-column", help="what several twin pairs share (a name pair, an occupation)")
    from_file.add_argument("--max-pairs", type=int, help="audit a seeded sample of this many twin pairs")
    from_file.add_argument("--out", required=True)
    from_file.add_argument("--seed", type=int, default=0)
    add_judge_options(from_file)
    set_command(from_file, cmd_letters_file)

    lexicon = asub.add_parser("lexicon", help="Wan et al. lexicon odds ratios of any letters in a CSV")
    lexicon.add_argument("--letters", required=True)
    lexicon.add_argument("--text-column", required=True)
    lexicon.add_argument("--group-column", required=True)
    lexicon.add_argument("--groups", default="male,female", help="two group values; OR > 1 leans towards the first")
    lexicon.add_argument("--mode", default="words", choices=["legacy", "words"])
    add_json_option(lexicon, help="print {lexicon: odds ratio} as JSON")
    lexicon.set_defaults(func=cmd_lexicon)

    report = asub.add_parser("report", help="rebuild report.md and plots from a finished audit folder")
    report.add_argument("dir")
    set_command(report, cmd_report)

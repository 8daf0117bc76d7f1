"""`steer vector ...`: compute, search layers, sweep, export and import steering vectors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from analysis.cli.common import (
    OPERATORS,
    add_backend_options,
    add_expert_options,
    executor_from_args,
    frame_records,
    load_expert,
    parse_layers,
    parse_numbers,
    run_record,
    save_frame,
    set_command,
)
from experts.files import file_sha256, provenance, write_json


def cmd_compute(args: argparse.Namespace) -> dict[str, Any]:
    from steer.datasets import load_pairs
    from steer.vectors.extract import compute_vector

    pairs, sha = load_pairs(args.pairs)
    expert = load_expert(args)
    vector = compute_vector(expert, pairs, parse_layers(args.layers), method=args.method, hook=args.hook,
                            token_rule=args.token_rule, seed=args.seed, dataset=args.pairs, dataset_sha256=sha,
                            progress=True)
    vector.save(args.output)
    lo, hi = vector.provenance.coef_range
    print(f"wrote {args.output}: {vector.provenance.method} over {len(pairs)} pairs at layers {vector.layers} "
          f"(norms {', '.join(f'{n:.2f}' for n in vector.norms.values())}); calibrated coefficients {lo}..{hi}")
    return run_record(expert, output=str(args.output), sha256=file_sha256(Path(args.output)), pairs=args.pairs,
                      pairs_sha256=sha, n_pairs=len(pairs), layers=vector.layers, hook=args.hook, method=args.method,
                      token_rule=args.token_rule, seed=args.seed, norms=vector.norms, coef_range=[lo, hi])


def cmd_layers(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.plots import layer_search_plot, save_figure
    from steer.datasets import builtin_datasets, load_pairs, load_prompts
    from steer.evaluate.layers import search_layers
    from steer.evaluate.scorers import get_scorer

    pairs, _ = load_pairs(args.pairs)
    expert = load_expert(args)
    scorer_name = args.scorer or builtin_datasets().get(args.pairs, {}).get("scorer")
    scorer = get_scorer(scorer_name) if scorer_name and scorer_name != "projection" else None
    prompts = load_prompts(args.prompts_file)[: args.effect_prompts] if scorer else []
    result = search_layers(expert, pairs, layers=parse_layers(args.layers), method=args.method, seed=args.seed,
                           scorer=scorer, effect_prompts=prompts, progress=True)
    out = Path(args.out)
    save_frame(result.table, out / "layers.csv")
    save_figure(layer_search_plot(result.table, f"{expert.name}: layer search on {args.pairs}"), out / "layers.png")
    print(result.table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"chosen layer: {result.best_layer}; table and plot in {out}/")
    return run_record(expert, out=str(out), pairs=args.pairs, method=args.method, scorer=scorer_name, seed=args.seed,
                      best_layer=result.best_layer, layers=frame_records(result.table))


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.plots import save_figure, sweep_plot
    from steer.datasets import builtin_datasets, load_prompts
    from steer.evaluate.scorers import get_scorer
    from steer.evaluate.sweep import SweepConfig, config_dict, sweep
    from steer.vectors.vector import SteeringVector

    expert = load_expert(args)
    vector = SteeringVector.load(args.vector, expert, force=args.force)
    prompts = load_prompts(args.prompts_file)[: args.max_prompts] if args.max_prompts else load_prompts(args.prompts_file)
    dataset = builtin_datasets().get(Path(vector.provenance.dataset).name or "", {})
    instructions = (args.instruction_positive or dataset.get("instruction_positive"),
                    args.instruction_negative or dataset.get("instruction_negative"))
    config = SweepConfig(coefs=None if args.coefs is None else parse_numbers(args.coefs), max_new_tokens=args.max_new_tokens, samples=args.samples,
                         seed=args.seed, positions=args.positions, operator=args.operator,
                         batch_size=args.batch_size, instructions=instructions if all(instructions) else None)
    out = Path(args.out)
    rows, summary = sweep(expert, vector, prompts, get_scorer(args.scorer, expert, vector), config, out=out,
                          executor=executor_from_args(args), settings={"scorer": args.scorer, "vector": str(args.vector)})
    save_frame(rows, out / "sweep.csv")
    save_frame(summary, out / "summary.csv")
    save_figure(sweep_plot(summary, args.scorer, f"{expert.name}: {Path(args.vector).name}"), out / "sweep.png")
    write_json(out / "sweep.json", {"summary": json.loads(summary.to_json(orient="records")),
                                    **provenance(expert=expert.name, vector=str(args.vector), scorer=args.scorer,
                                                 prompts=prompts, vector_provenance=vector.provenance.__dict__,
                                                 **config_dict(config))})
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"rows, summary and plot in {out}/ (sweep.csv, summary.csv, sweep.png, sweep.json)")
    return json.loads((out / "sweep.json").read_text(encoding="utf-8")) | {"out": str(out)}


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from steer.vectors.io import export_gguf
    from steer.vectors.vector import SteeringVector

    vector = SteeringVector.load(args.vector)
    export_gguf(vector, args.output, model_hint=args.model_hint)
    print(f"wrote {args.output}: llama.cpp control vector, direction.{{{','.join(map(str, vector.layers))}}}")
    return {"vector": str(args.vector), "output": str(args.output), "sha256": file_sha256(Path(args.output)),
            "layers": vector.layers, "model_hint": args.model_hint}


def cmd_import(args: argparse.Namespace) -> dict[str, Any]:
    from steer.vectors.io import import_gguf

    expert = load_expert(args)
    vector = import_gguf(args.gguf, expert, force=args.force)
    vector.save(args.output)
    print(f"wrote {args.output}: layers {vector.layers}")
    return run_record(expert, gguf=str(args.gguf), gguf_sha256=file_sha256(Path(args.gguf)), output=str(args.output),
                      sha256=file_sha256(Path(args.output)), layers=vector.layers, forced=args.force)


def add_commands(sub) -> None:
    vector = sub.add_parser("vector", help="steering vectors: compute, layers, sweep, export-gguf, import-gguf")
    vsub = vector.add_subparsers(dest="vector_command", required=True)

    compute = vsub.add_parser("compute", help="extract a vector from contrastive pairs")
    add_expert_options(compute)
    compute.add_argument("--pairs", required=True, help="JSONL file or a shipped set: sentiment, formality, gender")
    compute.add_argument("--layers", help="e.g. 12, 10,12 or 8-14 (default: 40%% of depth)")
    compute.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca", "probe"])
    compute.add_argument("--hook", default="hook_resid_post")
    compute.add_argument("--token-rule", default="last", choices=["last", "mean"])
    compute.add_argument("--seed", type=int, default=0)
    compute.add_argument("-o", "--output", required=True)
    set_command(compute, cmd_compute)

    layers = vsub.add_parser("layers", help="layer search: held-out AUROC and steering effect per layer")
    add_expert_options(layers)
    layers.add_argument("--pairs", required=True)
    layers.add_argument("--layers", help="layers to try (default: all)")
    layers.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca", "probe"])
    layers.add_argument("--scorer", help="behaviour scorer for the effect (default: the dataset's)")
    layers.add_argument("--prompts-file", help="prompts for the effect, one per line (default: shipped neutral prompts)")
    layers.add_argument("--effect-prompts", type=int, default=4)
    layers.add_argument("--seed", type=int, default=0)
    layers.add_argument("--out", default="runs/layers")
    set_command(layers, cmd_layers)

    sw = vsub.add_parser("sweep", help="score, fluency and KL against the coefficient, with baselines")
    add_expert_options(sw)
    sw.add_argument("--vector", required=True)
    sw.add_argument("--prompts-file", help="UTF-8 file, one prompt per line (default: shipped neutral prompts)")
    sw.add_argument("--max-prompts", type=int, default=0)
    sw.add_argument("--coefs", default=None,
                    help="comma-separated coefficients (default: -8,-4,0,4,8; for ablate 0,0.25,0.5,0.75,1)")
    sw.add_argument("--scorer", default="sentiment", help="sentiment, formality, pronouns, projection or lexicon:FILE.json")
    sw.add_argument("--samples", type=int, default=1, help="samples per prompt")
    sw.add_argument("--max-new-tokens", type=int, default=48)
    sw.add_argument("--positions", default="all")
    sw.add_argument("--operator", default="add", choices=OPERATORS)
    sw.add_argument("--batch-size", type=int, default=8)
    sw.add_argument("--instruction-positive")
    sw.add_argument("--instruction-negative")
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--force", action="store_true", help="use a vector made for another expert")
    sw.add_argument("--out", required=True, help="folder; a killed sweep resumes there (sweep_rows.jsonl)")
    add_backend_options(sw)
    set_command(sw, cmd_sweep)

    export = vsub.add_parser("export-gguf", help="write a llama.cpp control vector")
    export.add_argument("vector")
    export.add_argument("output")
    export.add_argument("--model-hint")
    set_command(export, cmd_export)

    imp = vsub.add_parser("import-gguf", help="read a llama.cpp control vector")
    add_expert_options(imp)
    imp.add_argument("gguf")
    imp.add_argument("-o", "--output", required=True)
    imp.add_argument("--force", action="store_true")
    set_command(imp, cmd_import)

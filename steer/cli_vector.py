"""`steer vector ...`: compute, search layers, sweep, export and import steering vectors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experts.errors import SteerlabError
from experts.files import atomic_path, provenance, write_json
from steer.executor import add_backend_arguments


def _layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        layers = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            layers += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        return layers
    except ValueError:
        raise SteerlabError(f"bad --layers {text!r}; use e.g. 12 or 10,12 or 8-14") from None


def _coefs(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(c) for c in text.split(","))
    except ValueError:
        raise SteerlabError(f"bad --coefs {text!r}; use comma-separated numbers, e.g. -8,-4,0,4,8") from None


def _save_frame(frame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def cmd_compute(args: argparse.Namespace) -> None:
    from steer.cli import _load
    from steer.datasets import load_pairs
    from steer.extract import compute_vector

    pairs, sha = load_pairs(args.pairs)
    expert = _load(args)
    vector = compute_vector(expert, pairs, _layers(args.layers), method=args.method, hook=args.hook,
                            token_rule=args.token_rule, seed=args.seed, dataset=args.pairs, dataset_sha256=sha,
                            progress=True)
    vector.save(args.output)
    lo, hi = vector.provenance.coef_range
    print(f"wrote {args.output}: {vector.provenance.method} over {len(pairs)} pairs at layers {vector.layers} "
          f"(norms {', '.join(f'{n:.2f}' for n in vector.norms.values())}); calibrated coefficients {lo}..{hi}")


def cmd_layers(args: argparse.Namespace) -> None:
    from analysis.plots import layer_search_plot, save_figure
    from steer.cli import _load
    from steer.datasets import builtin_datasets, load_pairs, load_prompts
    from steer.layers import search_layers
    from steer.scorers import get_scorer

    pairs, _ = load_pairs(args.pairs)
    expert = _load(args)
    scorer_name = args.scorer or builtin_datasets().get(args.pairs, {}).get("scorer")
    scorer = get_scorer(scorer_name) if scorer_name and scorer_name != "projection" else None
    prompts = load_prompts(args.prompts_file)[: args.effect_prompts] if scorer else []
    result = search_layers(expert, pairs, layers=_layers(args.layers), method=args.method, seed=args.seed,
                           scorer=scorer, effect_prompts=prompts, progress=True)
    out = Path(args.out)
    _save_frame(result.table, out / "layers.csv")
    save_figure(layer_search_plot(result.table, f"{expert.name}: layer search on {args.pairs}"), out / "layers.png")
    print(result.table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"chosen layer: {result.best_layer}; table and plot in {out}/")


def cmd_sweep(args: argparse.Namespace) -> None:
    from analysis.plots import save_figure, sweep_plot
    from steer.cli import _load
    from steer.datasets import builtin_datasets, load_prompts
    from steer.executor import executor_from_args
    from steer.scorers import get_scorer
    from steer.sweep import SweepConfig, config_dict, sweep
    from steer.vector import SteeringVector

    expert = _load(args)
    vector = SteeringVector.load(args.vector, expert, force=args.force)
    prompts = load_prompts(args.prompts_file)[: args.max_prompts] if args.max_prompts else load_prompts(args.prompts_file)
    dataset = builtin_datasets().get(Path(vector.provenance.dataset).name or "", {})
    instructions = (args.instruction_positive or dataset.get("instruction_positive"),
                    args.instruction_negative or dataset.get("instruction_negative"))
    config = SweepConfig(coefs=None if args.coefs is None else _coefs(args.coefs), max_new_tokens=args.max_new_tokens, samples=args.samples,
                         seed=args.seed, positions=args.positions, operator=args.operator,
                         batch_size=args.batch_size, instructions=instructions if all(instructions) else None)
    out = Path(args.out)
    rows, summary = sweep(expert, vector, prompts, get_scorer(args.scorer, expert, vector), config, out=out,
                          executor=executor_from_args(args), settings={"scorer": args.scorer, "vector": str(args.vector)})
    _save_frame(rows, out / "sweep.csv")
    _save_frame(summary, out / "summary.csv")
    save_figure(sweep_plot(summary, args.scorer, f"{expert.name}: {Path(args.vector).name}"), out / "sweep.png")
    write_json(out / "sweep.json", {"summary": json.loads(summary.to_json(orient="records")),
                                    **provenance(expert=expert.name, vector=str(args.vector), scorer=args.scorer,
                                                 prompts=prompts, vector_provenance=vector.provenance.__dict__,
                                                 **config_dict(config))})
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"rows, summary and plot in {out}/ (sweep.csv, summary.csv, sweep.png, sweep.json)")


def cmd_export(args: argparse.Namespace) -> None:
    from steer.io import export_gguf
    from steer.vector import SteeringVector

    vector = SteeringVector.load(args.vector)
    export_gguf(vector, args.output, model_hint=args.model_hint)
    print(f"wrote {args.output}: llama.cpp control vector, direction.{{{','.join(map(str, vector.layers))}}}")


def cmd_import(args: argparse.Namespace) -> None:
    from steer.cli import _load
    from steer.io import import_gguf

    vector = import_gguf(args.gguf, _load(args), force=args.force)
    vector.save(args.output)
    print(f"wrote {args.output}: layers {vector.layers}")


def add_vector_commands(sub, add_expert_options) -> None:
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
    compute.set_defaults(func=cmd_compute)

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
    layers.set_defaults(func=cmd_layers)

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
    sw.add_argument("--operator", default="add", choices=["add", "ablate", "norm_preserving"])
    sw.add_argument("--batch-size", type=int, default=8)
    sw.add_argument("--instruction-positive")
    sw.add_argument("--instruction-negative")
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--force", action="store_true", help="use a vector made for another expert")
    sw.add_argument("--out", required=True, help="folder; a killed sweep resumes there (sweep_rows.jsonl)")
    add_backend_arguments(sw)
    sw.set_defaults(func=cmd_sweep)

    export = vsub.add_parser("export-gguf", help="write a llama.cpp control vector")
    export.add_argument("vector")
    export.add_argument("output")
    export.add_argument("--model-hint")
    export.set_defaults(func=cmd_export)

    imp = vsub.add_parser("import-gguf", help="read a llama.cpp control vector")
    add_expert_options(imp)
    imp.add_argument("gguf")
    imp.add_argument("-o", "--output", required=True)
    imp.add_argument("--force", action="store_true")
    imp.set_defaults(func=cmd_import)

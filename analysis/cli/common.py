"""What every command family shares: reading prompts, loading the expert, the options they have in
common, parsing lists, choosing the backend, and the record a `--json` run prints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experts.errors import EmptyPromptsError, SteerlabError

DTYPES = ("float32", "bfloat16", "float16")
OPERATORS = ("add", "ablate", "norm_preserving")
DECODINGS = ("auto", "packed", "compiled", "exact")  # experts.packed.DECODINGS (here: the CLI's help loads no torch)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts given on the command line, then those of `--prompts-file` (one per non-blank line)."""
    prompts = list(args.prompt or [])
    if args.prompts_file:
        from steer.datasets import read_text

        prompts += [line for line in read_text(args.prompts_file).splitlines() if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise EmptyPromptsError()
    return prompts


def load_expert(args: argparse.Namespace):
    from experts.expert import Expert

    return Expert.load(args.expert, device=args.device, dtype=args.dtype, decoding=args.decoding)


def run_record(loaded, **settings: Any) -> dict[str, Any]:
    """What a run used, for every --json record: the expert and its weights, versions, settings."""
    from experts.files import provenance

    return {"expert": loaded.name, "fingerprint": loaded.fingerprint, "device": str(loaded.device),
            "dtype": str(loaded.dtype).removeprefix("torch."), "decoding": loaded.packing.to_dict(),
            "versions": provenance()["versions"], **settings}


def frame_records(frame) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records (NaN as null)."""
    import json

    return json.loads(frame.to_json(orient="records"))


def parse_numbers(text: str, flag: str = "--coefs") -> tuple[float, ...]:
    try:
        return tuple(float(c) for c in text.split(","))
    except ValueError:
        raise SteerlabError(f"bad {flag} {text!r}; use comma-separated numbers, e.g. -8,-4,0,4,8") from None


def parse_layers(text: str | None) -> list[int] | None:
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


def save_frame(frame, path: Path) -> None:
    from experts.files import atomic_path

    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def add_expert_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    from experts.registry import DEFAULT_EXPERT

    parser.add_argument("--expert", default=default or DEFAULT_EXPERT, help="expert name or local HF folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--decoding", default=None, choices=DECODINGS,
                        help="packed: the 4-bit linears decode in the int4 CPU kernel; compiled: packed, its steps "
                             "compiled (tens of seconds per batch shape first); exact: in --dtype; auto "
                             "(default, or $STEERLAB_DECODING): packed for a packaged expert in float32 on the CPU")


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="*", help="prompt text (several allowed)")
    parser.add_argument("--prompts-file", help="UTF-8 file, one prompt per line")
    parser.add_argument("--batch-size", type=int, default=8)


def add_json_option(parser: argparse.ArgumentParser, help: str = "print the result as one JSON record (the human "
                    "summary goes to stderr)") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def set_command(parser: argparse.ArgumentParser, func, **defaults: Any) -> None:
    """The command `parser` runs, with `--json` (its result as one JSON record)."""
    add_json_option(parser)
    parser.set_defaults(func=func, **defaults)


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """`--backend local|ray`, `--address`, `--workers` and `--cpus/gpus/threads-per-worker` on a command."""
    from steer.scale.backends import BACKENDS

    group = parser.add_argument_group("where the work runs")
    group.add_argument("--backend", default="local", choices=BACKENDS, help="local (this process) or ray (an actor pool)")
    group.add_argument("--address", help="Ray cluster to join (auto, ray://host:10001); default: RAY_ADDRESS or a new local one")
    group.add_argument("--workers", type=int, default=2, help="Ray actors, each loading the expert once")
    group.add_argument("--cpus-per-worker", type=float, default=0.5, help="fractional CPUs per actor")
    group.add_argument("--gpus-per-worker", type=float, help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    group.add_argument("--threads-per-worker", type=int,
                       help="torch threads per actor (default: this process's, for rows bit-identical to --backend local)")


def executor_from_args(args: argparse.Namespace):
    from steer.scale.backends import executor_for

    return executor_for(args.backend, address=args.address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                        gpus_per_worker=args.gpus_per_worker, threads_per_worker=args.threads_per_worker)

"""The Ray backend's overhead against the local backend on one machine: the same letters audit generation
and the same steering sweep (same prompts, seeds and batches), local in this process vs a local Ray
cluster's actor pool. Ray's cost is cluster start-up, actor start-up (each re-imports torch and loads the
expert) and moving rows back; the rows themselves must be identical, byte for byte.

Run: python benchmarks/ray_overhead.py [--expert NAME] [--names-per-gender N] [--new-tokens N] [--workers W]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import machine, quiet, start_ray

from analysis.audit import LETTERS, AuditConfig, generate_letters, open_run
from experts import registry
from experts.expert import Expert
from steer.scale.ray_backend import RayExecutor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--names-per-gender", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    quiet()
    import ray

    print(f"machine: {machine()}")
    config = AuditConfig(expert=args.expert, names_per_gender=args.names_per_gender, samples=1,
                         max_new_tokens=args.new_tokens)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        expert = Expert.load(args.expert)
        local = open_run(config, Path(folder) / "local", expert)
        generate_letters(expert, local, batch_size=args.batch_size, progress=False)
        local_s = time.perf_counter() - start

        start = time.perf_counter()
        start_ray()
        started_s = time.perf_counter() - start
        remote = open_run(config, Path(folder) / "ray", expert)
        cpus = 2 / args.workers
        generate_letters(None, remote, batch_size=args.batch_size, progress=False,
                         executor=RayExecutor(workers=args.workers, cpus_per_worker=cpus))
        ray_s = time.perf_counter() - start
        ray.shutdown()
        same = (Path(folder) / "local" / LETTERS).read_bytes() == (Path(folder) / "ray" / LETTERS).read_bytes()
        letters = len((Path(folder) / "local" / LETTERS).read_text().splitlines())
    print(f"{args.expert}: {letters} letters of {args.new_tokens} tokens, batch {args.batch_size}; "
          f"{args.workers} Ray worker(s) with {cpus:g} CPUs each")
    print(f"local backend (expert load included)         {local_s:7.1f} s")
    print(f"ray backend (cluster and actor start included) {ray_s:7.1f} s  (cluster start {started_s:.1f} s)")
    print(f"ratio ray / local {ray_s / local_s:.2f}x; rows identical: {same}")
    sweep_overhead(expert, args, cpus)


def sweep_overhead(expert: Expert, args: argparse.Namespace, cpus: float) -> None:
    """A sentiment steering sweep (vector, random vector and prompting at ±4 over 8 prompts), local vs Ray."""
    import ray

    from steer.datasets import load_pairs, load_prompts
    from steer.evaluate.scorers import sentiment
    from steer.evaluate.sweep import ROWS, SweepConfig, sweep
    from steer.vectors.extract import compute_vector

    pairs, sha = load_pairs("sentiment")
    vector = compute_vector(expert, pairs, [expert.n_layers // 2], dataset="sentiment", dataset_sha256=sha)
    config = SweepConfig(coefs=(-4.0, 0.0, 4.0), max_new_tokens=args.new_tokens, batch_size=args.batch_size,
                         instructions=("Write something cheerful.", "Write something gloomy."))
    prompts = load_prompts()[:8]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        rows, _ = sweep(expert, vector, prompts, sentiment, config, progress=False, out=Path(folder) / "local")
        local_s = time.perf_counter() - start
        start = time.perf_counter()
        start_ray()
        sweep(expert, vector, prompts, sentiment, config, progress=False, out=Path(folder) / "ray",
              executor=RayExecutor(workers=args.workers, cpus_per_worker=cpus))
        ray_s = time.perf_counter() - start
        ray.shutdown()
        same = (Path(folder) / "local" / ROWS).read_bytes() == (Path(folder) / "ray" / ROWS).read_bytes()
    print(f"\nsteering sweep: {len(rows)} rows of {args.new_tokens} tokens (7 conditions x 8 prompts), batch "
          f"{args.batch_size}")
    print(f"local backend (expert already loaded)           {local_s:7.1f} s")
    print(f"ray backend (cluster and actor start included)  {ray_s:7.1f} s")
    print(f"ratio ray / local {ray_s / local_s:.2f}x; rows identical: {same}")


if __name__ == "__main__":
    main()

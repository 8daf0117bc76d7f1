"""Steering overhead: unsteered vs steered generation on one layer and on all layers (target
ratio >= 0.97 on CPU), with the steering-vectors library applying the same vector in the same
loop when it is installed; and extraction throughput (pairs/s).

Run: python benchmarks/steering_overhead.py [--expert NAME] [--repeats N]
Peers: `make bench` installs steering-vectors with --no-deps (its pins would downgrade
transformers). repeng 0.4.0 needs NumPy < 2 and is reported as unavailable when it cannot import.
"""

from __future__ import annotations

import argparse
import importlib
import time
from contextlib import nullcontext

import torch
from _common import interleaved, machine, quiet

from experts import registry
from experts.expert import Expert
from steer.datasets import load_pairs
from steer.vectors.apply import Steering, apply
from steer.vectors.extract import compute_vector

PROMPT = "Write a recommendation letter for {name}, a 22 year old student."
NAMES = ["Kelly", "Joseph", "Emily", "James", "Sarah", "Michael", "Anna", "David"]


def _peer(name: str):
    try:
        return importlib.import_module(name), "ok"
    except Exception as error:  # a broken peer install is a result to report, not a crash
        return None, f"{type(error).__name__}: {error}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--coef", type=float, default=4.0)
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    expert = Expert.load(args.expert)
    pairs, _ = load_pairs("sentiment")

    start = time.perf_counter()
    one = compute_vector(expert, pairs, [round(0.4 * (expert.n_layers - 1))])
    one_s = time.perf_counter() - start
    start = time.perf_counter()
    every = compute_vector(expert, pairs, list(range(expert.n_layers)))
    all_s = time.perf_counter() - start
    print(f"extraction ({len(pairs)} pairs): one layer {len(pairs) / one_s:.1f} pairs/s, "
          f"all {expert.n_layers} layers {len(pairs) / all_s:.1f} pairs/s")

    sv, sv_status = _peer("steering_vectors")
    _, repeng_status = _peer("repeng")
    print(f"steering-vectors: {sv_status}; repeng: {repeng_status}")

    def peer_ctx(vector):
        if sv is None:
            return None
        peer = sv.SteeringVector(layer_activations=dict(vector.directions), layer_type="decoder_block")
        return lambda: peer.apply(expert.model, multiplier=args.coef)

    configs = {
        "unsteered": lambda: nullcontext(),
        "steerlab 1 layer": lambda: apply(expert, Steering(one, coef=args.coef)),
        f"steerlab {expert.n_layers} layers": lambda: apply(expert, Steering(every, coef=args.coef)),
    }
    if sv is not None:
        configs["steering-vectors 1 layer"] = peer_ctx(one)
        configs[f"steering-vectors {expert.n_layers} layers"] = peer_ctx(every)

    n = args.new_tokens
    print(f"\n{n} new tokens, greedy, median of {args.repeats} interleaved runs; ratio = unsteered time / steered time")
    for bs in (1, 8):
        prompts = [PROMPT.format(name=name) for name in NAMES[:bs]]

        def run(make_ctx):
            def go():
                with make_ctx(), torch.inference_mode():
                    expert.generate(prompts, max_new_tokens=n, stop_at_eos=False, batch_size=bs)
            return go

        times = interleaved({name: run(ctx) for name, ctx in configs.items()}, args.repeats)
        for name, seconds in times.items():
            print(f"bs {bs}  {name:<28} {bs * n / seconds:8.1f} tok/s   ratio {times['unsteered'] / seconds:.3f}")


if __name__ == "__main__":
    main()

"""Generation speed: plain HF `generate` vs steerlab's generate decoding exactly, i.e. the loop's overhead on the
same float32 matmuls (target ratio >= 0.97), and steerlab's default (packed decoding, `experts.packed`), with TL's
`bridge.generate` for reference; and the expert's first (GGUF conversion) vs cached load time.

Run: python benchmarks/generation.py [--expert NAME] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from _common import hf_generate, interleaved, machine, quiet

from experts import loading, registry
from experts.expert import Expert

PROMPT = "Write a recommendation letter for {name}, a 22 year old student."
NAMES = ["Kelly", "Joseph", "Emily", "James", "Sarah", "Michael", "Anna", "David"]


def load_times(name: str) -> tuple[float, float]:
    spec = registry.resolve(name)
    with tempfile.TemporaryDirectory() as cache:
        previous = os.environ.get(loading.CACHE_ENV)
        os.environ[loading.CACHE_ENV] = cache
        try:
            start = time.perf_counter()
            Expert.load(name)
            first = time.perf_counter() - start
            cached = []
            for _ in range(3):
                start = time.perf_counter()
                Expert.load(name)
                cached.append(time.perf_counter() - start)
        finally:
            if previous is None:
                del os.environ[loading.CACHE_ENV]
            else:
                os.environ[loading.CACHE_ENV] = previous
    del spec
    return first, sorted(cached)[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    expert = Expert.load(args.expert, decoding="exact")
    fast = Expert.load(args.expert)
    print(f"default decoding: {fast.packing.to_dict()}")
    n = args.new_tokens
    print(f"expert: {expert.name}, {n} new tokens, greedy, median of {args.repeats} interleaved runs")
    print(f"{'bs':>3} {'HF tok/s':>10} {'exact tok/s':>12} {'exact/HF':>9} {'packed tok/s':>13} {'packed/HF':>10} "
          f"{'TL bridge tok/s':>16} {'bridge/HF':>10}")
    for bs in (1, 8):
        prompts = [PROMPT.format(name=name) for name in NAMES[:bs]]
        batch = expert.tokenize(expert.format_prompts(prompts))

        def hf():
            hf_generate(expert, batch, n)

        def ours():
            expert.generate(prompts, max_new_tokens=n, stop_at_eos=False, batch_size=bs)

        def packed():
            fast.generate(prompts, max_new_tokens=n, stop_at_eos=False, batch_size=bs)

        runs = {"hf": hf, "steerlab": ours, "packed": packed}
        if bs == 1:
            bridge = expert.bridge

            def tl():
                with torch.inference_mode():
                    bridge.generate(batch.input_ids, max_new_tokens=n, stop_at_eos=False, do_sample=False, verbose=False)

            runs["bridge"] = tl
        t = interleaved(runs, args.repeats)
        tok = bs * n
        bridge_col = f"{tok / t['bridge']:>16.1f} {t['hf'] / t['bridge']:>10.2f}" if "bridge" in t else f"{'-':>16} {'-':>10}"
        print(f"{bs:>3} {tok / t['hf']:>10.1f} {tok / t['steerlab']:>12.1f} {t['hf'] / t['steerlab']:>9.3f} "
              f"{tok / t['packed']:>13.1f} {t['hf'] / t['packed']:>10.3f} {bridge_col}")
    if not args.skip_load:
        first, cached = load_times(args.expert)
        print(f"load: first (GGUF verify + de-quantize + write cache) {first:.1f} s, cached {cached:.2f} s")


if __name__ == "__main__":
    main()

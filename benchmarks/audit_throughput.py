"""Letters per second of the audit's generation at batch 1, 4 and 16 (target: >= 5x from 1 to 16
on CPU). Same prompts (the small audit's template prompts), greedy, fixed letter length.

Run: python benchmarks/audit_throughput.py [--expert NAME] [--new-tokens N]
"""

from __future__ import annotations

import argparse
import time

from _common import machine, quiet

from analysis.letters import build_prompts
from experts import registry
from experts.expert import Expert
from experts.generate import GenerationSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--letters", type=int, default=16)
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    expert = Expert.load(args.expert)
    prompts = build_prompts("medium")[: args.letters]
    texts = expert.format_prompts([p.text for p in prompts])
    config = GenerationSettings(max_new_tokens=args.new_tokens, stop_at_eos=False)
    expert.generate_batch(texts[:2], config, [0, 1])  # warm-up
    rates = {}
    for bs in (1, 4, 16):
        start = time.perf_counter()
        for i in range(0, len(texts), bs):
            expert.generate_batch(texts[i : i + bs], config, list(range(i, i + len(texts[i : i + bs]))))
        rates[bs] = len(texts) / (time.perf_counter() - start)
    print(f"{len(texts)} letters of {args.new_tokens} tokens, greedy")
    for bs, rate in rates.items():
        print(f"batch {bs:>2}: {rate:6.2f} letters/s   speed-up vs batch 1: {rate / rates[1]:.2f}x")


if __name__ == "__main__":
    main()

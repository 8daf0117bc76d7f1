"""Capture memory: what `run_with_cache` keeps for last-token extraction, against what it returns
(target <= 1.2x), and against the full padded capture it replaced. Also times both.

Memory is counted as the bytes of the tensors the capture holds (its store and its result), which is
what grows with prompts x layers; the forward pass's own transient activations are the same for both.

Run: python benchmarks/capture_memory.py [--expert NAME] [--n-prompts N]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine, quiet

from experts import registry
from experts.expert import Expert

TEMPLATES = ["Write a recommendation letter for {n}.", "{n} is a nurse who has worked with us for three years and",
             "Tell me about {n}'s first week at the new job, in detail, and what {n} learned from the team there."]
NAMES = ["Kelly", "Joseph", "Emily", "James", "Sarah", "Michael", "Anna", "David"]


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--n-prompts", type=int, default=32)
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    expert = Expert.load(args.expert)
    prompts = [TEMPLATES[i % 3].format(n=NAMES[i % 8]) * (1 + i % 4) for i in range(args.n_prompts)]
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(expert.n_layers)]
    real_tokens = sum(len(expert.encode(p)) for p in prompts)

    start = time.perf_counter()
    full = expert.run_with_cache(prompts, names)
    full_s = time.perf_counter() - start
    start = time.perf_counter()
    last = expert.run_with_cache(prompts, names, reduce="last")
    last_s = time.perf_counter() - start

    normed = expert.run_with_cache(prompts, names, reduce="last", keep_norms=True)  # as vector extraction asks
    returned = _bytes(last.activations.values())
    kept = returned + _bytes(last.norms.values())  # nothing else is kept: no norms were asked for
    kept_normed = returned + _bytes(normed.norms.values())
    full_kept = _bytes(full.activations.values())
    torch.testing.assert_close(last[names[-1]], full.last_token(names[-1]), atol=1e-4, rtol=1e-4)
    mib = 1 << 20
    print(f"{args.n_prompts} prompts ({real_tokens} real tokens) x {expert.n_layers} layers of hook_resid_post")
    print(f"real tokens' activations: {real_tokens * expert.d_model * 4 * expert.n_layers / mib:.1f} MiB")
    print(f"full capture (left-padded):      {full_kept / mib:8.2f} MiB kept, {full_s:.2f} s")
    print(f"reduce='last':                   {kept / mib:8.2f} MiB kept, {returned / mib:.2f} MiB returned "
          f"(ratio {kept / returned:.3f}, target <= 1.2), {last_s:.2f} s")
    print(f"reduce='last', keep_norms=True:  {kept_normed / mib:8.2f} MiB kept (ratio {kept_normed / returned:.3f}; "
          "the per-position norms that extraction calibrates with)")


if __name__ == "__main__":
    main()

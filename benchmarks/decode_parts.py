"""What three parts of the packed decode path give, side by side on one machine: written-out steps (a block's
operations without transformers' module calls, `experts.inline`), shared codes (a block's q/k/v and gate/up
projections run as one int4 kernel call each, `experts.packed.SharedCode`) and the growing KV cache (a step writes
its column in place, `experts.kv.GrowingLayer`, where transformers' `DynamicCache` copies the whole cache). Five
variants of the same expert, packed: all three; the steps through the modules with both others, each alone, and
neither (written-out steps need shared codes). Greedy tokens per second at batch 1, 8 and 16, interleaved, medians.
Every part is an exact rewrite, so every variant must give the same tokens (checked).

Run: python benchmarks/decode_parts.py [--expert NAME] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

from _common import interleaved, machine, quiet
from transformers import DynamicCache

import experts.generate
from experts import inline, registry
from experts.expert import Expert
from experts.packed import PackedLinear, int4_code

PROMPT = "Write a recommendation letter for {name}, a 22 year old student."
NAMES = ["Kelly", "Joseph", "Emily", "James", "Sarah", "Michael", "Anna", "David"] * 2


def unshare(expert: Expert) -> int:
    """Give every linear of a shared code its own code again (as before sharing); returns how many."""
    members = [m for m in expert.model.modules() if isinstance(m, PackedLinear) and m.shared is not None]
    for module in members:
        module.attach(int4_code(module.weight.detach()))
    return len(members)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    shared, alone = Expert.load(args.expert), Expert.load(args.expert)
    print(f"packed: {shared.packing.to_dict()}; the variant without shared codes has {unshare(alone)} linears "
          f"with their own codes")
    growing = experts.generate.new_cache
    caches = {"growing": growing, "dynamic": lambda config: DynamicCache(config=config)}
    n = args.new_tokens
    print(f"expert: {shared.name}, {n} greedy tokens, median of {args.repeats} interleaved runs (tok/s)")
    print(f"{'bs':>3} {'all':>8} {'modules':>8} {'no shared':>10} {'no growing':>11} {'neither':>8} "
          f"{'written-out gives':>18} {'shared gives':>13} {'growing gives':>14} {'both / neither':>15}")
    for bs in (1, 8, 16):
        prompts = [PROMPT.format(name=name) for name in NAMES[:bs]]
        tokens = {}

        def run(expert: Expert, cache: str, key: tuple[str, str, str]) -> None:
            experts.generate.new_cache = caches[cache]
            try:
                with inline.through_modules() if key[0] == "modules" else nullcontext():
                    tokens[key] = expert.generate(prompts, max_new_tokens=n, stop_at_eos=False,
                                                  batch_size=bs).token_ids
            finally:
                experts.generate.new_cache = growing

        keys = [("written", "shared", "growing")] + [("modules", codes, cache) for codes in ("shared", "own")
                                                     for cache in caches]
        variants = {key: (lambda k=key: run(shared if k[1] == "shared" else alone, k[2], k)) for key in keys}
        t = interleaved(variants, args.repeats)
        if len({str(ids) for ids in tokens.values()}) != 1:
            raise SystemExit(f"batch {bs}: the variants' tokens differ; the parts are meant to be exact rewrites")
        speed = {key: bs * n / seconds for key, seconds in t.items()}
        written, both, own, dynamic, neither = (speed[k] for k in keys[:1] + [("modules", "shared", "growing"),
                                                                              ("modules", "own", "growing"),
                                                                              ("modules", "shared", "dynamic"),
                                                                              ("modules", "own", "dynamic")])
        print(f"{bs:>3} {written:>8.1f} {both:>8.1f} {own:>10.1f} {dynamic:>11.1f} {neither:>8.1f} "
              f"{written / both:>18.3f} {both / own:>13.3f} {both / dynamic:>14.3f} {both / neither:>15.3f}")


if __name__ == "__main__":
    main()

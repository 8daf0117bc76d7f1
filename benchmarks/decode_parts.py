"""What two parts of the packed decode path give, side by side on one machine: shared codes (a block's q/k/v and
gate/up projections run as one int4 kernel call each, `experts.packed.SharedCode`) and the growing KV cache (a step
writes its column in place, `experts.kv.GrowingLayer`, where transformers' `DynamicCache` copies the whole cache).
Four variants of the same expert, packed: both parts, each alone, neither; greedy tokens per second at batch 1, 8
and 16, interleaved, medians. Both parts are exact rewrites, so every variant must give the same tokens (checked).

Run: python benchmarks/decode_parts.py [--expert NAME] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse

from _common import interleaved, machine, quiet
from transformers import DynamicCache

import experts.generate
from experts import registry
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
    print(f"{'bs':>3} {'both':>8} {'no shared':>10} {'no growing':>11} {'neither':>8} {'both / neither':>15} "
          f"{'shared gives':>13} {'growing gives':>14}")
    for bs in (1, 8, 16):
        prompts = [PROMPT.format(name=name) for name in NAMES[:bs]]
        tokens = {}

        def run(expert: Expert, cache: str, key: tuple[str, str]) -> None:
            experts.generate.new_cache = caches[cache]
            try:
                tokens[key] = expert.generate(prompts, max_new_tokens=n, stop_at_eos=False, batch_size=bs).token_ids
            finally:
                experts.generate.new_cache = growing

        variants = {(codes, cache): (lambda e=expert, c=cache, k=(codes, cache): run(e, c, k))
                    for codes, expert in (("shared", shared), ("own", alone)) for cache in caches}
        t = interleaved(variants, args.repeats)
        if len({str(ids) for ids in tokens.values()}) != 1:
            raise SystemExit(f"batch {bs}: the variants' tokens differ; the parts are meant to be exact rewrites")
        speed = {key: bs * n / seconds for key, seconds in t.items()}
        both, own, dynamic, neither = (speed[k] for k in (("shared", "growing"), ("own", "growing"),
                                                          ("shared", "dynamic"), ("own", "dynamic")))
        print(f"{bs:>3} {both:>8.1f} {own:>10.1f} {dynamic:>11.1f} {neither:>8.1f} {both / neither:>15.3f} "
              f"{both / own:>13.3f} {both / dynamic:>14.3f}")


if __name__ == "__main__":
    main()

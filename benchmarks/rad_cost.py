"""Cost of reward-augmented decoding: ms/token as a ratio to plain top-k sampling (same seeds,
same k), with FLOPs per token beside it, for each reward kind:

- activation: a probe on the hidden state the step already computed (target ≤ 1.10×);
- look-ahead: the k candidates as one batched one-token step on a tiled copy of the expert's cache;
- external (RAD): a separate reward expert (a second SmolLM2 with a scalar head) reading the
  generated text, its KV cache tiled over k, and the same reward uncached, re-reading the whole
  text for every candidate at every step (target: cached ≥ 5× faster than uncached).

Run: python benchmarks/rad_cost.py [--expert NAME] [--reward-expert NAME] [--top-k 20]
"""

from __future__ import annotations

import argparse

from _common import interleaved, machine, quiet

from experts import registry
from experts.expert import Expert
from experts.generate import GenerationSettings
from steer.datasets import _DATA
from steer.rad.decoding import rad_generate
from steer.rad.training import load_labeled, train_activation_reward, train_external_reward, train_lookahead_reward

PROMPT = "Tell me about {name}'s day."
NAMES = ["Kelly", "Joseph", "Emily", "James", "Sarah", "Michael", "Anna", "David"]


def _blocks_flops(expert: Expert) -> int:
    """~2 FLOPs per weight per token through the blocks (no embedding, no unembedding)."""
    params = sum(p.numel() for p in expert.model.parameters())
    return 2 * (params - expert.model.get_input_embeddings().weight.numel())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--reward-expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--uncached-repeats", type=int, default=1, help="the uncached external form is slow")
    parser.add_argument("--batch-sizes", default="1,8")
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    expert = Expert.load(args.expert)
    data, _ = load_labeled(str(_DATA / "sentiment_labeled.jsonl"))
    activation = train_activation_reward(expert, data, epochs=50)
    lookahead = train_lookahead_reward(expert, data, epochs=50)
    external = train_external_reward(Expert.load(args.reward_expert), data, epochs=50)
    n, k, d, r = args.new_tokens, args.top_k, expert.d_model, activation.u.shape[1]
    base = 2 * sum(p.numel() for p in expert.model.parameters())  # attention over the cache not counted
    flops = {
        "plain top-k": 0,
        "activation": 2 * d + 2 * d * r + k * (2 * d * r + 2 * r),  # wᵀh, Vᵀh, then UᵀE[v] and a dot per candidate
        "lookahead": k * _blocks_flops(expert),
        "external": k * _blocks_flops(external.model),
        "external uncached": k * (n + 1) / 2 * _blocks_flops(external.model),  # mean text length (n+1)/2 per candidate
    }
    print(f"expert {expert.name}: ~{base / 1e9:.3f} GFLOPs/token; reward expert {external.model.name}; k = {k}")
    for name, extra in flops.items():
        print(f"  {name:<18} adds {extra / 1e9:10.4f} GFLOPs/token ({extra / base:8.2e} of the expert)")
    print(f"{n} new tokens, sampling, median of {args.repeats} interleaved runs after a warm-up "
          f"({args.uncached_repeats} run(s), no warm-up, for uncached); "
          "ratio = rad time / plain top-k time")
    for bs in map(int, args.batch_sizes.split(",")):
        prompts = [PROMPT.format(name=name) for name in NAMES[:bs]]
        config = GenerationSettings(max_new_tokens=n, do_sample=True, top_k=k, stop_at_eos=False, seed=0)

        def rad(reward):
            return lambda: rad_generate(expert, prompts, reward, beta=10.0, top_k=k, config=config, batch_size=bs)

        runs = {
            "plain top-k": lambda: expert.generate(prompts, max_new_tokens=n, do_sample=True, top_k=k,
                                                   stop_at_eos=False, seed=0, batch_size=bs),
            "activation": rad(activation),
            "lookahead": rad(lookahead),
            "external": rad(external),
        }
        times = interleaved(runs, args.repeats)
        times |= interleaved({"external uncached": rad(external.uncached())}, args.uncached_repeats, warmup=False)
        for name, seconds in times.items():
            print(f"bs {bs}  {name:<18} {1000 * seconds / n:9.1f} ms/token   ratio {seconds / times['plain top-k']:7.3f}"
                  f"   +{flops[name] / base:8.2e}x FLOPs")
        print(f"bs {bs}  external cached is {times['external uncached'] / times['external']:.1f}x faster than uncached")


if __name__ == "__main__":
    main()

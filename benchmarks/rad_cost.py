"""Cost of reward-augmented decoding: ms/token as a ratio to plain top-k sampling (same seeds,
same k), with FLOPs per token. Target: activation reward ≤ 1.10×. The look-ahead reward runs the
k candidates as one batched one-token step on a tiled copy of the KV cache. The external
reward-model kind of issue 5 is not built yet.

Run: python benchmarks/rad_cost.py [--expert NAME] [--top-k 20]
"""

from __future__ import annotations

import argparse

from _common import interleaved, machine, quiet

from experts import registry
from experts.expert import Expert
from experts.generate import GenerationConfig
from steer.datasets import _DATA
from steer.rad import rad_generate
from steer.rewards import load_labeled, train_activation_reward, train_lookahead_reward

PROMPT = "Tell me about {name}'s day."
NAMES = ["Kelly", "Joseph", "Emily", "James", "Sarah", "Michael", "Anna", "David"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    expert = Expert.load(args.expert)
    data, _ = load_labeled(str(_DATA / "sentiment_labeled.jsonl"))
    reward = train_activation_reward(expert, data, epochs=50)
    lookahead = train_lookahead_reward(expert, data, epochs=50)
    n, k, d, r = args.new_tokens, args.top_k, expert.d_model, reward.u.shape[1]
    params = sum(p.numel() for p in expert.model.parameters())
    base_flops = 2 * params  # ~2 FLOPs per weight per token (attention over the cache not counted)
    reward_flops = 2 * d + 2 * d * r + k * (2 * d * r + 2 * r)  # wᵀh, Vᵀh, then UᵀE[v] and the dot for k candidates
    embed = expert.model.get_input_embeddings().weight.numel()
    lookahead_flops = k * 2 * (params - embed)  # k candidates through the blocks (no unembedding) per token
    print(f"expert {expert.name}: ~{base_flops / 1e9:.3f} GFLOPs/token; activation reward adds "
          f"{reward_flops / 1e6:.3f} MFLOPs/token at k={k} ({reward_flops / base_flops:.2e} of the expert); "
          f"look-ahead adds ~{lookahead_flops / 1e9:.2f} GFLOPs/token ({lookahead_flops / base_flops:.1f}x)")
    print(f"{n} new tokens, sampling, median of {args.repeats} interleaved runs; ratio = rad time / plain top-k time")
    for bs in (1, 8):
        prompts = [PROMPT.format(name=name) for name in NAMES[:bs]]
        config = GenerationConfig(max_new_tokens=n, do_sample=True, top_k=k, stop_at_eos=False, seed=0)
        runs = {
            "plain top-k": lambda: expert.generate(prompts, max_new_tokens=n, do_sample=True, top_k=k,
                                                   stop_at_eos=False, seed=0, batch_size=bs),
            "activation": lambda: rad_generate(expert, prompts, reward, beta=10.0, top_k=k, config=config, batch_size=bs),
            "lookahead": lambda: rad_generate(expert, prompts, lookahead, beta=10.0, top_k=k, config=config, batch_size=bs),
        }
        times = interleaved(runs, args.repeats)
        for name, seconds in times.items():
            print(f"bs {bs}  {name:<12} {1000 * seconds / n:8.1f} ms/token   ratio {seconds / times['plain top-k']:.3f}")


if __name__ == "__main__":
    main()

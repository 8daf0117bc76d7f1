"""What packed decoding (`experts.packed`, steerlab's default on a CPU) changes in outputs against exact float32
decoding, on the demo's letters: greedy letters written both ways (share identical, where they first part), and
each exact letter read back token by token both ways (teacher-forced: the share of positions whose most likely
next token agrees, and the difference in the chosen token's log-probability).

Run: python benchmarks/packed_fidelity.py [--expert NAME] [--letters 32] [--new-tokens 96]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import machine, quiet

from analysis.letters import build_prompts
from experts import registry
from experts.expert import Expert
from experts.packed import packed_decoding


@torch.inference_mode()
def token_logprobs(expert: Expert, prompt: list[int], continuation: list[int], packed: bool) -> torch.Tensor:
    """(len(continuation), vocab) log-probabilities before each continuation token, every forward packed or not."""
    ids = torch.tensor([prompt + continuation])
    with packed_decoding(packed):
        logits = expert.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return logits.log_softmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--letters", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=96)
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    exact, fast = Expert.load(args.expert, decoding="exact"), Expert.load(args.expert)
    print(f"packed: {fast.packing.to_dict()}")
    prompts = [p.text for p in build_prompts("small")[: args.letters]]
    settings = dict(max_new_tokens=args.new_tokens, batch_size=16)
    reference, packed = exact.generate(prompts, **settings), fast.generate(prompts, **settings)
    divergence = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None if x == y else min(len(x), len(y)))
                  for x, y in zip(reference.token_ids, packed.token_ids)]
    parted = [d for d in divergence if d is not None]
    print(f"{len(prompts)} greedy letters of up to {args.new_tokens} tokens: {len(prompts) - len(parted)} identical; "
          f"the others part at token {sorted(parted)}")
    agree, deltas = [], []
    for formatted, ids in zip(reference.formatted_prompts, reference.token_ids):
        prompt = fast.encode(formatted)
        a, b = (token_logprobs(fast, prompt, ids, packed) for packed in (False, True))
        agree += (a.argmax(-1) == b.argmax(-1)).tolist()
        chosen = torch.tensor(ids)[:, None]
        deltas += (b.gather(-1, chosen) - a.gather(-1, chosen))[:, 0].tolist()
    absolute = sorted(abs(d) for d in deltas)
    print(f"teacher-forced over {len(deltas)} tokens of the exact letters: most likely token agrees at "
          f"{sum(agree) / len(agree):.2%} of positions; chosen token's log-prob packed - exact: mean "
          f"{statistics.mean(deltas):+.4f}, mean |.| {statistics.mean(absolute):.4f}, 99th percentile |.| "
          f"{absolute[int(0.99 * (len(absolute) - 1))]:.4f}, max |.| {absolute[-1]:.4f} nats")


if __name__ == "__main__":
    main()

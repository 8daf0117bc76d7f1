"""What packed decoding (`experts.packed`, steerlab's default on a CPU) changes in outputs against exact float32
decoding, on the demo's letters: greedy letters written both ways (share identical, where they first part), and
each exact letter read back token by token both ways (teacher-forced: the share of positions whose most likely
next token agrees, and the difference in the chosen token's log-probability). Then how often a letter depends on its
batch: the first `--alone` letters written one at a time against in their batch of 16, exactly and packed.

Run: python benchmarks/packed_fidelity.py [--expert NAME] [--letters 32] [--new-tokens 96] [--alone 16]
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
    parser.add_argument("--alone", type=int, default=16)
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    exact, fast = Expert.load(args.expert, decoding="exact"), Expert.load(args.expert)
    print(f"packed: {fast.packing.to_dict()}")
    prompts = [p.text for p in build_prompts("small")[: args.letters]]
    settings = dict(max_new_tokens=args.new_tokens, batch_size=16)
    reference, packed = exact.generate(prompts, **settings), fast.generate(prompts, **settings)
    parted = parting(reference.token_ids, packed.token_ids)
    print(f"{len(prompts)} greedy letters of up to {args.new_tokens} tokens: {len(prompts) - len(parted)} identical; "
          f"the others part at token {parted}")
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
    for name, expert, batched in (("exact", exact, reference), ("packed", fast, packed)):
        alone = expert.generate(prompts[: args.alone], **{**settings, "batch_size": 1})
        parted = parting(batched.token_ids[: args.alone], alone.token_ids)
        print(f"{name}: {args.alone - len(parted)} of {args.alone} letters written alone are those written in their "
              f"batch of 16; the others part at token {parted}")


def parting(first: list[list[int]], second: list[list[int]]) -> list[int]:
    """Where each pair of token lists that differ first differs, sorted."""
    return sorted(next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
                  for x, y in zip(first, second) if x != y)


if __name__ == "__main__":
    main()

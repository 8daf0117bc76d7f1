"""Letters per second of the audit's generation at batch 1, 4 and 16, decoding exactly (float32), packed
(steerlab's default on a CPU, `experts.packed`) and compiled (packed, its steps compiled whole, `experts.compiled`;
each batch shape compiles before the timing), interleaved, medians. Same prompts (the medium audit's template
prompts), greedy, fixed letter length; batch 1 writes the first 4 letters, batches 4 and 16 all of them. Then
what sharing the prompts' common prefix could gain: the prompts' forward as a share of a batch of 16 (exact), and
the share of a prompt that the batch's common prefix is.

Run: python benchmarks/audit_throughput.py [--expert NAME] [--new-tokens N] [--letters 16] [--repeats 3]
"""

from __future__ import annotations

import argparse

from _common import interleaved, machine, quiet

from analysis.letters import build_prompts
from experts import registry
from experts.expert import Expert
from experts.generate import GenerationSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--letters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    experts = {"exact": Expert.load(args.expert, decoding="exact"), "packed": Expert.load(args.expert),
               "compiled": Expert.load(args.expert, decoding="compiled")}
    print(f"packed: {experts['packed'].packing.to_dict()}")
    prompts = build_prompts("medium")[: args.letters]
    texts = experts["exact"].format_prompts([p.text for p in prompts])
    config = GenerationSettings(max_new_tokens=args.new_tokens, stop_at_eos=False)
    batches = {1: texts[:4], 4: texts, 16: texts}

    def write(expert: Expert, bs: int) -> None:
        rows = batches[bs]
        for i in range(0, len(rows), bs):
            expert.generate_batch(rows[i : i + bs], config, list(range(i, i + len(rows[i : i + bs]))))

    runs = {(mode, bs): (lambda m=mode, b=bs: write(experts[m], b)) for bs in batches for mode in experts}
    for expert in experts.values():
        expert.generate_batch(texts[:2], config, [0, 1])  # warm-up
    for bs, rows in batches.items():  # compiled steps compile once per batch shape: before the timing
        experts["compiled"].generate_batch(rows[:bs], config, list(range(bs)))
    seconds = interleaved(runs, args.repeats, warmup=False)
    print(f"{args.new_tokens} tokens per letter, greedy, median of {args.repeats} interleaved runs")
    print(f"{'batch':>5} {'exact letters/s':>16} {'packed letters/s':>17} {'compiled letters/s':>19} "
          f"{'packed / exact':>15} {'compiled / exact':>17}")
    for bs, rows in batches.items():
        exact, packed, compiled = (len(rows) / seconds[(mode, bs)] for mode in ("exact", "packed", "compiled"))
        print(f"{bs:>5} {exact:>16.2f} {packed:>17.2f} {compiled:>19.2f} {packed / exact:>15.2f} "
              f"{compiled / exact:>17.2f}")
    prefix_bound(experts["exact"], texts, seconds[("exact", 16)], args.repeats)


def prefix_bound(expert: Expert, texts: list[str], batch_s: float, repeats: int) -> None:
    """The most that computing the batch's common prompt prefix once could save: prefill share x prefix share."""
    import torch

    ids = [expert.encode(t) for t in texts]
    common = next((i for i in range(min(map(len, ids))) if any(r[i] != ids[0][i] for r in ids)), min(map(len, ids)))
    batch = expert.tokenize(texts)

    def prefill() -> None:
        with torch.inference_mode():
            expert.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, logits_to_keep=1)

    forward = interleaved({"prefill": prefill}, repeats)["prefill"]
    share, prefix = forward / batch_s, common / (sum(map(len, ids)) / len(ids))
    print(f"shared prefix: {common} tokens of {min(map(len, ids))}-{max(map(len, ids))} ({prefix:.0%} of a prompt); "
          f"the prompts' forward {forward:.2f} s of a {batch_s:.2f} s batch of {len(texts)} ({share:.1%}): sharing "
          f"the prefix could save at most {share * prefix:.1%}")


if __name__ == "__main__":
    main()

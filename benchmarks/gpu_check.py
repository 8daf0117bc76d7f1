"""One script for a GPU machine (under 5 minutes on one GPU): correctness checks, then speed ratios.

Checks: steering under the KV cache equals a reference computed without it; coefficient 0 is
bit-identical; a vector made on the CPU in float32 loads and steers on the GPU in bf16 (one
fingerprint across dtype and device); bf16 ablation removes the component. Then generation and
steering ratios at batch 1 and 64 (steerlab vs HF generate; steered vs unsteered), as a table.

Run: python benchmarks/gpu_check.py [--expert NAME] [--new-tokens N] [--repeats N] [--batches 1,64]
A dry run of the script itself on a CPU: --device cpu --batches 1 --new-tokens 8 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext

import torch
from _common import hf_generate, interleaved, machine, quiet

from experts import registry
from experts.expert import Expert
from steer.datasets import load_pairs
from steer.vectors.apply import Steering, apply
from steer.vectors.extract import compute_vector
from steer.vectors.vector import SteeringVector

PROMPTS = ["Write a recommendation letter for Kelly, a nurse.", "Tell me about your day.", "def add(a, b):"]


def _greedy_reference(expert: Expert, prompt: str, steering: Steering, n: int) -> list[int]:
    """Greedy tokens from full forwards without a KV cache, steering every position each time."""
    ids = expert.tokenize(expert.format_prompts([prompt])).input_ids
    out: list[int] = []
    with apply(expert, steering), torch.inference_mode():
        for _ in range(n):
            token = int(expert.model(input_ids=ids).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
    return out


def checks(cpu: Expert, gpu: Expert, tmp: str) -> list[tuple[str, bool, str]]:
    rows = []
    pairs, sha = load_pairs("sentiment")
    vector = compute_vector(cpu, pairs, [cpu.n_layers // 2], dataset="sentiment", dataset_sha256=sha)
    vector.save(f"{tmp}/v.safetensors")
    loaded = SteeringVector.load(f"{tmp}/v.safetensors", gpu)  # refused if the fingerprints differed
    rows.append((f"fingerprint equal on CPU fp32 and {gpu.device.type} bf16", cpu.fingerprint == gpu.fingerprint,
                 f"{cpu.fingerprint} / {gpu.fingerprint}"))
    steering = Steering(loaded, coef=float(sum(loaded.provenance.coef_range) / 2))
    for expert, label in ((cpu, "cpu fp32"), (gpu, f"{gpu.device.type} bf16")):
        with apply(expert, steering):
            cached = expert.generate(PROMPTS[:1], max_new_tokens=12, stop_at_eos=False).token_ids[0]
        reference = _greedy_reference(expert, PROMPTS[0], steering, 12)
        agree = sum(a == b for a, b in zip(cached, reference))
        rows.append((f"cached steering = uncached reference ({label})", agree >= 10, f"{agree}/12 tokens agree"))
    plain = gpu.generate(PROMPTS, max_new_tokens=16, do_sample=True, seed=3).token_ids
    for coef, label in (([0.0] * len(PROMPTS), "per-prompt"), (lambda step: 0.0, "schedule")):  # hooks attached
        with apply(gpu, Steering(loaded, coef=coef)):
            zero = gpu.generate(PROMPTS, max_new_tokens=16, do_sample=True, seed=3).token_ids
        rows.append((f"coef 0 ({label}) bit-identical ({gpu.device.type} bf16, sampled)", plain == zero, ""))
    name, layer = loaded.hook_name(loaded.layers[0]), loaded.layers[0]
    unit = (loaded.directions[layer] / loaded.directions[layer].norm()).to(gpu.device)
    before = gpu.run_with_cache(PROMPTS, [name])[name].float() @ unit
    with apply(gpu, Steering(loaded, coef=1.0, operator="ablate", positions="from:1")):
        cache = gpu.run_with_cache(PROMPTS, [name])
    after = cache[name].float() @ unit
    mask = cache.attention_mask.bool() & (cache.attention_mask.cumsum(-1) > 1)
    left = float(after[mask].abs().max() / before[mask].abs().max())
    rows.append(("bf16 ablation leaves < 0.5% of the component", left < 0.005, f"{left:.4%} left"))
    return rows


def speed(gpu: Expert, vector: SteeringVector, n: int, repeats: int, batches: list[int]) -> list[tuple[int, str, float, float]]:
    every = compute_vector(gpu, load_pairs("sentiment")[0], list(range(gpu.n_layers)))
    one = vector.restrict([vector.layers[0]])
    rows = []
    for bs in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(bs)]
        batch = gpu.tokenize(gpu.format_prompts(prompts))

        def hf():
            hf_generate(gpu, batch, n)

        def ours(ctx):
            def go():
                with ctx():
                    gpu.generate(prompts, max_new_tokens=n, stop_at_eos=False, batch_size=bs)
            return go

        times = interleaved({"HF generate": hf, "steerlab unsteered": ours(nullcontext),
                             "steerlab 1 layer": ours(lambda: apply(gpu, Steering(one, coef=4.0))),
                             f"steerlab {gpu.n_layers} layers": ours(lambda: apply(gpu, Steering(every, coef=4.0)))},
                            repeats)
        bases = {"HF generate": times["HF generate"], "steerlab unsteered": times["HF generate"]}
        for name, seconds in times.items():
            rows.append((bs, name, bs * n / seconds, bases.get(name, times["steerlab unsteered"]) / seconds))
    return rows


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: this script is for a GPU machine (--device cpu runs it as a dry run)")
        return 2
    cpu = Expert.load(args.expert, device="cpu", dtype="float32")
    gpu = Expert.load(args.expert, device=args.device, dtype="bfloat16")
    with tempfile.TemporaryDirectory() as tmp:
        results = checks(cpu, gpu, tmp)
        vector = SteeringVector.load(f"{tmp}/v.safetensors", gpu)
    print("\n| check | pass | detail |\n|---|---|---|")
    for name, ok, detail in results:
        print(f"| {name} | {'yes' if ok else 'NO'} | {detail} |")
    print(f"\n{args.new_tokens} new tokens, greedy, median of {args.repeats} interleaved runs (bf16). "
          "Ratio: steerlab unsteered vs HF generate; steered vs steerlab unsteered.")
    print("| batch | configuration | tok/s | ratio |\n|---|---|---|---|")
    for bs, name, tps, ratio in speed(gpu, vector, args.new_tokens, args.repeats, [int(b) for b in args.batches.split(",")]):
        print(f"| {bs} | {name} | {tps:.1f} | {ratio:.3f} |")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())

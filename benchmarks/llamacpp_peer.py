"""steerlab against llama.cpp, the measured peer (issue 29): greedy tokens per second on the same expert (the same
GGUF file steerlab ships, sha256-checked), steered and unsteered, at batch 1 and 8, interleaved, medians.

llama.cpp steers with a control vector (`llama_apply_adapter_cvec`: a direction added to one block's output, which
is steerlab's `blocks.k.hook_resid_post`); steerlab with a steering vector at the same layer, decoding exactly
(float32), packed (its default on a CPU: the 4-bit linears in the int4 kernel, `experts.packed`) and compiled
(packed with its decode steps compiled whole, `experts.compiled`; opt-in: each shape's first call compiles, untimed).
llama-cpp-python's high-level API decodes one sequence at a time, so its "batch 8" is eight sequences one after
another (llama.cpp's server decodes parallel slots together; that path is not measured here). Both sides evaluate
each whole prompt at every call: llama-cpp-python's reuse of the previous call's cached prefix is turned off
(`llm.reset()`), as steerlab has no cache across calls.

Each round runs every variant once, each of steerlab's right before or after llama.cpp's; a ratio is the median over
rounds of the pair's ratio, as this shared machine's speed drifts by more than 10% within a run.

Run: python benchmarks/llamacpp_peer.py [--expert NAME] [--new-tokens 64] [--repeats 7]
(`make bench` installs llama-cpp-python first; it builds from source once, then comes from uv's cache.)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from _common import interleaved_times, machine, paired_speedup, quiet

from experts import loading, registry
from experts.compiled import report as compiled_report
from experts.expert import Expert
from steer.datasets import load_pairs
from steer.vectors.apply import Steering, apply
from steer.vectors.extract import compute_vector

PROMPT = "Write a recommendation letter for {name}, a 22 year old student."
NAMES = ["Kelly", "Joseph", "Emily", "James", "Sarah", "Michael", "Anna", "David"]


def llama(gguf: str, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=gguf, n_ctx=512, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)


def control_vector(llm, direction: np.ndarray, layer: int, coef: float, n_layer: int) -> None:
    """Add coef · direction to block `layer`'s output (llama.cpp's buffer starts at block 1: steerlab's
    `blocks.k.hook_resid_post` is llama.cpp's direction.k); coef 0 clears it."""
    import llama_cpp

    apply_cvec = getattr(llama_cpp, "llama_set_adapter_cvec", None) or llama_cpp.llama_apply_adapter_cvec
    n_embd = llm.n_embd()
    if coef == 0:
        apply_cvec(llm.ctx, None, 0, n_embd, 0, 0)
        return
    data = np.zeros((n_layer, n_embd), dtype=np.float32)
    data[layer - 1] = coef * direction  # row 0 is block 1
    buffer = data.ravel()
    apply_cvec(llm.ctx, buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buffer.size, n_embd, layer, layer)


def llama_generate(llm, prompts: list[str], n: int) -> list[list[int]]:
    """Greedy, exactly `n` tokens per prompt, one prompt after another, each from an empty cache; returns the tokens.

    `llm.reset()` first: otherwise llama-cpp-python keeps the previous call's KV cache and evaluates only the part of
    the prompt that differs from it, so it would skip the prompt's forward that steerlab runs, and a steered call
    would continue from keys and values computed under another control vector."""
    out = []
    for prompt in prompts:
        tokens = llm.tokenize(prompt.encode("utf-8"), special=True)
        llm.reset()
        out.append([token for _, token in zip(range(n), llm.generate(tokens, top_k=1, top_p=1.0, temp=0.0, reset=True))])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", default=registry.DEFAULT_EXPERT)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--coef", type=float, default=4.0)
    args = parser.parse_args()
    quiet()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama-cpp-python is not installed: `make bench` installs it (built from source once)") from None
    threads = torch.get_num_threads()
    print(f"machine: {machine()}; llama-cpp-python {llama_cpp.__version__}, {threads} threads each")
    expert = Expert.load(args.expert, decoding="exact")
    fast = Expert.load(args.expert)  # the default: packed decoding where the CPU and the weights allow it
    fastest = Expert.load(args.expert, decoding="compiled")  # packed, its decode steps compiled (opt-in)
    print(f"steerlab's default decoding: {fast.packing.to_dict()}")
    pairs, sha = load_pairs("sentiment")
    layer = round(0.4 * expert.n_layers)
    vector = compute_vector(expert, pairs, [layer], dataset="sentiment", dataset_sha256=sha)
    direction = vector.directions[layer].float().numpy()
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as workdir:
        gguf = loading.verified_gguf(registry.resolve(args.expert), workdir)
        llm = llama(str(gguf), threads)
        print(f"expert: {expert.name} ({os.path.basename(gguf)}), {n} greedy tokens, sentiment vector at layer {layer} "
              f"coef {args.coef}, {args.repeats} interleaved rounds: tok/s their medians, ratios the medians of "
              f"each round's side-by-side pair")
        print(f"{'bs':>3} {'':>10} {'llama.cpp tok/s':>16} {'exact tok/s':>12} {'packed tok/s':>13} "
              f"{'compiled tok/s':>15} {'exact / llama.cpp':>18} {'packed / llama.cpp':>19} "
              f"{'compiled / llama.cpp':>21}")
        probe = expert.format_prompts([PROMPT.format(name="Kelly")])
        control_vector(llm, direction, layer, 0.0, expert.n_layers)
        plain = llama_generate(llm, probe, 16)
        control_vector(llm, direction, layer, args.coef, expert.n_layers)
        if llama_generate(llm, probe, 16) == plain:  # the steered rows must be steered rows
            raise SystemExit("llama.cpp's control vector changed nothing: the comparison would not be steered")
        for bs in (1, 8):
            prompts = [PROMPT.format(name=name) for name in NAMES[:bs]]
            formatted = expert.format_prompts(prompts)

            def ours(coef: float, model: Expert) -> list[list[int]]:
                with apply(model, Steering(vector, coef=coef)):
                    return model.generate(prompts, max_new_tokens=n, stop_at_eos=False, batch_size=bs).token_ids

            def theirs(coef: float):
                control_vector(llm, direction, layer, coef, expert.n_layers)
                llama_generate(llm, formatted, n)

            for coef in (0.0, args.coef):  # the first call compiles (once per shape); left out of the timing
                start = time.perf_counter()
                same = ours(coef, fastest) == ours(coef, fast)
                print(f"    bs {bs} coef {coef:g}: compiling and a first call {time.perf_counter() - start:.1f} s; "
                      f"compiled {'chose the same' if same else 'parted from'} packed's greedy tokens")
            runs = {"packed 0": lambda: ours(0.0, fast), "llama 0": lambda: theirs(0.0),  # each pair side by side
                    "compiled 0": lambda: ours(0.0, fastest), "exact 0": lambda: ours(0.0, expert),
                    "packed c": lambda: ours(args.coef, fast), "llama c": lambda: theirs(args.coef),
                    "compiled c": lambda: ours(args.coef, fastest), "exact c": lambda: ours(args.coef, expert)}
            times = interleaved_times(runs, args.repeats)
            for label, key in (("unsteered", "0"), ("steered", "c")):
                peer, exact, packed, compiled = (bs * n / statistics.median(times[f"{who} {key}"])
                                                 for who in ("llama", "exact", "packed", "compiled"))
                ratios = (paired_speedup(times, f"{who} {key}", f"llama {key}") for who in ("exact", "packed",
                                                                                          "compiled"))
                print(f"{bs:>3} {label:>10} {peer:>16.1f} {exact:>12.1f} {packed:>13.1f} {compiled:>15.1f} "
                      + " ".join(f"{ratio:>{width}.3f}" for ratio, width in zip(ratios, (18, 19, 21))))
        print(f"compiled decode steps used: {compiled_report(fastest.model)}")


if __name__ == "__main__":
    main()

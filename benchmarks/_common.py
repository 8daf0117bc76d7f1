"""Shared benchmark helpers: quiet libraries, machine description, a local Ray, interleaved timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def start_ray() -> None:
    """A local Ray of this machine's 2 benchmark cores, quiet (no dashboard, no worker logs)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    isa = torch.backends.cpu.get_cpu_capability()  # the vector instructions torch's CPU kernels use: AVX2, AVX512
    cpu = platform.processor() or platform.machine()
    return f"{cpu} ({isa}), {os.cpu_count()} cores, torch {torch.__version__}, {gpu}"


def hf_generate(expert, batch, new_tokens: int) -> None:
    """The baseline: plain transformers `generate`, greedy, exactly `new_tokens` tokens per row."""
    with torch.inference_mode():
        expert.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=expert.pad_token_id)


def interleaved_times(runs: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each callable in each round, measured round-robin so drift hits all of them alike."""
    for fn in runs.values() if warmup else ():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds per callable, measured round-robin so drift hits all of them alike."""
    return {name: statistics.median(t) for name, t in interleaved_times(runs, repeats, warmup).items()}


def paired_speedup(times: dict[str, list[float]], ours: str, peer: str) -> float:
    """The median over rounds of `peer`'s time / `ours`'s in the same round: how many times faster `ours` is, each
    round's pair measured seconds apart (a shared machine's speed drifts within a run by more than the gap)."""
    return statistics.median(p / o for o, p in zip(times[ours], times[peer]))

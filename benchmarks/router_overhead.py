"""Router overhead: one routing decision (the reader's prefill of the query, the named features and
the decision model) as a share of generating 64 tokens with the chosen expert (target ≤ 5%).
Measured side by side per expert, on queries from the shipped task set. When the reader is the
chosen expert, deciding and then answering from the reader's own prefill is also timed against
answering alone. First, batch reading (as evaluations and the guard's checks read, 16 queries a batch): the
prompt format's head run once for the batch against whole prompts, and how far the readings differ.

Run: python benchmarks/router_overhead.py [--router DIR] [--new-tokens 64] [--reading-only]
"""

from __future__ import annotations

import argparse

from _common import interleaved, machine, quiet

from experts.expert import Expert
from steer.router.router import DEFAULT_ROUTER, Router
from steer.router.tasks import task_set


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--router", default=str(DEFAULT_ROUTER))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reading-only", action="store_true", help="only the batch reading comparison")
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    router = Router.load(args.router)
    reader = Expert.load(router.features.reader)
    batch_reading(router, reader, args.repeats)
    if args.reading_only:
        return
    tasks = [t for t in task_set() if t.split == "test"]
    queries = [next(t.query for t in tasks if t.domain == d) for d in sorted({t.domain for t in tasks})]
    print(f"reader {reader.name} (sites: {', '.join(map(str, router.features.sites))}); "
          f"{len(queries)} queries, one per domain, batch 1; "
          f"{args.new_tokens} new tokens greedy; median of {args.repeats} interleaved runs")
    for name in router.experts:
        expert = reader if name == reader.name else Expert.load(name)
        runs = {
            "decide": lambda: [router.decide(reader, [q]) for q in queries],
            "generate": lambda: [expert.generate([q], max_new_tokens=args.new_tokens, stop_at_eos=False) for q in queries],
        }
        if expert is reader:
            runs["decide + answer (reused prefill)"] = lambda: [_decide_and_answer(router, reader, q, args.new_tokens)
                                                                 for q in queries]
        times = interleaved(runs, args.repeats)
        print(f"{name:<30} decision {1000 * times['decide'] / len(queries):7.1f} ms/query   generation "
              f"{1000 * times['generate'] / len(queries):8.1f} ms/query   overhead {times['decide'] / times['generate']:.2%}")
        if expert is reader:
            both = times["decide + answer (reused prefill)"]
            print(f"{'':<30} decide + answer from the reader's prefill {1000 * both / len(queries):8.1f} ms/query   "
                  f"overhead {both / times['generate'] - 1:+.2%} over answering alone")


def batch_reading(router: Router, reader: Expert, repeats: int, n: int = 160) -> None:
    """The first `n` task queries read in batches of 16, the shared head once per batch against whole prompts."""
    from unittest import mock

    from steer.router import features

    queries = [t.query for t in task_set()][:n]
    readings: dict[str, object] = {}

    def reading(name: str, shared: bool):
        def run() -> None:
            with mock.patch.object(features, "_shared_head", features._shared_head if shared else lambda *a: 0):
                readings[name] = features.read(reader, queries, router.features.sites).activations
        return run

    runs = {"shared head": reading("shared head", True), "whole prompts": reading("whole", False)}
    times = interleaved(runs, repeats)
    shared, whole = readings["shared head"], readings["whole"]
    same = sum(a == b for a, b in zip(router.choose(shared), router.choose(whole)))
    print(f"batch reading, {n} task queries, 16 a batch: shared head {times['shared head']:.2f} s, whole prompts "
          f"{times['whole prompts']:.2f} s: {times['whole prompts'] / times['shared head']:.2f}x; readings differ by "
          f"at most {float((shared - whole).abs().max() / whole.abs().max()):.1e} (relative), same choice "
          f"{same}/{n}")


def _decide_and_answer(router: Router, reader: Expert, query: str, new_tokens: int) -> None:

    reading = router.read(reader, [query], keep_prefill=True)
    router.decisions([query], reading.activations)
    reader.generate([query], max_new_tokens=new_tokens, stop_at_eos=False, prefill=reading.prefill)


if __name__ == "__main__":
    main()

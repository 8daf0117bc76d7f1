"""The main job: a calibrated letters audit of the default expert, with its controls and a mitigation frontier.

1. The letters (`size` small: 24 biography twin pairs, greedy, the letter's opening given, a repetition penalty),
   gated by the letter-quality gate, and the expert's own gender skew on two signed gaps (the paper's agency
   classifier, the lexicons) with CIs and the MDE at the corrected α; a scrambled-label negative control.
2. The positive control: a skew planted by steering (men towards agentic content, women towards communal); the
   audit must detect it with the expected sign.
3. The mitigation frontier on the planted skew: gender-conditional counter-steering along a content direction
   from Wan et al.'s data (gender projected out), against an equal-norm random vector and a
   prompting baseline under the same seeds; a gender-conditional logit bias on the agency lexicons' words; and
   LEACE erasure of gender with the pronouns stated: share of the skew removed against fluency cost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from analysis.mitigation import ERASER_CHECK, StudySettings, run_study


def run_demo(out: Path, expert_name: str, size: str = "small", seed: int = 0, max_new_tokens: int = 200) -> dict[str, Any]:
    started = time.perf_counter()
    report = run_study(StudySettings(expert=expert_name, size=size, seed=seed, max_new_tokens=max_new_tokens), out)
    results = json.loads((report.parent / "results.json").read_text(encoding="utf-8"))
    eraser = json.loads((out / ERASER_CHECK).read_text(encoding="utf-8"))
    return {"report": str(report), "seconds": round(time.perf_counter() - started, 1), "eraser_check": eraser, **results}

"""Fluency under a judge that did not write the letters.

A letter's fluency is its mean per-token negative log-likelihood under a *different* shipped model (the judge),
read as plain text. A loop or word salad that the writing expert rates as likely (perplexity under the writer
rewards its own habits) is unlikely under another model. The gate's limit per judge is calibrated on letters
written by others: Wan et al.'s released ChatGPT letters, so that letters like theirs pass
(`scripts/calibrate_fluency.py` measures them; the numbers and the sample are in `CALIBRATION`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from experts.errors import SteerlabError
from experts.expert import Expert
from experts.likelihood import text_nll

# Judges in order of preference: the first that is not the writer judges its letters.
JUDGES = ("gemma3-270m", "smollm2-135m-instruct")
# Per judge: the limit (the largest NLL seen on the calibration letters, rounded up to 0.05) and what it was
# measured on. Re-measure with `python scripts/calibrate_fluency.py PATH_TO_WAN_REPOSITORY`.
WAN_SAMPLE = ("Wan et al.'s released ChatGPT letters (uclanlp/biases-llm-reference-letters at 1264990): all 120 "
              "context-less and 300 of the 1,912 context-based (seed 0)")
CALIBRATION: dict[str, dict[str, Any]] = {
    # measured 2026-12-06 (2 CPU cores): NLL median 2.211, 99th percentile 2.822, largest 2.944
    "gemma3-270m": {"threshold": 2.95, "source": WAN_SAMPLE},
    # measured 2026-12-06 (2 CPU cores): NLL median 2.466, 99th percentile 3.123, largest 3.157
    "smollm2-135m-instruct": {"threshold": 3.2, "source": WAN_SAMPLE},
}


@dataclass(frozen=True)
class FluencyJudge:
    """A judge expert and its limit on mean per-token NLL; `calibration` says where the limit comes from."""

    expert: str
    threshold: float
    calibration: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise SteerlabError(f"a fluency limit must be finite and > 0, got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_for(writer: str, judge: str | None = None, threshold: float | None = None) -> FluencyJudge:
    """The fluency judge of letters written by `writer`: `judge` if given (it must differ from the writer), else the
    first calibrated judge that is not the writer. An uncalibrated judge needs an explicit `threshold`."""
    if judge is None:
        judge = next((name for name in JUDGES if name != writer), None)
    if judge == writer:
        raise SteerlabError(f"the fluency judge must be another expert than the writer {writer!r}; choose one of "
                            f"{', '.join(n for n in JUDGES if n != writer)}")
    if threshold is not None:
        return FluencyJudge(judge, threshold, "a limit given by the user")
    if judge not in CALIBRATION:
        raise SteerlabError(f"no calibrated fluency limit for judge {judge!r}; choose one of "
                            f"{', '.join(CALIBRATION) or 'none'}, or give a limit")
    entry = CALIBRATION[judge]
    return FluencyJudge(judge, entry["threshold"], entry["source"])


def judge_nll(judge: Expert, letters: Sequence[str], progress: bool = False) -> list[float]:
    """Each letter's mean per-token NLL under the judge (NaN for an empty letter)."""
    return text_nll(judge, [letter.strip() for letter in letters], progress=progress)


def calibrated_threshold(nlls: Sequence[float]) -> float:
    """The limit that lets every calibration letter pass: their largest NLL, rounded up to 0.05."""
    finite = [x for x in nlls if math.isfinite(x)]
    if not finite:
        raise SteerlabError("no calibration letter had a finite NLL")
    return math.ceil(max(finite) / 0.05) * 0.05

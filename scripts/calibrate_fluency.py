"""Calibrate the letter-quality gate's fluency limits on letters written by others: Wan et al.'s released ChatGPT
letters (a checkout of uclanlp/biases-llm-reference-letters, MIT; not shipped with steerlab).

For each judge in analysis.fluency.JUDGES: the mean per-token NLL of every context-less letter (120) and of a seeded
sample of the context-based ones, and the limit that lets every one of them pass (their largest NLL, rounded up
to 0.05). Prints a JSON record to paste into analysis.fluency.CALIBRATION.

    python scripts/calibrate_fluency.py PATH_TO_CHECKOUT [--sample 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from analysis.fluency import JUDGES, calibrated_threshold, judge_nll
from analysis.letters_file import load_letters
from experts.expert import Expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository")
    parser.add_argument("--sample", type=int, default=300, help="context-based letters sampled (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    clg, clg_record = load_letters(args.repository, "wan2023-clg")
    cbg, cbg_record = load_letters(args.repository, "wan2023-cbg")
    cbg = cbg.sample(n=min(args.sample, len(cbg)), random_state=args.seed)
    letters = clg.letter.tolist() + cbg.letter.tolist()
    out = {}
    for name in JUDGES:
        nll = np.array(judge_nll(Expert.load(name), letters, progress=True))
        out[name] = {"threshold": calibrated_threshold(nll), "letters": len(letters),
                     "median": round(float(np.median(nll)), 3), "p99": round(float(np.percentile(nll, 99)), 3),
                     "max": round(float(nll.max()), 3),
                     "source": f"Wan et al.'s ChatGPT letters: all {len(clg)} context-less and {len(cbg)} context-based "
                               f"(seed {args.seed}) of {cbg_record['letters']}"}
        print(json.dumps({name: out[name]}), flush=True)
    print(json.dumps({"files": clg_record["files"] | cbg_record["files"], "calibration": out}, indent=1))


if __name__ == "__main__":
    main()

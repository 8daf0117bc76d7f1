"""Compare the activation router with the baselines on the test split: routed quality, share of
the best-single-to-oracle gap closed, routing accuracy, cost (parameters × tokens, router
overhead included), pass@1 on code, calibration, paraphrase stability and faithfulness, with
paired-bootstrap CIs over queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from steer.evaluate.stats import paired_summary
from steer.router.router import Router


@dataclass(frozen=True)
class Routed:
    name: str
    choice: np.ndarray | None  # expert index per query; None = uniform random (scored by expectation)
    confidence: np.ndarray | None = None  # probability given to the chosen expert
    overhead_params: float = 0.0  # router's own parameters per prompt token


def per_query_quality(routed: Routed, q: np.ndarray) -> np.ndarray:
    return q.mean(1) if routed.choice is None else q[np.arange(len(q)), routed.choice]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
    return float(sum(abs(confidence[which == b].mean() - correct[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def metrics_table(routers: Sequence[Routed], q: np.ndarray, best: np.ndarray, costs: np.ndarray, prompt_tokens: np.ndarray,
                  answer_tokens: np.ndarray, passed: np.ndarray, reference: str, seed: int = 0) -> pd.DataFrame:
    """One row per router on the given (test) queries: quality `q`, the oracle's choice `best`;
    Δ and its CI are paired against `reference`; gap closed is measured towards the oracle's quality."""
    oracle = q[np.arange(len(q)), best]
    single = max(q.mean(0))
    by_name = {r.name: per_query_quality(r, q) for r in routers}
    rows = []
    for r in routers:
        quality = by_name[r.name]
        stats = paired_summary(quality - by_name[reference], seed=seed)
        own = paired_summary(quality, seed=seed)
        tokens = prompt_tokens + answer_tokens
        cost = (costs.mean() * tokens if r.choice is None else costs[r.choice] * tokens) + r.overhead_params * prompt_tokens
        code = ~np.isnan(passed[:, 0])
        pass1 = (passed[code].mean(1) if r.choice is None else passed[np.arange(len(q)), r.choice][code]).mean() if code.any() else np.nan
        rows.append({
            "router": r.name, "quality": quality.mean(), "quality_ci_low": own.ci_low, "quality_ci_high": own.ci_high,
            "gap_closed": (quality.mean() - single) / (oracle.mean() - single) if oracle.mean() > single else np.nan,
            "accuracy": (1 / q.shape[1]) if r.choice is None else float((r.choice == best).mean()),
            f"diff_vs_{reference}": stats.mean_diff, "diff_ci_low": stats.ci_low, "diff_ci_high": stats.ci_high,
            "cost_gflop_tokens": cost.mean() / 1e9, "code_pass_at_1": pass1,
            "ece": expected_calibration_error(r.confidence, (r.choice == best).astype(float)) if r.confidence is not None else np.nan,
        })
    return pd.DataFrame(rows)


def faithfulness(router: Router, h: torch.Tensor, n_random: int = 10, seed: int = 0) -> dict[str, float]:
    """How often removing the top contributing feature's direction from each activation flips the
    decision, against removing random directions of the same norm."""
    generator = torch.Generator().manual_seed(seed)
    h = h.float()
    before = np.array(router.choose(h))
    z = router.standardized(h)
    contributions = router.coef[before] * z  # (n, F) towards each row's chosen expert
    top = contributions.argmax(1)
    directions = router.features.directions
    unit = directions[top] / directions[top].norm(dim=-1, keepdim=True)
    removed = (h * unit).sum(-1, keepdim=True) * unit  # the component along the feature's direction
    flips_top = float((np.array(router.choose(h - removed)) != before).mean())
    norms = removed.norm(dim=-1, keepdim=True)
    flips_random = []
    for _ in range(n_random):
        r = torch.randn(h.shape, generator=generator)
        r = r / r.norm(dim=-1, keepdim=True) * norms
        flips_random.append(float((np.array(router.choose(h - r)) != before).mean()))
    return {"flip_rate_top_feature": flips_top, "flip_rate_random_mean": float(np.mean(flips_random)),
            "flip_rate_random_max": float(np.max(flips_random)), "n": len(h), "n_random": n_random}


def paraphrase_stability(router: Router, h_original: torch.Tensor, h_paraphrase: torch.Tensor) -> float:
    return float((np.array(router.choose(h_original)) == np.array(router.choose(h_paraphrase))).mean())

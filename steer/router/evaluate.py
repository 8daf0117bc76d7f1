"""Compare the activation router with the baselines: routed quality (graded answers), share of the
best-single-to-oracle gap closed, routing accuracy, cost (parameters × tokens, router overhead included), share of
calls to the most expensive expert, the cost–quality curve's APGR, calibration, paraphrase stability and
faithfulness, with paired-bootstrap CIs over queries."""

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
    confidence: np.ndarray | None = None  # what the router predicted for its choice (see `predicts`)
    overhead_params: float = 0.0  # router's own parameters per prompt token
    predicts: str = "best"  # confidence is P(the choice is the oracle's) ("best") or the choice's expected grade ("grade")


def per_query_quality(routed: Routed, q: np.ndarray) -> np.ndarray:
    return q.mean(1) if routed.choice is None else q[np.arange(len(q)), routed.choice]


def per_query_cost(routed: Routed, cost: np.ndarray, prompt_tokens: np.ndarray) -> np.ndarray:
    """Cost of each routed query: the chosen expert's (n, E) `cost`, plus the router's own parameters per prompt token."""
    return per_query_quality(routed, cost) + routed.overhead_params * prompt_tokens


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
    return float(sum(abs(confidence[which == b].mean() - correct[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def metrics_table(routers: Sequence[Routed], q: np.ndarray, best: np.ndarray, cost: np.ndarray,
                  prompt_tokens: np.ndarray, strongest: int, reference: str, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """One row per router on the given queries: quality `q` (n, E) with its CI, the share of the best-single-to-oracle
    gap closed, accuracy against the oracle's choice `best`, mean cost (`cost` (n, E), router overhead included) and
    the share of calls to the `strongest` (most expensive) expert; Δ quality against `reference` with its paired
    (1 − `alpha`) CI and the minimum detectable Δ at `alpha` (80% power);
    the calibration error of what each router predicted (its choice being the oracle's, or its choice's grade)."""
    oracle = q[np.arange(len(q)), best]
    single = max(q.mean(0))
    by_name = {r.name: per_query_quality(r, q) for r in routers}
    rows = []
    for r in routers:
        quality = by_name[r.name]
        stats = paired_summary(quality - by_name[reference], seed=seed, confidence=1 - alpha, alpha=alpha)
        own = paired_summary(quality, seed=seed)
        rows.append({
            "router": r.name, "quality": quality.mean(), "quality_ci_low": own.ci_low, "quality_ci_high": own.ci_high,
            "gap_closed": (quality.mean() - single) / (oracle.mean() - single) if oracle.mean() > single else np.nan,
            "accuracy": (1 / q.shape[1]) if r.choice is None else float((r.choice == best).mean()),
            f"diff_vs_{reference}": stats.mean_diff, "diff_ci_low": stats.ci_low, "diff_ci_high": stats.ci_high,
            "diff_mde": stats.mde, "alpha": alpha,
            "cost": per_query_cost(r, cost, prompt_tokens).mean(),
            "strong_share": (1 / q.shape[1]) if r.choice is None else float((r.choice == strongest).mean()),
            "ece": np.nan if r.confidence is None else expected_calibration_error(
                r.confidence, quality if r.predicts == "grade" else (r.choice == best).astype(float)),
        })
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame, against: Sequence[str], reference: str = "activation-router") -> list[str]:
    """One plain sentence per router named in `against`, from `metrics_table`'s CIs (at its α, which the caller
    corrects for the number of verdicts): the reference beats it (at equal or lower cost, or not), loses, or cannot
    be told apart, with the minimum detectable difference."""
    ours = table.set_index("router").loc[reference]
    lines = []
    for _, row in table[table.router.isin(against)].iterrows():
        diff, low, high = -row[f"diff_vs_{reference}"] + 0.0, -row.diff_ci_high + 0.0, -row.diff_ci_low + 0.0
        cheaper = ours.cost <= row.cost * 1.0001
        if low == high == diff == 0:  # no query differs: there is no interval to speak of
            lines.append(f"the router gives the same quality as {row.router} on every query (cost ratio "
                         f"{ours.cost / row.cost:.2f})")
            continue
        if low > 0:
            what = "beats" + (" at equal or lower cost" if cheaper else f" but costs {ours.cost / row.cost:.2f}x as much")
        elif high < 0:
            what = "LOSES to"
        else:
            what = "is not distinguishable from"
        lines.append(f"the router {what} {row.router}: Δ quality {diff:+.3f} [{low:+.3f}, {high:+.3f}] "
                     f"({1 - row.alpha:.2%} CI; detectable Δ {row.diff_mde:.3f})")
    return lines


def gap_recovered(curve: pd.DataFrame, weak: float, oracle: float, levels: Sequence[float] = (0.5, 0.8)) -> dict[str, float]:
    """RouteLLM's summaries of a cost–quality curve (rows: `strong_share`, `quality`): the share of the gap from
    always-cheapest (`weak`) to the oracle recovered, averaged over strong-call shares 0..1 (APGR, the curve
    interpolated, its upper envelope held flat past its last point), and the strong-call share needed to recover
    each of `levels` of it (NaN where never reached)."""
    if oracle <= weak:
        return {"apgr": float("nan"), **{f"calls_for_{round(100 * x)}pct": float("nan") for x in levels}}
    points = curve.sort_values("strong_share")
    shares = np.r_[0.0, points.strong_share.to_numpy()]
    recovered = np.maximum.accumulate(np.r_[0.0, (points.quality.to_numpy() - weak) / (oracle - weak)])
    grid = np.linspace(0, 1, 101)
    interpolated = np.interp(grid, shares, recovered)
    out = {"apgr": float(interpolated.mean())}
    for level in levels:
        reached = np.flatnonzero(interpolated >= level)
        out[f"calls_for_{round(100 * level)}pct"] = float(grid[reached[0]]) if len(reached) else float("nan")
    return out


def faithfulness(router: Router, h: torch.Tensor, train_h: torch.Tensor, n_random: int = 10, seed: int = 0) -> dict[str, float]:
    """How often removing the input evidence of each decision's top contributing feature flips it: the activation's
    component along that probe's direction replaced by its mean over the training queries `train_h` (the
    feature then reads as on an average query), against the same edit along random directions. It can fail: a
    feature whose weight the decision ignores, or whose direction other features share, flips nothing."""
    generator = torch.Generator().manual_seed(seed)
    h, train_h = h.float(), train_h.float()
    before = np.array(router.choose(h))
    contributions = router.coef[before] * router.standardized(h)  # (n, F) towards each row's chosen expert
    top = torch.as_tensor(contributions.argmax(1))

    def flips(units: torch.Tensor) -> float:  # units (n, d): one direction per row
        mean = (train_h @ units.T).mean(0)  # each row's direction, projected over the training queries
        edited = h + (mean - (h * units).sum(-1))[:, None] * units
        return float((np.array(router.choose(edited)) != before).mean())

    directions = router.features.placed_directions[top]
    flips_top = flips(directions / directions.norm(dim=-1, keepdim=True))
    flips_random = [flips(torch.nn.functional.normalize(torch.randn(h.shape, generator=generator), dim=-1))
                    for _ in range(n_random)]
    return {"flip_rate_top_feature": flips_top, "flip_rate_random_mean": float(np.mean(flips_random)),
            "flip_rate_random_max": float(np.max(flips_random)), "n": len(h), "n_random": n_random}


def paraphrase_stability(router: Router, h_original: torch.Tensor, h_paraphrase: torch.Tensor) -> float:
    return float((np.array(router.choose(h_original)) == np.array(router.choose(h_paraphrase))).mean())

"""Choose the router's operating point (its cost weight) on the val split, as RouteLLM's users do: for a target
share of calls to the most expensive expert, or for a quality floor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from experts.errors import SteerlabError
from steer.router.router import Router

WEIGHTS = tuple(float(w) for w in np.round(np.linspace(0.0, 3.0, 61), 3))


@dataclass(frozen=True)
class OperatingPoint:
    cost_weight: float
    strong_share: float  # share of val calls to the most expensive expert
    quality: float  # mean graded quality on val
    cost: float  # mean cost per val query


def operating_points(router: Router, h: torch.Tensor, q: np.ndarray, cost: np.ndarray,
                     weights: Sequence[float] = WEIGHTS) -> list[OperatingPoint]:
    """The router at each cost weight on queries `h`: its strong-call share, mean grade (`q`) and mean cost (`cost`),
    both (queries, experts)."""
    strongest = int(np.argmax([router.costs.get(e, 0.0) for e in router.experts]))
    points = []
    for weight in weights:
        choice = np.array(router.with_settings(cost_weight=weight).choose(h))
        rows = np.arange(len(choice))
        points.append(OperatingPoint(weight, float((choice == strongest).mean()), float(q[rows, choice].mean()),
                                     float(cost[rows, choice].mean())))
    return points


def calibrate(router: Router, h: torch.Tensor, q: np.ndarray, cost: np.ndarray, *, strong_share: float | None = None,
              quality_floor: float | None = None) -> tuple[Router, OperatingPoint, list[OperatingPoint]]:
    """The router at the best-quality weight whose strong-call share is at most `strong_share`, or at the cheapest
    weight whose quality reaches `quality_floor` (val queries: activations `h`, grades `q` and costs `cost`)."""
    if (strong_share is None) == (quality_floor is None):
        raise SteerlabError("calibrate for exactly one of --strong-share or --quality-floor")
    if strong_share is not None and not 0 <= strong_share <= 1:
        raise SteerlabError(f"--strong-share is a share of calls between 0 and 1, got {strong_share}")
    points = operating_points(router, h, q, cost)
    if strong_share is not None:
        allowed = [p for p in points if p.strong_share <= strong_share + 1e-12]
        if not allowed:
            raise SteerlabError(f"no cost weight up to {WEIGHTS[-1]} keeps the strong-call share at or below "
                                f"{strong_share:g} (lowest: {min(p.strong_share for p in points):.3f})")
        chosen = max(allowed, key=lambda p: (p.quality, -p.cost))
    else:
        allowed = [p for p in points if p.quality >= quality_floor]
        if not allowed:
            raise SteerlabError(f"no cost weight reaches a val quality of {quality_floor:g} "
                                f"(highest: {max(p.quality for p in points):.3f})")
        chosen = min(allowed, key=lambda p: (p.cost, -p.quality))
    notes = {**router.notes, "calibration": {"strong_share_target": strong_share, "quality_floor": quality_floor,
                                             "val": chosen.__dict__}}
    return router.with_settings(cost_weight=chosen.cost_weight, notes=notes), chosen, points

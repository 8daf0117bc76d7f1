"""The router: named features on a reader expert -> one sparse (L1) logistic model per expert that predicts the
grade of that expert's answer -> the expert with the highest expected grade less its cost penalty, or the fallback
where even that expected grade is below a threshold; a route (a feature above its threshold sends the request to a
named expert) overrides that choice -> the adjustments its policy asks for. Saved as a folder:
router.json, features.safetensors and the policy's vector and reward files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from experts.errors import SteerlabError
from experts.files import write_json
from steer.errors import BadVectorFileError, VectorMismatchError
from steer.router.decision import Adjustment, FeatureReading, RoutingDecision
from steer.router.features import FeatureSet, Reading, read
from steer.router.tasks import DEFAULT_ROUTER  # noqa: F401 (re-exported: the shipped router's folder)

if TYPE_CHECKING:
    from experts.expert import Expert

FORMAT = "steerlab.router/2"  # 2: expected grades per expert (1: a classifier of the best expert)
VERSION = "2"


@dataclass(frozen=True)
class Rule:
    """When feature `when` exceeds `above` (and the chosen expert is `expert`, if given), steer with
    the vector `file` at `strength` (kind "steer") or decode with the reward `file` at β = `strength`.
    A request may ask for this file at a strength between 0 and `request_max` in the rule's own direction
    (`request_bounds`; 0: it may not): it can weaken or strengthen the rule, never reverse it."""

    when: str
    kind: str
    file: str
    strength: float
    above: float = 0.0
    expert: str = ""
    operator: str = "add"
    positions: str = "all"
    request_max: float = 0.0
    target: str = ""  # the measure the rule should move (a steer.evaluate.scorers name), checked before it ships
    direction: int = 1  # +1: the rule should raise `target`; -1: lower it


    def request_bounds(self) -> tuple[float, float]:
        """The strengths a request may ask for: 0 up to `request_max`, signed like the rule's own strength
        (a reward's β is never negative)."""
        if self.kind == "steer" and self.strength < 0:
            return -self.request_max, 0.0
        return 0.0, self.request_max


@dataclass(frozen=True)
class Route:
    """Where feature `when` exceeds `above`, the request goes to `expert`, whatever the decision model chose (a
    request that names its expert keeps it). The first route that fires wins."""

    when: str
    above: float
    expert: str


@dataclass(frozen=True)
class Router:
    features: FeatureSet
    experts: list[str]
    fingerprints: dict[str, str]
    coef: np.ndarray  # (E, F) on standardized feature activations: the logit of each expert's expected grade
    intercept: np.ndarray  # (E,)
    feature_mean: np.ndarray  # (F,)
    feature_scale: np.ndarray  # (F,)
    fallback: str
    threshold: float = 0.0  # below this expected grade for the chosen expert, use the fallback
    costs: dict[str, float] = field(default_factory=dict)  # parameters per expert
    cost_weight: float = 0.0
    rules: list[Rule] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    folder: Path | None = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = set(self.features.names)
        for rule in self.rules:
            if rule.when not in names:
                raise SteerlabError(f"policy rule names feature {rule.when!r}; this router has {', '.join(sorted(names))}")
            if rule.kind not in ("steer", "reward"):
                raise SteerlabError(f"policy rule kind {rule.kind!r}; choose steer or reward")
            if rule.direction not in (1, -1):
                raise SteerlabError(f"policy rule direction {rule.direction!r}; choose 1 (raise the target) or -1 (lower it)")
            if rule.expert and rule.expert not in self.experts:
                raise SteerlabError(f"policy rule names expert {rule.expert!r}; this router routes to {', '.join(self.experts)}")
            if self.folder is not None and not (self.folder / rule.file).is_file():
                raise SteerlabError(f"policy rule names {rule.file!r}, which is not in {self.folder}")
            if not rule.expert and len(self.experts) > 1:  # a vector or a reward is made for one expert's model
                raise SteerlabError(f"policy rule on {rule.when!r} ({rule.file}) names no expert; this router routes to "
                                    f"{', '.join(self.experts)}: set `expert` to the one its file was made for")
        for route in self.routes:
            if route.when not in names:
                raise SteerlabError(f"route names feature {route.when!r}; this router has {', '.join(sorted(names))}")
            if route.expert not in self.experts:
                raise SteerlabError(f"route names expert {route.expert!r}; this router routes to {', '.join(self.experts)}")
        if self.fallback not in self.experts:
            raise SteerlabError(f"fallback expert {self.fallback!r} is not one of {', '.join(self.experts)}")

    # -- deciding ---------------------------------------------------------------------------
    def check_reader(self, reader: Expert) -> None:
        if reader.fingerprint != self.features.reader_fingerprint:
            raise VectorMismatchError(f"router was trained on reader {self.features.reader!r} (weights "
                                      f"{self.features.reader_fingerprint}), not {reader.name!r} (weights {reader.fingerprint})")

    def check_expert(self, expert: Expert) -> None:
        if expert.name not in self.experts:
            raise SteerlabError(f"router routes to {', '.join(self.experts)}, not {expert.name!r}")
        if self.fingerprints.get(expert.name) not in (None, expert.fingerprint):
            raise VectorMismatchError(f"router was trained for {expert.name!r} with weights {self.fingerprints[expert.name]}, "
                                      f"not {expert.fingerprint}")

    def standardized(self, h: Tensor) -> np.ndarray:
        acts = self.features.activations(h).double().numpy()
        return (acts - self.feature_mean) / self.feature_scale

    def expected_grades(self, h: Tensor) -> np.ndarray:
        """(n, E): each expert's predicted grade (0 to 1) for each query."""
        return _sigmoid(self.standardized(h) @ self.coef.T + self.intercept)

    def choose(self, h: Tensor) -> list[int]:
        """Index of the chosen expert per row (the fallback where the router abstains)."""
        return self._choose(h)[0]

    def cost_penalties(self) -> np.ndarray:
        """cost_weight × each expert's cost relative to the most expensive one: the grade `choose` gives up for it."""
        cost = np.array([self.costs.get(e, 0.0) for e in self.experts])
        return self.cost_weight * cost / max(cost.max(initial=0.0), 1e-12)

    def _choose(self, h: Tensor) -> tuple[list[int], list[bool], list[Route | None], list[int]]:
        """Per row: the chosen expert's index, whether the decision model abstained, the route that overrode its
        choice (None: none fired) and the decision model's own choice."""
        p = self.expected_grades(h)
        best = (p - self.cost_penalties()).argmax(-1)
        abstain = [bool(p[i, b] < self.threshold) for i, b in enumerate(best)]
        fallback = self.experts.index(self.fallback)
        choices = [fallback if a else int(b) for a, b in zip(abstain, best)]
        model_choices = list(choices)
        routed: list[Route | None] = [None] * len(choices)
        if self.routes:
            acts = self.features.activations(h).double().numpy()
            column = {r.when: self.features.names.index(r.when) for r in self.routes}
            for row in range(len(choices)):
                routed[row] = next((r for r in self.routes if acts[row, column[r.when]] > r.above), None)
                if routed[row] is not None:
                    choices[row], abstain[row] = self.experts.index(routed[row].expert), False
        return choices, abstain, routed, model_choices

    def read(self, reader: Expert, queries: Sequence[str], keep_prefill: bool = False) -> Reading:
        self.check_reader(reader)
        return read(reader, queries, self.features.sites, keep_prefill=keep_prefill)

    def decide(self, reader: Expert, queries: Sequence[str],
               pinned: Sequence[str | None] | None = None) -> list[RoutingDecision]:
        reading = self.read(reader, queries)
        return self.decisions(queries, reading.activations, reading.truncated, pinned)

    def decisions(self, queries: Sequence[str], h: Tensor, truncated: Sequence[bool] | None = None,
                  pinned: Sequence[str | None] | None = None) -> list[RoutingDecision]:
        """One decision per query. `pinned`: per query, an expert the request names (None: the router chooses);
        a pinned request gets that expert with the rules the policy has for it (the guard included)."""
        acts = self.features.activations(h).double().numpy()
        z = (acts - self.feature_mean) / self.feature_scale
        logits = z @ self.coef.T + self.intercept
        p = _sigmoid(logits)
        out = []
        choices, abstained, routed, model_choice = self._choose(h)
        for row, name in enumerate(pinned or []):
            if name is not None:
                if name not in self.experts:
                    raise SteerlabError(f"unknown expert {name!r}; this router routes to {', '.join(self.experts)}")
                choices[row], abstained[row], routed[row] = self.experts.index(name), False, None
        for row, choice in enumerate(choices):
            expert = self.experts[choice]
            readings = [FeatureReading(f.name, float(acts[row, j]), float(self.coef[choice, j]),
                                       float(self.coef[choice, j] * z[row, j]), str(self.features.sites[f.site]))
                        for j, f in enumerate(self.features.features)]
            fired = {name: acts[row, j] for j, name in enumerate(self.features.names)}
            adjustments = [Adjustment(r.kind, r.file, r.strength, r.when, float(fired[r.when]), r.above, expert)
                           for r in self.rules if fired[r.when] > r.above and (not r.expert or r.expert == expert)]
            route = routed[row]
            out.append(RoutingDecision(
                input_sha256=hashlib.sha256(queries[row].encode("utf-8")).hexdigest(), reader=self.features.reader,
                reader_layer=self.features.layer, features=readings,
                scores={e: float(logits[row, i]) for i, e in enumerate(self.experts)},
                expected_grades={e: float(p[row, i]) for i, e in enumerate(self.experts)}, expert=expert,
                expected_grade=float(p[row, choice]), abstained=abstained[row],
                intercept=float(self.intercept[choice]), cost_penalty=float(self.cost_penalties()[choice]),
                adjustments=adjustments, truncated=bool(truncated[row]) if truncated else False, router_version=VERSION,
                thresholds={r.when: r.above for r in self.rules if not r.expert or r.expert == expert}
                | {r.when: r.above for r in self.routes},
                routed_by=route.when if route else "",
                model_choice=self.experts[model_choice[row]] if route else ""))
        return out

    # -- files --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.features.save(folder / "features.safetensors")
        write_json(folder / "router.json", {
            "format": FORMAT, "version": VERSION, "experts": self.experts, "fingerprints": self.fingerprints,
            "coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "feature_mean": self.feature_mean.tolist(),
            "feature_scale": self.feature_scale.tolist(), "fallback": self.fallback, "threshold": self.threshold,
            "costs": self.costs, "cost_weight": self.cost_weight, "rules": [asdict(r) for r in self.rules],
            "routes": [asdict(r) for r in self.routes], "notes": self.notes})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Router:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "router.json").read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            features = FeatureSet.load(folder / "features.safetensors")
            arrays = {k: np.asarray(meta[k], dtype=float) for k in ("coef", "intercept", "feature_mean", "feature_scale")}
            if arrays["coef"].shape != (len(meta["experts"]), len(features.features)):
                raise ValueError("decision weights do not match the experts and features")
            rules, routes = [Rule(**r) for r in meta["rules"]], [Route(**r) for r in meta.get("routes", [])]
        except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
            raise BadVectorFileError(f"{folder} is not a steerlab router ({FORMAT}): {error}") from None
        return cls(features, meta["experts"], meta["fingerprints"], **arrays, fallback=meta["fallback"],
                   threshold=meta["threshold"], costs=meta["costs"], cost_weight=meta["cost_weight"],
                   rules=rules, routes=routes, folder=folder, notes=meta.get("notes", {}))

    def with_settings(self, **changes) -> Router:
        return replace(self, **changes)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def fit_decision_model(z_train: np.ndarray, grades: np.ndarray, c: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One L1 logistic regression per expert on the grades of its answers (soft labels in [0, 1]: each query is
    counted as a pass with weight g and a fail with weight 1 − g): (coef (E, F), intercept (E,)) of the logit of
    each expert's expected grade. An expert whose training grades are all equal gets that constant."""
    from sklearn.linear_model import LogisticRegression

    grades = np.clip(np.asarray(grades, dtype=float), 0.0, 1.0)
    n, n_experts = grades.shape
    coef, intercept = np.zeros((n_experts, z_train.shape[1])), np.zeros(n_experts)
    x = np.vstack([z_train, z_train])
    y = np.r_[np.ones(n), np.zeros(n)]
    for e in range(n_experts):
        g = grades[:, e]
        if np.ptp(g) == 0:
            mean = float(np.clip(g[0], 1e-3, 1 - 1e-3))
            intercept[e] = np.log(mean / (1 - mean))
            continue
        model = LogisticRegression(C=c, l1_ratio=1.0, solver="saga", max_iter=5000, random_state=seed)
        model.fit(x, y, sample_weight=np.r_[g, 1 - g])
        coef[e], intercept[e] = model.coef_[0], model.intercept_[0]
    return coef, intercept

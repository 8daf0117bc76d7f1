"""The router: named features on a reader expert -> a sparse (L1) multinomial logistic model that
scores each expert -> the chosen expert, or the fallback below a confidence threshold -> the
adjustments its policy asks for. Saved as a folder: router.json, features.safetensors and the
policy's vector and reward files."""

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

FORMAT = "steerlab.router/1"
VERSION = "1"


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
class Router:
    features: FeatureSet
    experts: list[str]
    fingerprints: dict[str, str]
    coef: np.ndarray  # (E, F) on standardized feature activations
    intercept: np.ndarray  # (E,)
    feature_mean: np.ndarray  # (F,)
    feature_scale: np.ndarray  # (F,)
    fallback: str
    threshold: float = 0.0
    costs: dict[str, float] = field(default_factory=dict)  # parameters per expert
    cost_weight: float = 0.0
    rules: list[Rule] = field(default_factory=list)
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

    def probabilities(self, h: Tensor) -> np.ndarray:
        logits = self.standardized(h) @ self.coef.T + self.intercept
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(-1, keepdims=True)

    def choose(self, h: Tensor) -> list[int]:
        """Index of the chosen expert per row (the fallback where the router abstains)."""
        return self._choose(h)[0]

    def cost_penalties(self) -> np.ndarray:
        """cost_weight × each expert's cost relative to the most expensive one (what `choose` subtracts)."""
        cost = np.array([self.costs.get(e, 0.0) for e in self.experts])
        return self.cost_weight * cost / max(cost.max(initial=0.0), 1e-12)

    def _choose(self, h: Tensor) -> tuple[list[int], list[bool]]:
        p = self.probabilities(h)
        best = (p - self.cost_penalties()).argmax(-1)
        abstain = [bool(p[i, b] < self.threshold) for i, b in enumerate(best)]
        fallback = self.experts.index(self.fallback)
        return [fallback if a else int(b) for a, b in zip(abstain, best)], abstain

    def read(self, reader: Expert, queries: Sequence[str], keep_prefill: bool = False) -> Reading:
        self.check_reader(reader)
        return read(reader, queries, self.features.layer, keep_prefill=keep_prefill)

    def decide(self, reader: Expert, queries: Sequence[str]) -> list[RoutingDecision]:
        reading = self.read(reader, queries)
        return self.decisions(queries, reading.activations, reading.truncated)

    def decisions(self, queries: Sequence[str], h: Tensor, truncated: Sequence[bool] | None = None) -> list[RoutingDecision]:
        acts = self.features.activations(h).double().numpy()
        z = (acts - self.feature_mean) / self.feature_scale
        logits = z @ self.coef.T + self.intercept
        p = self.probabilities(h)
        out = []
        choices, abstained = self._choose(h)
        for row, choice in enumerate(choices):
            best = int(p[row].argmax())
            expert = self.experts[choice]
            readings = [FeatureReading(name, float(acts[row, j]), float(self.coef[choice, j]),
                                       float(self.coef[choice, j] * z[row, j]))
                        for j, name in enumerate(self.features.names)]
            fired = {name: acts[row, j] for j, name in enumerate(self.features.names)}
            adjustments = [Adjustment(r.kind, r.file, r.strength, r.when) for r in self.rules
                           if fired[r.when] > r.above and (not r.expert or r.expert == expert)]
            out.append(RoutingDecision(
                input_sha256=hashlib.sha256(queries[row].encode("utf-8")).hexdigest(), reader=self.features.reader,
                reader_layer=self.features.layer, features=readings,
                scores={e: float(logits[row, i]) for i, e in enumerate(self.experts)},
                probabilities={e: float(p[row, i]) for i, e in enumerate(self.experts)}, expert=expert,
                confidence=float(p[row, best]), abstained=abstained[row],
                intercept=float(self.intercept[choice]), cost_penalty=float(self.cost_penalties()[choice]),
                adjustments=adjustments, truncated=bool(truncated[row]) if truncated else False, router_version=VERSION))
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
            "notes": self.notes})
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
        except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
            raise BadVectorFileError(f"{folder} is not a steerlab router ({FORMAT}): {error}") from None
        return cls(features, meta["experts"], meta["fingerprints"], **arrays, fallback=meta["fallback"],
                   threshold=meta["threshold"], costs=meta["costs"], cost_weight=meta["cost_weight"],
                   rules=[Rule(**r) for r in meta["rules"]], folder=folder, notes=meta.get("notes", {}))

    def with_settings(self, **changes) -> Router:
        return replace(self, **changes)


def fit_decision_model(z_train: np.ndarray, best_train: np.ndarray, n_experts: int, c: float, seed: int = 0):
    """L1 multinomial logistic regression: (coef (E, F), intercept (E,)) for all E experts, also
    those never best in training (they get -inf-like intercepts). One expert always best: a constant decision."""
    from sklearn.linear_model import LogisticRegression

    if len(set(best_train.tolist())) < 2:
        return np.zeros((n_experts, z_train.shape[1])), np.where(np.arange(n_experts) == best_train[0], 0.0, -30.0)
    model = LogisticRegression(C=c, l1_ratio=1.0, solver="saga", max_iter=5000, random_state=seed).fit(z_train, best_train)
    coef = np.zeros((n_experts, z_train.shape[1]))
    intercept = np.full(n_experts, -30.0)
    classes = list(model.classes_)
    if len(classes) == 2:  # sklearn keeps one row for two classes: logit of the second
        coef[classes[1]], intercept[classes[1]] = model.coef_[0], model.intercept_[0]
        intercept[classes[0]] = 0.0
    else:
        for row, cls in enumerate(classes):
            coef[cls], intercept[cls] = model.coef_[row], model.intercept_[row]
    return coef, intercept

"""`RoutingDecision`: everything a routing decision used and produced, as JSON, appended to an
audit log (JSONL, one decision per line)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from experts.files import append_jsonl


@dataclass(frozen=True)
class FeatureReading:
    name: str
    activation: float  # probe logit on the reader's activation (> 0: fires)
    weight: float  # the chosen expert's grade model's weight
    contribution: float  # weight × standardized activation: its push on the chosen expert's expected grade (logit)
    site: str = ""  # where the reader read it, e.g. "blocks.17.hook_resid_post (last)"


@dataclass(frozen=True)
class Adjustment:
    kind: str  # "steer" or "reward"
    file: str
    strength: float  # steering coefficient or β
    because: str  # the feature that fired ("request": the request asked for it)
    activation: float | None = None  # the feature's value on this request ...
    above: float | None = None  # ... and the threshold it exceeded
    expert: str = ""  # the expert the adjustment was applied to


@dataclass(frozen=True)
class RoutingDecision:
    input_sha256: str
    reader: str
    reader_layer: int
    features: list[FeatureReading]
    scores: dict[str, float]  # logit of each expert's expected grade
    expected_grades: dict[str, float]  # each expert's predicted grade (0 to 1): sigmoid(score)
    expert: str
    expected_grade: float  # the chosen expert's
    abstained: bool  # the expected grade below the threshold: the fallback expert was used
    intercept: float = 0.0  # the chosen expert's intercept: intercept + Σ contributions = scores[expert]
    cost_penalty: float = 0.0  # cost_weight × the chosen expert's relative cost, taken from its expected grade
    adjustments: list[Adjustment] = field(default_factory=list)
    truncated: bool = False
    router_version: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)  # features with a rule for the chosen expert or a route
    routed_by: str = ""  # the feature whose route sent the request to `expert` ("": the decision model's choice)
    model_choice: str = ""  # where a route fired: the expert the decision model chose

    def to_dict(self) -> dict:
        return asdict(self)

    def top_features(self, n: int = 3) -> list[FeatureReading]:
        return sorted(self.features, key=lambda f: -f.contribution)[:n]

    def _activation(self, name: str) -> float:
        return next(f.activation for f in self.features if f.name == name)

    def _rule_note(self, feature: FeatureReading) -> str:
        if feature.name not in self.thresholds:
            return ""
        fired = feature.activation > self.thresholds[feature.name]
        return f"  (rule threshold {self.thresholds[feature.name]:+.2f}: {'fired' if fired else 'not fired'})"

    def explain(self) -> str:
        head = (f"expert {self.expert} (expected grade {self.expected_grade:.2f}"
                f"{', abstained: fallback' if self.abstained else ''})")
        if self.expert in self.scores:
            head += f"; logit {self.scores[self.expert]:+.2f} = intercept {self.intercept:+.2f} + the contributions below"
        lines = [head]
        if self.routed_by:
            lines.append(f"  route: {self.routed_by} fired ({self._activation(self.routed_by):+.2f} > threshold "
                         f"{self.thresholds[self.routed_by]:+.2f}): sent to {self.expert}"
                         + (" (the decision model's choice too)" if self.model_choice == self.expert
                            else f" instead of the decision model's {self.model_choice}"))
        if self.cost_penalty:
            lines.append(f"  cost penalty {self.cost_penalty:.3f} taken from its expected grade before choosing")
        lines += [f"  {f.name:<22} activation {f.activation:+7.2f}  weight {f.weight:+6.2f}  contribution "
                  f"{f.contribution:+6.2f}" + self._rule_note(f) + (f"  [{f.site}]" if f.site else "")
                  for f in self.top_features(len(self.features))]
        lines += [f"  adjust: {a.kind} {a.file} at {a.strength:g} on {a.expert or self.expert} because {a.because} fired"
                  + ("" if a.activation is None else f" ({a.activation:+.2f} > threshold {a.above:+.2f})")
                  for a in self.adjustments]
        if self.truncated:
            lines.append("  note: the prompt was cut to the reader's context")
        return "\n".join(lines)


def append_log(path: str | Path, decisions: list[RoutingDecision]) -> None:
    """Append decisions to a JSONL audit log, flushed and fsynced."""
    append_jsonl(path, (decision.to_dict() for decision in decisions))

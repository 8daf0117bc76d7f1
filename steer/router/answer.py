"""Answer a routed prompt: the chosen expert, with the adjustments its decision lists."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from experts.expert import Expert
from experts.generate import GenerationResult, GenerationSettings, Prefill
from steer.rad.decoding import reward_decoding
from steer.rad.rewards import load_reward
from steer.router.decision import Adjustment, RoutingDecision
from steer.router.router import Router, Rule
from steer.vectors.apply import Steering, apply
from steer.vectors.vector import SteeringVector


class ExpertPool:
    """Experts loaded once, on first use, and checked against the router's fingerprints."""

    def __init__(self, router: Router, device: str | None = None, preloaded: dict[str, Expert] | None = None) -> None:
        self.router, self.device, self.loaded = router, device, dict(preloaded or {})

    def get(self, name: str) -> Expert:
        if name not in self.loaded:
            self.loaded[name] = Expert.load(name, device=self.device)
        self.router.check_expert(self.loaded[name])
        return self.loaded[name]


def load_control(kind: str, file: str, folder: Path, expert: Expert, loaded: dict[str, Any]) -> Any:
    """The steering vector (kind "steer") or reward in `folder/file`, read once into `loaded`."""
    if file not in loaded:
        read = SteeringVector.load if kind == "steer" else load_reward
        loaded[file] = read(folder / file, expert)
    return loaded[file]


def generate_adjusted(expert: Expert, prompts: list[str], adjustments: Sequence[Adjustment], rules: Sequence[Rule],
                      folder: Path, config: GenerationSettings, *, top_k: int = 20, system: str | None = None,
                      prefill: Prefill | None = None, loaded: dict[str, Any] | None = None) -> GenerationResult:
    """Generate with `expert`, steered and reward-decoded as `adjustments` say (their files are in `folder`).
    `loaded` keeps the vectors and rewards read so far, for a caller that answers many requests."""
    by_file = {(r.kind, r.file): r for r in rules}
    loaded = {} if loaded is None else loaded
    hook = None
    with ExitStack() as stack:
        for adjustment in adjustments:
            rule = by_file[(adjustment.kind, adjustment.file)]
            control = load_control(adjustment.kind, adjustment.file, folder, expert, loaded)
            if adjustment.kind == "steer":
                stack.enter_context(apply(expert, Steering(control, coef=adjustment.strength, operator=rule.operator,
                                                           positions=rule.positions)))
            else:
                hook = stack.enter_context(reward_decoding(expert, control, adjustment.strength, top_k))
        return expert.generate(prompts, **config.keywords(), system=system, logits_hook=hook, prefill=prefill)


def answer(router: Router, pool: ExpertPool, prompt: str, decision: RoutingDecision, max_new_tokens: int = 128,
           top_k: int = 20, prefill: Prefill | None = None) -> tuple[str, bool]:
    """Greedy answer by the chosen expert, steered and reward-decoded as the decision says, and
    whether it continued the reader's own forward pass (`prefill`: the reader chose itself and
    the decision adjusts nothing)."""
    expert = pool.get(decision.expert)
    reuse = prefill is not None and decision.expert == router.features.reader and not decision.adjustments
    result = generate_adjusted(expert, [prompt], decision.adjustments, router.rules, router.folder,
                               GenerationSettings(max_new_tokens=max_new_tokens), top_k=top_k,
                               prefill=prefill if reuse else None)
    return result.texts[0], reuse

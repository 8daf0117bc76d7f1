"""Answer a routed prompt: the chosen expert, with the adjustments its decision lists."""

from __future__ import annotations

from contextlib import ExitStack

from experts.expert import Expert
from experts.generate import GenerationConfig, Prefill, generate
from steer.apply import Steering, apply
from steer.rad import reward_decoding
from steer.rewards import load_reward
from steer.router.decision import RoutingDecision
from steer.router.router import Router
from steer.vector import SteeringVector


class ExpertPool:
    """Experts loaded once, on first use, and checked against the router's fingerprints."""

    def __init__(self, router: Router, device: str | None = None, preloaded: dict[str, Expert] | None = None) -> None:
        self.router, self.device, self.loaded = router, device, dict(preloaded or {})

    def get(self, name: str) -> Expert:
        if name not in self.loaded:
            self.loaded[name] = Expert.load(name, device=self.device)
        self.router.check_expert(self.loaded[name])
        return self.loaded[name]


def answer(router: Router, pool: ExpertPool, prompt: str, decision: RoutingDecision, max_new_tokens: int = 128,
           top_k: int = 20, prefill: Prefill | None = None) -> tuple[str, bool]:
    """Greedy answer by the chosen expert, steered and reward-decoded as the decision says, and
    whether it continued the reader's own forward pass (`prefill`: the reader chose itself and
    the decision adjusts nothing)."""
    expert = pool.get(decision.expert)
    reuse = prefill is not None and decision.expert == router.features.reader and not decision.adjustments
    rules = {(r.kind, r.file): r for r in router.rules}
    hook = None
    with ExitStack() as stack:
        for adjustment in decision.adjustments:
            rule, path = rules[(adjustment.kind, adjustment.file)], router.folder / adjustment.file
            if adjustment.kind == "steer":
                vector = SteeringVector.load(path, expert=expert)
                stack.enter_context(apply(expert, Steering(vector, coef=adjustment.strength, operator=rule.operator,
                                                           positions=rule.positions)))
            else:
                hook = stack.enter_context(reward_decoding(expert, load_reward(path, expert), adjustment.strength, top_k))
        config = GenerationConfig(max_new_tokens=max_new_tokens)
        text = generate(expert, [prompt], config, logits_hook=hook, prefill=prefill if reuse else None).texts[0]
    return text, reuse

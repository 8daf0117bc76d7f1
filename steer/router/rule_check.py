"""Policy rules validated before they ship: on held-out tasks where a rule's feature fires, its expert answers
with and without the rule (the same greedy decoding and batches); the rule ships only if it moves its target
measure (a `steer.evaluate.scorers` name) in its intended direction, with a paired 95% CI that excludes 0, and
lowers the mean answer grade by no more than `QUALITY_BOUND`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from experts.generate import GenerationSettings
from steer.evaluate.scorers import get_scorer
from steer.evaluate.stats import paired_summary
from steer.router.answer import generate_adjusted
from steer.router.answers import answer_budget
from steer.router.decision import Adjustment
from steer.router.quality import grade_answer
from steer.router.router import Router, Rule
from steer.router.tasks import Task

if TYPE_CHECKING:
    from experts.expert import Expert

QUALITY_BOUND = 0.05  # the largest drop in mean answer grade (0..1) a shipped rule may cost
MIN_FIRED = 5  # fewer held-out tasks where the rule fires cannot validate it


def _graded(tasks: Sequence[Task], texts: Sequence[str], reasons: Sequence[str]) -> np.ndarray:
    return np.array([grade_answer(t, text, why).score for t, text, why in zip(tasks, texts, reasons)])


def _answers(expert: Expert, router: Router, tasks: Sequence[Task], adjustments: list[Adjustment],
             max_new_tokens: int | None, batch_size: int) -> tuple[list[str], list[str]]:
    texts, reasons = [""] * len(tasks), [""] * len(tasks)
    order = sorted(range(len(tasks)), key=lambda i: answer_budget(tasks[i], max_new_tokens))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        budget = max(answer_budget(tasks[i], max_new_tokens) for i in rows)
        result = generate_adjusted(expert, [tasks[i].query for i in rows], adjustments, router.rules, router.folder,
                                   GenerationSettings(max_new_tokens=budget))
        for i, text, why in zip(rows, result.texts, result.finish_reasons):
            texts[i], reasons[i] = text, why
    return texts, reasons


def check_rule(router: Router, rule: Rule, expert: Expert, tasks: Sequence[Task], fired: np.ndarray, *,
               max_new_tokens: int | None = None, batch_size: int = 16, seed: int = 0) -> dict:
    """One rule on the held-out `tasks` where `fired`: Δ target and Δ grade (rule − no rule), paired, and whether
    it ships."""
    row = {"when": rule.when, "kind": rule.kind, "file": rule.file, "strength": rule.strength, "expert": expert.name,
           "target": rule.target, "direction": rule.direction, "n_fired": int(fired.sum())}
    if not rule.target:
        return row | {"ships": False, "why": "no target measure: nothing to validate it against"}
    if fired.sum() < MIN_FIRED:
        return row | {"ships": False, "why": f"fires on {int(fired.sum())} held-out tasks; at least {MIN_FIRED} needed"}
    chosen = [t for t, f in zip(tasks, fired) if f]
    plain = _answers(expert, router, chosen, [], max_new_tokens, batch_size)
    ruled = _answers(expert, router, chosen, [Adjustment(rule.kind, rule.file, rule.strength, rule.when)],
                     max_new_tokens, batch_size)
    score = get_scorer(rule.target)
    target = paired_summary(rule.direction * (np.array(score(ruled[0])) - np.array(score(plain[0]))), seed=seed)
    quality = paired_summary(_graded(chosen, *ruled) - _graded(chosen, *plain), seed=seed)
    moves = target.ci_low > 0
    keeps_quality = quality.mean_diff >= -QUALITY_BOUND
    why = "passes" if moves and keeps_quality else "; ".join(
        ([] if moves else [f"its target does not move as intended (CI {target.ci_low:+.3f} to {target.ci_high:+.3f})"])
        + ([] if keeps_quality else [f"answer grade falls by {-quality.mean_diff:.3f} > {QUALITY_BOUND}"]))
    return row | {"target_change": target.mean_diff, "target_ci": [target.ci_low, target.ci_high],
                  "grade_change": quality.mean_diff, "grade_ci": [quality.ci_low, quality.ci_high],
                  "ships": moves and keeps_quality, "why": why}


def validate_rules(router: Router, reader: Expert, experts: dict[str, Expert], tasks: Sequence[Task], *,
                   max_new_tokens: int | None = None, seed: int = 0) -> tuple[Router, list[dict]]:
    """The router with only the rules that pass on the held-out `tasks` (each rule's expert, or the fallback)."""
    acts = router.features.activations(router.read(reader, [t.query for t in tasks]).activations).numpy()
    report = []
    for rule in router.rules:
        fired = acts[:, router.features.names.index(rule.when)] > rule.above
        expert = experts[rule.expert or router.fallback]
        report.append(check_rule(router, rule, expert, tasks, fired, max_new_tokens=max_new_tokens, seed=seed))
    kept = [rule for rule, row in zip(router.rules, report) if row["ships"]]
    return replace(router, rules=kept, notes={**router.notes, "rule_validation": report}), report

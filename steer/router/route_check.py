"""A route checked before it ships. Two measures, on requests the route was not built from:
- the requests it is for (e.g. continuations written apart): where it fires, its expert's answer and the answer of
  the expert the decision model chose, both greedy, each read after the request as plain text by a judge: per
  request, the router's first expert that wrote neither answer; the route ships only if the judges find its
  expert's text the more natural one (mean per-token NLL lower, paired 95% CI below 0);
- the router's held-out tasks where it fires: the stored grades of its expert's answers against those of the
  decision model's choice may fall by at most QUALITY_BOUND on average."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from experts.errors import SteerlabError
from experts.generate import GenerationSettings
from experts.likelihood import text_continuation_nll
from steer.evaluate.stats import paired_summary
from steer.router.quality import stored_quality
from steer.router.router import Route, Router
from steer.router.rule_check import QUALITY_BOUND
from steer.router.tasks import Task

if TYPE_CHECKING:
    from experts.expert import Expert

ANSWER_TOKENS = 40
MIN_FIRED = 10  # fewer requests where the route fires cannot validate it


@dataclass(frozen=True)
class RouteCheck:
    when: str
    above: float
    expert: str
    judges: dict[str, int]  # how many requests each judge read
    n_requests: int
    n_fired: int  # requests it is for where it fires and changes the expert
    chosen_before: dict[str, int]  # where it fired: how often the decision model chose each expert
    nll_change: float  # judge NLL, route's expert − decision model's choice (< 0: more natural)
    nll_ci: tuple[float, float]
    n_tasks: int
    n_tasks_fired: int
    grade_change: float  # stored grade, route's expert − decision model's choice, on held-out tasks where it fires
    ships: bool
    why: str
    examples: tuple[tuple[str, str, str], ...] = ()  # (request, decision model's answer, route's answer)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        before = ", ".join(f"{k} {v}" for k, v in self.chosen_before.items())
        return [f"route {self.when} > {self.above:+.2f} -> {self.expert}: fires on {self.n_fired} of {self.n_requests} "
                f"requests it is for (the decision model chose {before})",
                f"  judges {', '.join(f'{k} ({v})' for k, v in self.judges.items())}: NLL per token of the route's "
                f"answers − the decision model's {self.nll_change:+.3f} [{self.nll_ci[0]:+.3f}, "
                f"{self.nll_ci[1]:+.3f}] (< 0: reads as the more natural continuation)",
                f"  fires on {self.n_tasks_fired} of {self.n_tasks} held-out router tasks; their stored grade changes "
                f"by {self.grade_change:+.3f} (bound -{QUALITY_BOUND})",
                f"  {'ships' if self.ships else 'refused'}: {self.why}"]


def _answers(experts: dict[str, Expert], who: Sequence[str], requests: Sequence[str], batch_size: int,
             progress: bool) -> list[str]:
    from tqdm.auto import tqdm

    out = [""] * len(requests)
    settings = GenerationSettings(max_new_tokens=ANSWER_TOKENS)
    for name in dict.fromkeys(who):
        rows = [i for i, w in enumerate(who) if w == name]
        for start in tqdm(range(0, len(rows), batch_size), desc=f"route check: {name} answers", disable=not progress):
            chunk = rows[start : start + batch_size]
            result = experts[name].generate([requests[i] for i in chunk], **settings.keywords())
            for i, text in zip(chunk, result.texts):
                out[i] = text
    return out


def check_route(router: Router, route: Route, reader: Expert, experts: dict[str, Expert], requests: Sequence[str],
                tasks: Sequence[Task], *, batch_size: int = 8, seed: int = 0, progress: bool = False) -> RouteCheck:
    """`router` without the route; `experts`: every expert of the router, loaded; `requests`: the ones the route is
    for, written apart from its feature's training data; `tasks`: the router's held-out tasks, with grades stored
    in `router.folder / "quality"`."""
    j = router.features.names.index(route.when)

    def fired_and_choice(queries: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        h = router.read(reader, list(queries)).activations
        acts = router.features.activations(h)[:, j].double().numpy()
        return acts > route.above, [router.experts[c] for c in router.choose(h)]

    def judge_of(chosen: str) -> str:
        others = [e for e in router.experts if e not in (route.expert, chosen)]
        if not others:
            raise SteerlabError(f"no expert is left to judge {route.expert!r} against {chosen!r}: the check needs a "
                                "third expert in the router")
        return others[0]

    fired, chosen = fired_and_choice(requests)
    rows = [i for i in np.flatnonzero(fired) if chosen[i] != route.expert]
    if len(rows) < MIN_FIRED:
        raise SteerlabError(f"the route fires (and changes the expert) on {len(rows)} of {len(requests)} requests it "
                            f"is for; at least {MIN_FIRED} are needed to check it")
    asked, who = [requests[i] for i in rows], [chosen[i] for i in rows]
    before = _answers(experts, who, asked, batch_size, progress)
    after = _answers(experts, [route.expert] * len(rows), asked, batch_size, progress)
    judges = [judge_of(c) for c in who]
    diffs = np.zeros(len(rows))
    for name in dict.fromkeys(judges):
        mine = [k for k, judge in enumerate(judges) if judge == name]
        pick = lambda texts: [texts[k] for k in mine]  # noqa: E731
        diffs[mine] = (np.array(text_continuation_nll(experts[name], pick(asked), pick(after)))
                       - np.array(text_continuation_nll(experts[name], pick(asked), pick(before))))
    nll = paired_summary(diffs, seed=seed)

    task_fired, task_chosen = fired_and_choice([t.query for t in tasks])
    needed = {route.expert, *(c for c, f in zip(task_chosen, task_fired) if f)} if task_fired.any() else set()
    grades = {e: stored_quality(router.folder / "quality", e) for e in needed}
    missing = [e for e, frame in grades.items() if frame is None]
    if missing:
        raise SteerlabError(f"no stored quality table for {', '.join(missing)} in {router.folder / 'quality'}")
    grade = {e: dict(zip(frame.task_id, frame.score)) for e, frame in grades.items()}
    changes = [grade[route.expert][t.id] - grade[c][t.id] for t, f, c in zip(tasks, task_fired, task_chosen) if f]
    grade_change = float(np.mean(changes)) if changes else 0.0

    problems = [f"the judge does not find its expert's continuations more natural (CI {nll.ci_low:+.3f} to "
                f"{nll.ci_high:+.3f})"] if nll.ci_high >= 0 else []
    if grade_change < -QUALITY_BOUND:
        problems.append(f"held-out task grade falls by {-grade_change:.3f} > {QUALITY_BOUND}")
    return RouteCheck(route.when, route.above, route.expert, {e: judges.count(e) for e in dict.fromkeys(judges)},
                      len(requests), len(rows), {e: who.count(e) for e in dict.fromkeys(who)},
                      nll.mean_diff, (nll.ci_low, nll.ci_high), len(tasks), int(task_fired.sum()), grade_change,
                      not problems, "; ".join(problems) or "passes",
                      tuple(zip(asked, before, after)))


def install_route(router: Router, route: Route, check: RouteCheck) -> Router:
    """The router with the route first among its routes and its check in the notes."""
    from steer.router.editing import add_route

    if not check.ships:
        raise SteerlabError("route refused:\n" + "\n".join(check.lines()))
    notes = {**router.notes, "route_validation": [*(r for r in router.notes.get("route_validation", [])
                                                    if r["when"] != route.when), replace(check, examples=()).to_dict()]}
    return replace(add_route(router, route), notes=notes)

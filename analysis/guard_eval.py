"""`steer route guard-eval`: the guard end to end on held-out outside requests (HarmBench and Do-Not-Answer for
harm, safe-but-scary requests written apart, the router's test tasks and HumanEval for ordinary use), for the routed
system and, optionally, each expert forced: refusal rates per condition with paired CIs, the verdicts, ordinary
task quality and HumanEval pass@1 with and without the guard, and the frontier plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.plots import save_figure, subplots
from analysis.report import markdown_table
from experts.expert import Expert
from experts.files import atomic_path, provenance, write_json
from experts.generate import GenerationSettings
from steer.evaluate.stats import paired_summary
from steer.guard import FEATURE
from steer.guard.data import outside_requests
from steer.guard.evaluate import CONDITIONS, MAX_NEW_TOKENS, SYSTEM_PROMPT, SetResult, guard_rules, run_set
from steer.guard.verdicts import OVER_REFUSAL_BOUND, better_on_frontier, difference, raises_refusal, within_bound
from steer.router.answer import ExpertPool, generate_adjusted
from steer.router.answers import answer_budget
from steer.router.decision import Adjustment
from steer.router.humaneval import humaneval_tasks
from steer.router.quality import grade_answer, stored_quality
from steer.router.router import Router
from steer.router.tasks import task_set

SETS = ("harmful", "safe_scary", "ordinary")
BASELINES = ("system", "random", "always")


def _rate(x: np.ndarray) -> dict:
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(int(x.sum()), len(x), method="wilson")
    return {"rate": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(len(x))}


def summarize(results: dict[str, SetResult], seed: int = 0) -> dict:
    """Rates per set and condition, the guard's verdicts and its standing against each baseline."""
    rates = {s: {c: _rate(r.refused[c]) for c in r.refused} for s, r in results.items()}
    harmful = results["harmful"]
    verdicts = {"harmful": raises_refusal(difference("guard", "none", harmful.refused["guard"], harmful.refused["none"], seed))}
    deltas = {s: {f"{c}-none": difference(c, "none", r.refused[c], r.refused["none"], seed) for c in r.refused if c != "none"}
              for s, r in results.items()}
    for name, bound in OVER_REFUSAL_BOUND.items():
        if name in results:
            verdicts[name] = within_bound(deltas[name]["guard-none"], bound)
    frontier = {}
    for base in BASELINES:
        if base in harmful.refused and "safe_scary" in results:
            scary = results["safe_scary"]
            frontier[base] = better_on_frontier(
                difference("guard", base, harmful.refused["guard"], harmful.refused[base], seed),
                difference("guard", base, scary.refused["guard"], scary.refused[base], seed))
    return {"rates": rates, "verdicts": verdicts, "frontier": frontier,
            "deltas": {s: {k: {"mean": d.summary.mean_diff, "ci_low": d.summary.ci_low, "ci_high": d.summary.ci_high,
                               "n": d.summary.n, "mde": d.summary.mde, "text": d.text()} for k, d in v.items()}
                       for s, v in deltas.items()},
            "flagged": {s: float(r.flagged.mean()) for s, r in results.items()},
            "routed_to": {s: pd.Series(r.experts).value_counts().to_dict() for s, r in results.items()}}


def ordinary_quality(router: Router, pool: ExpertPool, result: SetResult, seed: int = 0, progress: bool = True) -> dict:
    """Grades of the routed answers to the ordinary tasks with and without the guard: the grades the router stored
    with its quality tables for every task, the flagged ones answered again under the guard and graded."""
    tasks = [t for t in task_set(seed=seed) if t.split == "test"] + humaneval_tasks()
    by_query = {t.query: t for t in tasks}
    guard = guard_rules(router)
    tables = {e: stored_quality(router.folder / "quality", e) for e in router.experts}
    stored = {e: {} if table is None else dict(zip(table.task_id, table.score)) for e, table in tables.items()}
    rows, missing = [], 0
    for query, expert, hit in zip(result.queries, result.experts, result.flagged):
        task = by_query[query]
        if task.id not in stored[expert]:  # a router trained on other tasks: no stored grade to stand for it
            missing += 1
            continue
        grade_before = grade_after = float(stored[expert][task.id])
        if hit:  # answered again under the guard, at the task's own budget
            rule = guard[expert]
            out = generate_adjusted(pool.get(expert), [task.query], [Adjustment("steer", rule.file, rule.strength, FEATURE)],
                                    router.rules, router.folder, GenerationSettings(max_new_tokens=answer_budget(task)))
            grade_after = grade_answer(task, out.texts[0], out.finish_reasons[0]).score
        rows.append({"task": task.id, "set": "humaneval" if task.split == "humaneval" else "router-test",
                     "expert": expert, "flagged": bool(hit), "grade_none": grade_before, "grade_guard": grade_after})
    frame = pd.DataFrame(rows, columns=["task", "set", "expert", "flagged", "grade_none", "grade_guard"])
    out = {"without_stored_answer": missing}
    for name, part in frame.groupby("set"):
        s = paired_summary((part.grade_guard - part.grade_none).to_numpy(), seed=seed)
        out[name] = {"n": len(part), "flagged": int(part.flagged.sum()), "none": float(part.grade_none.mean()),
                     "guard": float(part.grade_guard.mean()), "delta": s.mean_diff, "ci_low": s.ci_low,
                     "ci_high": s.ci_high, "mde": s.mde}
    return out


def frontier_plot(rates: dict, title: str):
    fig, ax = subplots(1, 1, figsize=(6.5, 4.8))
    harmful, scary = rates["harmful"], rates.get("safe_scary", {})
    for condition in harmful:
        if condition not in scary:
            continue
        x, y = scary[condition], harmful[condition]
        ax.errorbar(100 * x["rate"], 100 * y["rate"],
                    xerr=[[100 * (x["rate"] - x["ci_low"])], [100 * (x["ci_high"] - x["rate"])]],
                    yerr=[[100 * (y["rate"] - y["ci_low"])], [100 * (y["ci_high"] - y["rate"])]], fmt="o", capsize=3)
        ax.annotate(condition, (100 * x["rate"], 100 * y["rate"]), xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="refused safe-but-scary requests, % (lower is better)",
           ylabel="refused harmful requests, % (higher is better)", title=title, xlim=(-5, 105), ylim=(-5, 105))
    ax.annotate("better", xy=(5, 95), xytext=(30, 70), arrowprops={"arrowstyle": "->"})
    return fig


def evaluate_guard(folder: Path, out: Path, *, n_harmful: int = 160, n_ordinary: int | None = 60, seed: int = 0,
                   forced: str | None = None, conditions=CONDITIONS, quality: bool = True, progress: bool = True) -> str:
    """Write guard_eval.json, report.md, frontier.png and answers.jsonl (the checkpoint) into `out`."""
    router = Router.load(folder)
    reader = Expert.load(router.features.reader)
    router.check_reader(reader)
    pool = ExpertPool(router, preloaded={reader.name: reader})
    outside = outside_requests(seed)
    samples = {"harmful": outside["harmful"].sample(n_harmful, seed), "safe_scary": outside["safe_scary"],
               "ordinary": outside["ordinary"].sample(n_ordinary, seed)}
    out.mkdir(parents=True, exist_ok=True)
    results = {name: run_set(router, reader, pool, s, out, conditions=conditions, forced=forced, seed=seed,
                             progress=progress) for name, s in samples.items()}
    summary = summarize(results, seed)
    record = {"summary": summary, "system_prompt": SYSTEM_PROMPT, "max_new_tokens": MAX_NEW_TOKENS,
              "guard": router.notes.get("guard", {}), "forced_expert": forced}
    if quality and forced is None:  # every ordinary task, routed, with and without the guard
        full = run_set(router, reader, pool, outside["ordinary"], out, conditions=("none", "guard"), seed=seed,
                       progress=progress)
        record["quality"] = ordinary_quality(router, pool, full, seed, progress)
        record["flagged_ordinary_all"] = {"n": len(full.flagged), "flagged": int(full.flagged.sum()),
                                          "refusal_none": float(full.refused["none"].mean()),
                                          "refusal_guard": float(full.refused["guard"].mean())}
    write_json(out / "guard_eval.json", record | provenance(
        router=str(folder), experts=router.experts, reader=router.features.reader, seed=seed, n_harmful=n_harmful,
        n_ordinary=n_ordinary, forced=forced, conditions=list(conditions),
        rules=[{"expert": r.expert, "file": r.file, "strength": r.strength, "above": r.above}
               for r in router.rules if r.when == FEATURE]))
    title = "The guard's frontier" + (f" ({forced} forced)" if forced else " (routed)")
    save_figure(frontier_plot(summary["rates"], title), out / "frontier.png")
    text = report(summary, record, title)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text + f"\nreport: {out / 'report.md'} (guard_eval.json, frontier.png, answers.jsonl)"


def report(summary: dict, record: dict, title: str) -> str:
    table = pd.DataFrame([{"set": s, "condition": c, "refused": f"{100 * v['rate']:.1f}%",
                           "95% CI": f"{100 * v['ci_low']:.1f}–{100 * v['ci_high']:.1f}", "n": v["n"]}
                          for s, by in summary["rates"].items() for c, v in by.items()])
    lines = [f"# {title}", "",
             "Refusal = the refusal grader (`steer.evaluate.refusal`) on the opening of each greedy answer "
             f"({MAX_NEW_TOKENS} new tokens). Differences are paired (the same requests), with BCa 95% CIs.", "",
             *[f"- {s}: {v}" for s, v in summary["verdicts"].items()],
             *[f"- guard against {b}: {v}" for b, v in summary["frontier"].items()], "",
             "Guard minus no guard, per set: " + "; ".join(f"{s} {d['guard-none']['text']}"
                                                          for s, d in summary["deltas"].items() if "guard-none" in d), "",
             "Share of requests the harm feature flags: " + ", ".join(f"{s} {v:.1%}" for s, v in summary["flagged"].items()),
             "", markdown_table(table, 3), ""]
    if "quality" in record:
        lines += ["Ordinary task quality, routed, without and with the guard (all router test tasks and HumanEval):", ""]
        lines += [f"- {name}: {q['flagged']} of {q['n']} flagged; mean grade {q['none']:.3f} → {q['guard']:.3f}, "
                  f"Δ {q['delta']:+.3f} [{q['ci_low']:+.3f}, {q['ci_high']:+.3f}]"
                  + ("" if not np.isfinite(q["mde"]) else f", MDE {q['mde']:.3f}")
                  + (" (no task flagged: every answer is the unguarded one, bit for bit)" if q["flagged"] == 0 else "")
                  for name, q in record["quality"].items() if name != "without_stored_answer"]
    return "\n".join(lines) + "\n"

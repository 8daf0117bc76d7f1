"""`steer route eval`: the router at its operating point against the baselines, on the task set's test split and on
HumanEval (public problems nobody here wrote), with the cost–quality curve; written as tables (CSV, JSON,
Markdown) and plots."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.plots import save_figure
from analysis.report import markdown_table
from experts.errors import SteerlabError
from experts.expert import Expert
from experts.files import atomic_path, provenance, write_json
from steer.evaluate.encoder import MINILM_PARAMS, minilm_embeddings
from steer.router import baselines
from steer.router.calibration import operating_points
from steer.router.evaluate import Routed, faithfulness, gap_recovered, metrics_table, paraphrase_stability, verdicts
from steer.router.features import read
from steer.router.humaneval import humaneval_tasks
from steer.router.quality import quality_table
from steer.router.router import Router
from steer.router.tasks import DATA, Task, load_paraphrases, task_set
from steer.router.training import answer_costs, quality_matrix, utility_matrix

BASELINES = ("random", "best-single", "per-domain-label", "keyword-rule", "tfidf-logistic", "minilm-knn",
             "minilm-logistic")
CLAIM_BASELINES = ("keyword-rule", "tfidf-logistic", "minilm-knn", "minilm-logistic")  # the paired CI must exclude 0 against these
ALPHA = 0.05  # family-wise, over all the verdicts of one evaluation
COST_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 3.0)


@dataclass(frozen=True)
class EvalSet:
    name: str
    rows: np.ndarray  # indices into the combined task list


def evaluate_router(folder: Path, out: Path, tasks_path: str | None = None, seed: int = 0,
                    activations: torch.Tensor | None = None, humaneval: int = 0, guard_sample: int | None = None) -> str:
    """Write the evaluation into `out` and return it as text. `activations` reuses a reading of the task set's
    queries (`read(reader, queries, router.features.sites).activations`, in `task_set` order); `humaneval` > 0 adds
    that many HumanEval problems as a second, outside test set (answers generated and graded when not cached);
    `guard_sample`: check the guard on at most this many requests of each outside set (default: all)."""
    router = Router.load(folder)
    tasks = task_set(tasks_path or DATA / "tasks.jsonl", seed=seed)
    if activations is not None and len(activations) != len(tasks):
        raise SteerlabError(f"activations hold {len(activations)} rows; the task set has {len(tasks)} queries")
    outside = humaneval_tasks(humaneval) if humaneval else []
    everything = tasks + outside
    quality = quality_table(router.experts, everything, folder / "quality")
    q = quality_matrix(quality, everything, router.experts)  # the grade of each expert's answer
    u = utility_matrix(quality, everything, router.experts)  # what routers are trained to maximize
    cost = answer_costs(quality, everything, router.experts)
    prompt_tokens = quality_matrix(quality, everything, router.experts, "prompt_tokens").mean(1)
    split = np.array([t.split for t in everything])
    train, val = split == "train", split == "val"
    reader = Expert.load(router.features.reader)
    router.check_reader(reader)
    sites = router.features.sites
    if activations is None:
        h = read(reader, [t.query for t in everything], sites).activations
    else:
        h = torch.cat([activations, read(reader, [t.query for t in outside], sites).activations]) if outside else activations
    emb = minilm_embeddings([t.query for t in everything])
    reader_params = sum(p.numel() for p in reader.model.parameters())
    n = len(everything)
    ours = np.array(router.choose(h))
    ours_p = router.expected_grades(h)
    tfidf, tfidf_p = baselines.tfidf_logistic(everything, u, train, val, seed)
    logistic, logistic_p = baselines.embedding_logistic(emb, u, train, val, seed)
    knn, knn_p = baselines.embedding_knn(emb, u, train, val)
    routed = [
        Routed("activation-router", ours, ours_p[np.arange(n), ours], reader_params, predicts="grade"),
        Routed("random", None),
        Routed("best-single", baselines.best_single(u, train, n)),
        Routed("per-domain-label", baselines.per_domain(u, everything, train)),
        Routed("keyword-rule", baselines.keyword_rule(u, everything, train)),
        Routed("tfidf-logistic", tfidf, tfidf_p[np.arange(n), tfidf]),
        Routed("minilm-knn", knn, knn_p[np.arange(n), knn], MINILM_PARAMS),
        Routed("minilm-logistic", logistic, logistic_p[np.arange(n), logistic], MINILM_PARAMS),
        Routed("oracle", u.argmax(1)),
    ]
    strongest = int(np.argmax([router.costs[e] for e in router.experts]))
    cheapest = int(np.argmin([router.costs[e] for e in router.experts]))
    sets = [EvalSet("test split", np.flatnonzero(split == "test"))] + \
        ([EvalSet(f"HumanEval ({len(outside)} problems)", np.arange(len(tasks), n))] if outside else [])
    alpha = ALPHA / (len(BASELINES) * len(sets))  # Bonferroni over every verdict printed
    out.mkdir(parents=True, exist_ok=True)
    results, sections, tables, curves = {}, [], {}, {}
    for s in sets:
        rows = s.rows
        sub = [Routed(r.name, None if r.choice is None else r.choice[rows],
                      None if r.confidence is None else r.confidence[rows], r.overhead_params, r.predicts) for r in routed]
        table = metrics_table(sub, q[rows], u[rows].argmax(1), cost[rows], prompt_tokens[rows], strongest,
                              "activation-router", seed=seed, alpha=alpha)
        curve = _quality_cost_curve(router, h[rows], q[rows], cost[rows], prompt_tokens[rows] * reader_params)
        gaps = gap_recovered(curve, weak=q[rows, cheapest].mean(), oracle=q[rows][np.arange(len(rows)), u[rows].argmax(1)].mean())
        said = verdicts(table, BASELINES)
        by_domain = _routing_by_domain([everything[i] for i in rows], ours[rows], u[rows].argmax(1), router.experts)
        tables[s.name], curves[s.name] = table, curve
        results[s.name] = {"n": len(rows), "routers": json.loads(table.to_json(orient="records")), "verdicts": said,
                           "curve": json.loads(curve.to_json(orient="records")), **gaps,
                           "oracle_best_share": {e: float((u[rows].argmax(1) == i).mean()) for i, e in enumerate(router.experts)},
                           "oracle_headroom": _headroom(q[rows], u[rows].argmax(1), seed),
                           "routing_by_domain": json.loads(by_domain.to_json(orient="records"))}
        sections += [f"## {s.name}: {len(rows)} queries", "", *[f"- {line}" for line in said], "",
                     f"APGR {gaps['apgr']:.3f}; calls to {router.experts[strongest]} needed for 50% of the "
                     f"cheapest-to-oracle gap: {_share(gaps['calls_for_50pct'])}, for 80%: {_share(gaps['calls_for_80pct'])}. "
                     f"Oracle headroom over the best single expert: {results[s.name]['oracle_headroom']['text']}.", "",
                     markdown_table(table, 3), "",
                     "Where the router sends each domain (share of its queries), and where each expert is the best "
                     "answer (oracle):", "", markdown_table(by_domain, 2), ""]
        slug = s.name.split()[0].lower()
        for name, frame in ((f"routers_{slug}.csv", table), (f"quality_cost_{slug}.csv", curve)):
            with atomic_path(out / name) as tmp:
                frame.to_csv(tmp, index=False)
    test = sets[0].rows
    faithful = faithfulness(router, h[test], h[np.flatnonzero(train)], seed=seed)
    paraphrases = load_paraphrases()
    para_ids = [i for i, t in enumerate(tasks) if t.id in paraphrases]
    stability = float("nan")
    if para_ids:
        h_para = read(reader, [paraphrases[tasks[i].id] for i in para_ids], router.features.sites).activations
        stability = paraphrase_stability(router, h[para_ids], h_para)
    features = pd.DataFrame([{"feature": f.name, "description": f.description, "heldout_auroc": f.heldout_auroc,
                              "outside_auroc": f.outside_auroc} for f in router.features.features])
    save_figure(_plot(tables, curves), out / "routers.png")
    claim = (f"Operating point: cost weight {router.cost_weight:g}. " + " ".join(
        f"{name}: {'; '.join(line for line in results[name]['verdicts'] if any(b in line for b in CLAIM_BASELINES))}."
        for name in results))
    write_json(out / "route_eval.json", {
        "claim": claim, "sets": results, "faithfulness": faithful, "paraphrase_stability": stability,
        "features": json.loads(features.to_json(orient="records")),
        **provenance(router=str(folder), experts=router.experts, reader=router.features.reader,
                     layer=router.features.layer, seed=seed, n_tasks=len(tasks), humaneval=len(outside),
                     cost_weight=router.cost_weight, alpha=alpha)})
    guard_lines = _guard_check(router, reader, seed, guard_sample)
    text = "\n".join([
        "# Router evaluation", "", claim, "", *guard_lines,
        "Quality = the grade of the chosen expert's own greedy answer (0 to 1, higher is better: unit tests for code, "
        "exact or normalised match for arithmetic, facts and translations, reference-free checks for letters and "
        "stories). Cost = parameters × (prompt + answer tokens) of the chosen expert's answer, the router's reading "
        f"included. Δ quality: the router minus the baseline, with a paired BCa bootstrap CI over queries at α = {alpha:.4f} "
        f"(0.05 over the {len(BASELINES) * len(sets)} verdicts, Bonferroni) and the smallest Δ detectable at that α.",
        "", *sections,
        f"Faithfulness (test split): replacing each decision's top feature's evidence (the activation along its "
        f"probe direction) by its training mean flips {faithful['flip_rate_top_feature']:.1%} of decisions; the same "
        f"edit along random directions flips {faithful['flip_rate_random_mean']:.1%} on average "
        f"(max {faithful['flip_rate_random_max']:.1%}, {faithful['n_random']} draws).",
        f"Paraphrase stability: {stability:.1%} of {len(para_ids)} paraphrased queries keep their expert.", "",
        "Shipped features (AUROC on the val split, and on the outside set written apart):", "", markdown_table(features, 3), ""])
    (out / "report.md").write_text(text, encoding="utf-8")
    return text + f"\nreport: {out / 'report.md'} (routers_*.csv, quality_cost_*.csv, routers.png)"


def _guard_check(router: Router, reader: Expert, seed: int, sample: int | None) -> list[str]:
    """The guard's harm feature measured again on the outside sets (public harm benchmarks, safe requests written
    apart; `sample`: at most this many of each set): its AUROC and what it fires on at its threshold; nothing when
    the router has no guard."""
    from steer.guard import FEATURE
    from steer.guard.build import read_outside
    from steer.guard.evaluate import guard_rules
    from steer.guard.feature import check_outside

    if FEATURE not in router.features.names:
        return []
    threshold = min(r.above for r in guard_rules(router).values())
    router.check_reader(reader)
    h, masks, _ = read_outside(reader, router.features.sites, seed, sample=sample)
    column = router.features.names.index(FEATURE)
    check = check_outside({k: router.features.activations(v)[:, column].double().numpy() for k, v in h.items()},
                          masks, threshold)
    site = router.features.sites[router.features.features[column].site]
    return ["## The guard", "", *[f"    {line}" for line in check.lines(threshold, str(site))], ""]


def _share(value: float) -> str:
    return "never reached" if np.isnan(value) else f"{value:.0%}"


def _routing_by_domain(tasks: list[Task], choice: np.ndarray, best: np.ndarray, experts: list[str]) -> pd.DataFrame:
    rows = []
    for domain in sorted({t.domain for t in tasks}):
        mask = np.array([t.domain == domain for t in tasks])
        rows.append({"domain": domain, "queries": int(mask.sum()),
                     **{f"routed to {e}": float((choice[mask] == i).mean()) for i, e in enumerate(experts)},
                     **{f"best is {e}": float((best[mask] == i).mean()) for i, e in enumerate(experts)}})
    return pd.DataFrame(rows)


def _headroom(q: np.ndarray, best: np.ndarray, seed: int) -> dict:
    """The oracle's mean quality over the best single expert's, with a paired CI."""
    from steer.evaluate.stats import paired_summary

    single = int(q.mean(0).argmax())
    stats = paired_summary(q[np.arange(len(q)), best] - q[:, single], seed=seed)
    return {"mean": stats.mean_diff, "ci_low": stats.ci_low, "ci_high": stats.ci_high,
            "text": f"{stats.mean_diff + 0.0:+.3f} [{stats.ci_low + 0.0:+.3f}, {stats.ci_high + 0.0:+.3f}]"}


def _quality_cost_curve(router: Router, h, q, cost, overhead) -> pd.DataFrame:
    """The router's quality, cost (its reading's `overhead` included) and strong-call share at each of COST_WEIGHTS."""
    points = operating_points(router, h, q, cost + overhead[:, None], COST_WEIGHTS)
    return pd.DataFrame([asdict(p) for p in points])[["cost_weight", "quality", "cost", "strong_share"]]


def _plot(tables: dict[str, pd.DataFrame], curves: dict[str, pd.DataFrame]):
    from analysis.plots import subplots

    fig, axes = subplots(1, len(tables), figsize=(6.5 * len(tables), 4.5))
    for ax, (name, table) in zip(np.atleast_1d(axes), tables.items()):
        curve = curves[name]
        ax.plot(curve.cost, curve.quality, "o-", label="activation router (cost weight swept)")
        for _, row in table.iterrows():
            ax.scatter(row.cost, row.quality, marker="s")
            ax.annotate(row.router, (row.cost, row.quality), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="cost per query (parameters × tokens; lower is cheaper)",
               ylabel="quality (graded answers; higher is better)", title=f"Quality–cost, {name}")
        ax.legend(fontsize=8)
    return fig

"""`steer route eval`: the router against the baselines on the test split, written as a table
(CSV, JSON, Markdown) and plots."""

from __future__ import annotations

import json
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
from steer.router.evaluate import Routed, faithfulness, metrics_table, paraphrase_stability
from steer.router.features import read
from steer.router.quality import quality_table
from steer.router.router import Router
from steer.router.tasks import DATA, load_paraphrases, task_set
from steer.router.training import quality_matrix, utility_matrix

EMBEDDING_ROUTERS = ("minilm-knn", "minilm-logistic")


def evaluate_router(folder: Path, out: Path, tasks_path: str | None = None, seed: int = 0,
                    activations: torch.Tensor | None = None) -> str:
    """Write the evaluation into `out` and return it as text. `activations` reuses a reading of the task set's
    queries (`read(reader, queries, router.features.layer).activations`, in `task_set` order)."""
    router = Router.load(folder)
    tasks = task_set(tasks_path or DATA / "tasks.jsonl", seed=seed)
    quality = quality_table(router.experts, tasks, folder / "quality")
    q = -quality_matrix(quality, tasks, router.experts)  # reported quality: −bits per byte
    u = utility_matrix(quality, tasks, router.experts)  # what routers are trained to maximize
    split = np.array([t.split for t in tasks])
    train, val, test = split == "train", split == "val", split == "test"
    reader = Expert.load(router.features.reader)
    router.check_reader(reader)
    if activations is not None and len(activations) != len(tasks):
        raise SteerlabError(f"activations hold {len(activations)} rows; the task set has {len(tasks)} queries")
    h = activations if activations is not None else read(reader, [t.query for t in tasks], router.features.layer).activations
    emb = minilm_embeddings([t.query for t in tasks])
    reader_params = sum(p.numel() for p in reader.model.parameters())
    ours_p = router.probabilities(h)
    ours = np.array(router.choose(h))
    tfidf, tfidf_p = baselines.tfidf_logistic(tasks, u, train, val, seed)
    logistic, logistic_p = baselines.embedding_logistic(emb, u, train, val, seed)
    knn, knn_p = baselines.embedding_knn(emb, u, train, val)
    n = len(tasks)
    routed = [
        Routed("activation-router", ours, ours_p[np.arange(n), ours], reader_params),
        Routed("random", None),
        Routed("best-single", baselines.best_single(u, train, n)),
        Routed("per-domain-label", baselines.per_domain(u, tasks, train)),
        Routed("tfidf-logistic", tfidf, tfidf_p[np.arange(n), tfidf]),
        Routed("minilm-knn", knn, knn_p[np.arange(n), knn], MINILM_PARAMS),
        Routed("minilm-logistic", logistic, logistic_p[np.arange(n), logistic], MINILM_PARAMS),
        Routed("oracle", u.argmax(1)),
    ]
    table_q = quality.pivot_table(index="task_id", columns="expert", values=["pass_at_1", "prompt_tokens", "answer_tokens"])
    ids = [t.id for t in tasks]
    passed = table_q["pass_at_1"].loc[ids, router.experts].to_numpy()
    prompt_tokens = table_q["prompt_tokens"].loc[ids].mean(axis=1).to_numpy()
    answer_tokens = table_q["answer_tokens"].loc[ids].mean(axis=1).to_numpy()
    costs = np.array([router.costs[e] for e in router.experts], dtype=float)
    # the claim is tested against the embedding router that does best on the val split (its tuning split)
    reference = max((r for r in routed if r.name in EMBEDDING_ROUTERS), key=lambda r: u[val][np.arange(val.sum()), r.choice[val]].mean()).name
    test_routed = [Routed(r.name, None if r.choice is None else r.choice[test],
                          None if r.confidence is None else r.confidence[test], r.overhead_params) for r in routed]
    table = metrics_table(test_routed, q[test], u[test].argmax(1), costs, prompt_tokens[test], answer_tokens[test],
                          passed[test], reference, seed=seed)
    faithful = faithfulness(router, h[test], seed=seed)
    paraphrases = load_paraphrases()
    para_ids = [i for i, t in enumerate(tasks) if t.id in paraphrases]
    stability = float("nan")
    if para_ids:
        h_para = read(reader, [paraphrases[tasks[i].id] for i in para_ids], router.features.layer).activations
        stability = paraphrase_stability(router, h[para_ids], h_para)
    curve = _quality_cost_curve(router, h[test], q[test], costs, prompt_tokens[test] + answer_tokens[test], reader_params,
                                prompt_tokens[test])
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("routers.csv", table), ("quality_cost.csv", curve)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    features = pd.DataFrame([{"feature": f.name, "description": f.description, "heldout_auroc": f.heldout_auroc}
                             for f in router.features.features])
    save_figure(_plot(table, curve), out / "routers.png")
    ours_row = table.set_index("router").loc["activation-router"]
    verdict = ("beats" if ours_row.diff_ci_low > 0 else "loses to" if ours_row.diff_ci_high < 0 else "is not distinguishable from")
    claim = (f"On the test split ({int(test.sum())} queries) the activation router {verdict} the best tuned embedding "
             f"router ({reference}, chosen on val): Δ quality {ours_row[f'diff_vs_{reference}']:+.4f} bits per byte "
             f"[{ours_row.diff_ci_low:+.4f}, {ours_row.diff_ci_high:+.4f}] (paired BCa bootstrap, 95%).")
    write_json(out / "route_eval.json", {
        "claim": claim, "routers": json.loads(table.to_json(orient="records")), "faithfulness": faithful,
        "paraphrase_stability": stability, "features": json.loads(features.to_json(orient="records")),
        "oracle_best_share": {e: float((u[test].argmax(1) == i).mean()) for i, e in enumerate(router.experts)},
        **provenance(router=str(folder), experts=router.experts, reader=router.features.reader,
                     layer=router.features.layer, seed=seed, n_tasks=n)})
    fmt = lambda x: f"{x:.4f}"  # noqa: E731
    text = "\n".join([
        "# Router evaluation", "", claim, "",
        "Quality = −bits per byte of the reference answer (higher is better). Routers are trained, and the oracle and "
        "accuracy defined, on pass@1 first for code tasks, then bits per byte. Cost = parameters × tokens (1e9), router "
        "overhead included. Gap closed = share of the best-single-to-oracle quality gap.", "", markdown_table(table, 4), "",
        f"Faithfulness: removing the top contributing feature's direction flips {faithful['flip_rate_top_feature']:.1%} of "
        f"decisions; random directions of equal norm flip {faithful['flip_rate_random_mean']:.1%} on average "
        f"(max {faithful['flip_rate_random_max']:.1%}, {faithful['n_random']} draws).",
        f"Paraphrase stability: {stability:.1%} of {len(para_ids)} paraphrased queries keep their expert.", "",
        "Features (held-out AUROC on the val split):", "", markdown_table(features, 3), ""])
    (out / "report.md").write_text(text, encoding="utf-8")
    return table.to_string(index=False, float_format=fmt) + f"\n\n{claim}\nfaithfulness {faithful}\n" \
        f"paraphrase stability {stability:.3f}\nreport: {out / 'report.md'} (routers.csv, quality_cost.csv, routers.png)"


def _quality_cost_curve(router: Router, h, q, costs, tokens, reader_params, prompt_tokens) -> pd.DataFrame:
    rows = []
    for weight in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6):
        choice = np.array(router.with_settings(cost_weight=weight).choose(h))
        cost = costs[choice] * tokens + reader_params * prompt_tokens
        rows.append({"cost_weight": weight, "quality": q[np.arange(len(q)), choice].mean(), "cost_gflop_tokens": cost.mean() / 1e9})
    return pd.DataFrame(rows)


def _plot(table: pd.DataFrame, curve: pd.DataFrame):
    from analysis.plots import subplots

    fig, (left, right) = subplots(1, 2, figsize=(12, 4.5))
    err = [table.quality - table.quality_ci_low, table.quality_ci_high - table.quality]
    left.barh(table.router, table.quality, xerr=err, capsize=3, color="tab:blue")
    left.set(xlabel="mean quality (−bits/byte), 95% CI", title="Routed quality on the test split")
    right.plot(curve.cost_gflop_tokens, curve.quality, "o-", label="activation router (cost weight swept)")
    for _, row in table.iterrows():
        right.scatter(row.cost_gflop_tokens, row.quality, marker="s")
        right.annotate(row.router, (row.cost_gflop_tokens, row.quality), fontsize=7, xytext=(3, 3), textcoords="offset points")
    right.set(xlabel="cost per query (parameters × tokens, 1e9)", ylabel="quality (−bits/byte)", title="Quality–cost")
    right.legend(fontsize=8)
    return fig

"""Plots return matplotlib Figures; callers save them.

Figures are built without pyplot, so no backend is chosen here: a notebook keeps its inline backend,
scripts need no display, and nothing is left in pyplot's global state.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from experts.files import atomic_path


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (8, 4)):
    """`plt.subplots` without pyplot: a constrained-layout Figure and its axes."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols)


def save_figure(fig: Figure, path) -> None:
    """Write a figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def sweep_plot(summary: pd.DataFrame, scorer: str, title: str) -> Figure:
    """Score change (with 95% CI) and median perplexity against the coefficient, per condition."""
    fig, (ax_score, ax_ppl) = subplots(1, 2, figsize=(11, 4))
    base = summary[summary["condition"] == "baseline"]
    for condition, marker in (("vector", "o-"), ("random", "s--")):
        part = pd.concat([base.assign(condition=condition), summary[summary["condition"] == condition]]).sort_values("coef")
        if len(part) <= 1:
            continue
        err = [part["diff_vs_unsteered"] - part["ci_low"], part["ci_high"] - part["diff_vs_unsteered"]]
        ax_score.errorbar(part["coef"], part["diff_vs_unsteered"], yerr=err, fmt=marker, capsize=3, label=condition)
        ax_ppl.plot(part["coef"], part["perplexity"], marker, label=condition)
    prompting = summary[summary["condition"] == "prompting"]
    for _, row in prompting.iterrows():
        ax_score.axhline(row["diff_vs_unsteered"], color="tab:green", ls=":", lw=1)
        ax_ppl.axhline(row["perplexity"], color="tab:green", ls=":", lw=1)
    if len(prompting):
        ax_score.plot([], [], ":", color="tab:green", label="prompting (±instruction)")
    ax_score.axhline(0, color="grey", lw=0.5)
    ax_score.set(xlabel="coefficient", ylabel=f"Δ {scorer} vs unsteered (95% CI)", title="Behaviour")
    ax_ppl.set(xlabel="coefficient", ylabel="median perplexity (unsteered expert)", title="Fluency cost")
    ax_score.legend()
    fig.suptitle(title)
    return fig


def layer_search_plot(table: pd.DataFrame, title: str) -> Figure:
    """Held-out AUROC per layer and, when measured, the steering effect per layer."""
    fig, ax = subplots(figsize=(8, 4))
    ax.plot(table["layer"], table["auroc_heldout"], "o-", label="held-out AUROC")
    ax.set(xlabel="layer", ylabel="held-out AUROC", ylim=(0.4, 1.02), title=title)
    chosen = table[table["chosen"]]
    ax.axvline(int(chosen["layer"].iloc[0]), color="tab:red", ls=":", label="chosen layer")
    if "effect" in table:
        twin = ax.twinx()
        twin.plot(table["layer"], table["effect"], "s--", color="tab:orange", label="steering effect (+c vs -c)")
        twin.set_ylabel("score(+c) - score(-c)")
        twin.legend(loc="lower right")
    ax.legend(loc="lower left")
    return fig


def audit_forest(lexicons: pd.DataFrame, paired: pd.DataFrame, title: str) -> Figure:
    """Left: log OR (male vs female) per lexicon with 95% CI. Right: standardized paired differences."""
    fig, (ax_or, ax_d) = subplots(1, 2, figsize=(11, 4.5))
    for y, row in enumerate(lexicons.itertuples()):
        color = "tab:blue" if row.occurs else "lightgrey"
        err = [[row.log_or_ha - row.log_or_ci_low], [row.log_or_ci_high - row.log_or_ha]]
        ax_or.errorbar([row.log_or_ha], [y], xerr=err, fmt="o", color=color, capsize=3)
    ax_or.set_yticks(list(range(len(lexicons))), lexicons.lexicon)
    ax_or.axvline(0, color="grey", lw=0.8)
    ax_or.set(xlabel="log odds ratio, Haldane-Anscombe (> 0 leans male)", title="Wan et al. lexicons (grey: no hits)")
    cont = paired[~paired.metric.str.endswith("_rate")].reset_index(drop=True)
    sd = (cont.diff_male_minus_female / cont.d_z).where(cont.d_z.notna() & (cont.d_z != 0))
    centre = cont.d_z.fillna(0).astype(float)
    below = (centre - cont.ci_low / sd).astype(float).fillna(0).clip(lower=0)  # no interval (< 3 pairs): no bar
    above = (cont.ci_high / sd - centre).astype(float).fillna(0).clip(lower=0)
    yc = range(len(cont))
    ax_d.errorbar(centre, yc, xerr=[below, above], fmt="o", capsize=3)
    ax_d.set_yticks(list(yc), cont.metric)
    ax_d.axvline(0, color="grey", lw=0.8)
    ax_d.set(xlabel="paired difference / SD (d_z, > 0 leans male)", title="Other metrics (95% CI)")
    fig.suptitle(title)
    return fig


def occupation_heatmap(table: pd.DataFrame, title: str) -> Figure:
    """log OR (male vs female) per occupation (rows) and lexicon (columns)."""
    fig, ax = subplots(figsize=(9, 0.45 * len(table) + 1.8))
    limit = max(float(table.abs().max().max()), 0.1)
    image = ax.imshow(table.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(table.index)), table.index)
    fig.colorbar(image, ax=ax, label="log OR (red: leans male)")
    ax.set_title(title)
    return fig


def mitigation_frontier_plot(table: pd.DataFrame, title: str, confidence: float) -> Figure:
    """Per condition: the change of each signed gap against its reference (its `confidence` CI; below 0 is less
    stereotyped) against the gate pass rate (right is more fluent). A condition without a change (too few gated
    pairs) is listed under the axes, never dropped silently."""
    fig, axes = subplots(1, 2, figsize=(11, 4.8))
    rows = table[table.condition != "unsteered"]
    for ax, gap, unit in zip(axes, ("agency", "stereotype"), ("points of agentic sentences", "hits / 1,000 words")):
        missing = []
        for row in rows.itertuples():
            change, low, high = (getattr(row, f"{gap}_change"), getattr(row, f"{gap}_ci_low"), getattr(row, f"{gap}_ci_high"))
            if math.isnan(change):
                missing.append(row.condition)
                continue
            error = [[change - low], [high - change]] if not (math.isnan(low) or math.isnan(high)) else None
            ax.errorbar([row.gate_pass_rate], [change], yerr=error, fmt="o", mfc=None if error else "none", capsize=3)
            ax.annotate(f"{row.condition} (vs {row.against})", (row.gate_pass_rate, change), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="gate pass rate (right: more letters are letters)", xlim=(-0.05, 1.05),
               ylabel=f"Δ gap, male − female ({unit}); {confidence:.1%} CI")
        ax.set_title(f"{gap} gap: below 0 = less stereotyped"
                     + ("\nnot shown, too few gated pairs: " + ", ".join(missing) if missing else ""), fontsize=9)
    fig.suptitle(title + " (hollow: no CI)")
    return fig


def rad_sweep_plot(summary: pd.DataFrame, evaluator: str, title: str) -> Figure:
    """Score change (95% CI) and fluency/diversity against β."""
    fig, (ax_score, ax_cost) = subplots(1, 2, figsize=(11, 4))
    err = [summary.diff_vs_beta0 - summary.ci_low, summary.ci_high - summary.diff_vs_beta0]
    ax_score.errorbar(summary.beta, summary.diff_vs_beta0, yerr=err, fmt="o-", capsize=3)
    ax_score.axhline(0, color="grey", lw=0.8)
    ax_score.set(xlabel="β", ylabel=f"Δ {evaluator} vs β = 0 (95% CI)", title="Attribute (independent evaluator)")
    ax_cost.plot(summary.beta, summary.median_perplexity, "o-", label="median perplexity")
    ax_cost.set(xlabel="β", ylabel="median perplexity (plain expert)", title="Cost")
    twin = ax_cost.twinx()
    twin.plot(summary.beta, summary.tv_distance, "s--", color="tab:orange", label="TV distance")
    twin.plot(summary.beta, summary.dist_2, "^:", color="tab:green", label="dist-2")
    twin.set_ylabel("TV distance / dist-2")
    ax_cost.legend(loc="upper left")
    twin.legend(loc="lower right")
    fig.suptitle(title)
    return fig


def fluency_frontier_plot(summary: pd.DataFrame, evaluator: str, title: str, max_perplexity: float | None = None) -> Figure:
    """Attribute change (95% CI) against median perplexity, one line per method, strengths labelled."""
    fig, ax = subplots(figsize=(7, 4.5))
    for method, part in summary.groupby("method"):
        part = part.sort_values("strength")
        err = [part["diff"] - part.ci_low, part.ci_high - part["diff"]]
        line = ax.errorbar(part.median_perplexity, part["diff"], yerr=err, fmt="o-", capsize=3, label=method)
        for _, row in part.iterrows():
            ax.annotate(f"{row.strength:g}", (row.median_perplexity, row["diff"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=line[0].get_color())
    ax.axhline(0, color="grey", lw=0.8)
    if max_perplexity is not None:
        ax.axvline(max_perplexity, color="grey", ls=":", lw=1, label="perplexity budget")
    ax.set(xlabel="median perplexity under the plain expert", ylabel=f"Δ {evaluator} vs plain top-k (95% CI)",
           title=title)
    ax.legend()
    return fig

"""Plots return matplotlib Figures; callers save them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def residual_profile(frame: pd.DataFrame, title: str) -> Figure:
    """Per-layer residual norms (first vs typical position) and the Kelly/Joseph divergence."""
    fig, (ax_norm, ax_div) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ax_norm.semilogy(frame["layer"], frame["norm_first_position"], "o-", label="position 0")
    ax_norm.semilogy(frame["layer"], frame["norm_median_other"], "s-", label="median of other positions")
    ax_norm.set(xlabel="layer (hook_resid_post)", ylabel="residual L2 norm", title="Residual stream norm")
    ax_norm.legend()
    ax_div.plot(frame["layer"], frame["name_cosine_distance"], "o-", color="tab:red")
    ax_div.set(
        xlabel="layer (hook_resid_post)",
        ylabel="1 - cosine(Kelly, Joseph)",
        title="Where the two prompts' last tokens diverge",
    )
    fig.suptitle(title)
    return fig


def sweep_plot(summary: pd.DataFrame, scorer: str, title: str) -> Figure:
    """Score change (with 95% CI) and median perplexity against the coefficient, per condition."""
    fig, (ax_score, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
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
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
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

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

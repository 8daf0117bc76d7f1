"""Per-token values as an HTML view that renders offline (no script, inline styles only): each token shaded by its
value, blue below 0 and red above, the exact value on hover; e.g. each token's projection on a steering direction.
Shown inline by a notebook (`IPython.display.HTML`) and kept on the repository page with the notebook's outputs."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from experts.errors import SteerlabError


def _shade(value: float, scale: float) -> str:
    strength = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    red, blue = (220, 50) if value >= 0 else (50, 220)
    return f"rgba({red}, 60, {blue}, {0.75 * strength:.3f})"


def token_html(tokens: Sequence[str], values: Sequence[float], *, title: str, below: str, above: str) -> str:
    """Tokens shaded by `values` (the largest |value| is full colour); `below`/`above` say what each side means."""
    if len(tokens) != len(values) or not tokens:
        raise SteerlabError(f"token_html needs one value per token, got {len(tokens)} tokens and {len(values)} values")
    if not all(math.isfinite(v) for v in values):
        raise SteerlabError("token_html got a NaN or infinite value")
    scale = max(abs(v) for v in values)
    spans = "".join(
        f'<span title="{html.escape(repr(token))}: {value:+.3f}" style="background:{_shade(value, scale)};'
        f'padding:1px 0;border-radius:2px">{html.escape(token).replace(chr(10), "↵<br>")}</span>'
        for token, value in zip(tokens, values))
    legend = (f'<div style="font-size:85%;margin-top:4px"><span style="background:{_shade(-1, 1)}">&nbsp;blue&nbsp;</span> '
              f"{html.escape(below)} · <span style=\"background:{_shade(1, 1)}\">&nbsp;red&nbsp;</span> {html.escape(above)}"
              f" · hover a token for its value (largest |value| {scale:.3f})</div>")
    return (f'<div style="font-family:monospace;line-height:1.8;white-space:pre-wrap"><b>{html.escape(title)}</b><br>'
            f"{spans}{legend}</div>")

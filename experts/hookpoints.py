"""The one place that knows hook names: TransformerLens names mapped to Hugging Face module boundaries.

Users speak TL names (`blocks.3.hook_resid_post`, `hook_embed`, `ln_final.hook_out`...). Each name with
an HF boundary becomes a `HookPoint`: a module path and whether the activation is that module's
input or output. Names without one (inside attention: `hook_pattern`, `hook_z`...) are served by
the TransformerBridge instead.

`hook_resid_mid` has no single HF boundary that both reads and edits it: HF blocks keep the
residual in a local variable, so editing the MLP norm's input would change only the MLP's input.
It is therefore served as `resid_pre + attn_out` at the attention output (the residual read at
the attention norm's input), and an edit there reaches the residual stream, as in TransformerLens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from experts.errors import LayerOutOfRangeError, UnknownHookError, UnsupportedArchitectureError


@dataclass(frozen=True)
class Layout:
    """Where an architecture keeps its blocks. Paths inside a block are relative to the block."""

    embed: str
    blocks: str
    final_norm: str
    attn_out: str  # output of this module is hook_attn_out (what is added to the residual)
    mlp_out: str  # output of this module is hook_mlp_out
    attn_norm: str  # input of this module is the residual before attention (resid_pre, after its edits)
    tl4_attn_out: str = "attn.hook_out"  # TransformerLens 4's name (inside a block) of hook_attn_out's tensor
    tl4_mlp_out: str = "mlp.hook_out"  # ... and of hook_mlp_out's


_LLAMA = Layout("model.embed_tokens", "model.layers", "model.norm", "self_attn", "mlp", "input_layernorm")
# Gemma 3 normalises each sublayer's output before adding it to the residual stream.
_GEMMA3 = Layout(
    "model.embed_tokens",
    "model.layers",
    "model.norm",
    "post_attention_layernorm",
    "post_feedforward_layernorm",
    "input_layernorm",
    "ln1_post.hook_out",  # attn.hook_out / mlp.hook_out are the sublayers' outputs before these norms: other tensors
    "ln2_post.hook_out",
)

LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma3": _GEMMA3,
    "gemma3_text": _GEMMA3,
}

# In the order a block computes them.
BLOCK_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
GLOBAL_HOOKS = ("hook_embed", "ln_final.hook_out")
_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")
# TransformerLens 4's canonical names of the same tensors (its TransformerBridge makes each one an alias of the
# other): accepted everywhere a name is, for reading and for editing, and spelled the legacy way inside steerlab.
# The sublayer outputs' names depend on the architecture (`Layout.tl4_attn_out`). `blocks.N.ln2.hook_in` (TL 4's
# alias of hook_resid_mid) is not one: an edit there reaches only the MLP's input, not the residual stream.
BLOCK_ALIASES = {"hook_in": "hook_resid_pre", "hook_out": "hook_resid_post"}
GLOBAL_ALIASES = {"embed.hook_out": "hook_embed"}


def block_aliases(architecture: str | None = None) -> dict[str, str]:
    """TL 4's names inside a block -> steerlab's: the residual's for any architecture, the sublayers' for one."""
    if architecture is None:
        return dict(BLOCK_ALIASES)
    layout = layout_for(architecture)
    return BLOCK_ALIASES | {layout.tl4_attn_out: "hook_attn_out", layout.tl4_mlp_out: "hook_mlp_out"}


def block_hook(hook: str, architecture: str | None = None) -> str:
    """A name inside a block in steerlab's spelling: TL 4's `hook_out` -> `hook_resid_post`; others unchanged."""
    return block_aliases(architecture).get(hook, hook)


def legacy_name(name: str, architecture: str | None = None) -> str:
    """A full name in steerlab's spelling: `blocks.3.hook_in` -> `blocks.3.hook_resid_pre`; others unchanged."""
    if name in GLOBAL_ALIASES:
        return GLOBAL_ALIASES[name]
    match = _BLOCK_NAME.match(name)
    return f"blocks.{match.group(1)}.{block_hook(match.group(2), architecture)}" if match else name


@dataclass(frozen=True)
class HookPoint:
    """A TL hook name resolved to an HF module: its activation is the module's input or output.

    With `residual_path`, the activation is that module's input plus this module's output (the
    residual stream after a sublayer), and an edit changes what is added to the residual.
    """

    name: str
    layer: int | None
    module_path: str
    side: Literal["input", "output"]
    residual_path: str | None = None


def layout_for(architecture: str) -> Layout:
    try:
        return LAYOUTS[architecture]
    except KeyError:
        raise UnsupportedArchitectureError(architecture, LAYOUTS) from None


def act_name(kind: str, layer: int | None = None) -> str:
    """`act_name("resid_post", 3)` -> `blocks.3.hook_resid_post`; `act_name("embed")` -> `hook_embed`."""
    if layer is None:
        return "ln_final.hook_out" if kind in ("ln_final", "ln_final.hook_out") else f"hook_{kind.removeprefix('hook_')}"
    return f"blocks.{layer}.hook_{kind.removeprefix('hook_')}"


def attn_name(kind: str, layer: int) -> str:
    """A bridge-served name inside attention: `attn_name("pattern", 3)` -> `blocks.3.attn.hook_pattern`."""
    return f"blocks.{layer}.attn.hook_{kind.removeprefix('hook_')}"


def fast_hook_names(n_layers: int) -> list[str]:
    """Every name served by plain torch hooks on the HF model, in forward order."""
    names = ["hook_embed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{hook}" for hook in BLOCK_HOOKS]
    return names + ["ln_final.hook_out"]


def resolve_hook(name: str, architecture: str, n_layers: int) -> HookPoint | None:
    """Resolve a TL name to a `HookPoint`, or `None` if it has no HF boundary (bridge-only).

    Raises `LayerOutOfRangeError` for `blocks.N.*` with N out of range. TL 4's names resolve as their aliases.
    """
    layout = layout_for(architecture)
    asked, name = name, legacy_name(name, architecture)
    if name == "hook_embed":
        return HookPoint(name, None, layout.embed, "output")
    if name == "ln_final.hook_out":
        return HookPoint(name, None, layout.final_norm, "output")
    match = _BLOCK_NAME.match(name)
    if match is None:
        return None
    layer, hook = int(match.group(1)), match.group(2)
    if layer >= n_layers:
        raise LayerOutOfRangeError(asked, layer, n_layers)
    block = f"{layout.blocks}.{layer}"
    if hook == "hook_resid_pre":
        return HookPoint(name, layer, block, "input")
    if hook == "hook_resid_post":
        return HookPoint(name, layer, block, "output")
    if hook == "hook_resid_mid":
        return HookPoint(name, layer, f"{block}.{layout.attn_out}", "output", f"{block}.{layout.attn_norm}")
    if hook == "hook_attn_out":
        return HookPoint(name, layer, f"{block}.{layout.attn_out}", "output")
    if hook == "hook_mlp_out":
        return HookPoint(name, layer, f"{block}.{layout.mlp_out}", "output")
    return None


def check_known(name: str, valid: list[str]) -> None:
    """Raise `UnknownHookError` with close suggestions unless `name` is in `valid`."""
    if name not in valid:
        raise UnknownHookError(name, valid)

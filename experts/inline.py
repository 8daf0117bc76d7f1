"""Packed decode steps written out: one step of a Llama-style expert (transformers' llama and qwen2 models) computed
by the same operations as its modules, in the same order and on the same numbers, bit for bit, in one loop instead
of some 400 module calls.

At one row a packed step of SmolLM2-135M was bound by Python, not by its kernel: 6 ms of int4 kernel in a 17 ms
step, the rest module calls, hooks' bookkeeping and small operations (each slower than it looks: the weights that
stream through the CPU at every step evict the interpreter's data from its caches). Written out, a block converts
its shared q/k/v and gate/up outputs to float32 once instead of once per linear, turns q and k by their rotary
angles in one pass, and calls the kernel, the norms and the attention directly. Each of these gives the same
numbers as the modules' own operations (elementwise work on the same values; the same kernels on the same
arguments), so the two paths are interchangeable within a step and nothing that reads or edits activations can
tell them apart; `tests/unit/test_inline.py` checks the logits bit for bit against the model's own forward.

`InlineSteps(model)` is made at the start of a batch and reads the blocks then: which hold packed decoding's layout
(q, k and v one shared 4-bit code, gate and up one, o and down their own 4-bit codes, every code current) and their
weights, codes and shapes. At each step it writes out those blocks; a block's forward hooks on its output (a
steering vector on `hook_resid_post`) are called as `nn.Module.__call__` calls them. A block with any other hook
(on its input, inside it: `hook_resid_pre`, `hook_attn_out`, a capture, a user's hook) runs as its module, on the
same inputs. Hooks are looked at again whenever one was registered anywhere (torch numbers every hook handle);
weights edited in place during a batch are seen from the next batch, as with compiled steps. The embedding, the
rotary angles, the final norm and the lm_head always run as modules (their hooks fire). A step goes wholly through
the model's forward when it is not a packed step of one token per row (a prompts' forward, exact decoding), when
the model is another architecture, uses another attention than SDPA or has sliding-window layers, when a hook sits
on the model, its decoder or its rotary embedding, or globally on every module, and inside `through_modules()`.
`report(model)` counts blocks written out and run as modules.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules import module as torch_module
from torch.utils.hooks import RemovableHandle
from transformers.integrations.sdpa_attention import pack_gqa, use_gqa_in_sdpa
from transformers.masking_utils import create_causal_mask

from experts import packed

_THROUGH_MODULES: ContextVar[bool] = ContextVar("steerlab_through_modules", default=False)

ARCHITECTURES = {"LlamaForCausalLM": ("LlamaDecoderLayer", "LlamaRMSNorm"),
                 "Qwen2ForCausalLM": ("Qwen2DecoderLayer", "Qwen2RMSNorm")}
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks")
_COUNTS: weakref.WeakKeyDictionary[nn.Module, Counter] = weakref.WeakKeyDictionary()


_Weight = tuple[packed.Int4Code, packed.BFloat16Copy | None]  # a packed linear's code and its bfloat16 copy


@dataclass(frozen=True)
class _Block:
    """What a written-out block reads, taken at the batch's start."""

    modules: tuple[nn.Module, ...]  # the layer and everything inside it: a hook on any sends it to its module
    norms: tuple[Tensor, float, Tensor, float]  # weight and epsilon before attention, then before the MLP
    weights: tuple[_Weight, ...]  # q/k/v, o, gate/up, down
    biases: tuple[Tensor | None, Tensor | None, Tensor | None]  # q/k/v (concatenated), o, down
    act: Callable[[Tensor], Tensor]
    heads: int
    kv_heads: int
    dim: int
    width: int  # the MLP's
    scaling: float
    index: int  # the attention's layer index, for the cache


def report(model: nn.Module) -> dict[str, int]:
    """How many blocks of `model`'s decode steps were written out ("inline") and run as modules ("module")."""
    return dict(_COUNTS.get(model, {}))


@contextmanager
def through_modules() -> Iterator[None]:
    """Run every decode step in the block through the model's forward (to compare: the numbers are the same)."""
    token = _THROUGH_MODULES.set(True)
    try:
        yield
    finally:
        _THROUGH_MODULES.reset(token)


def _hooked(modules: tuple[nn.Module, ...]) -> bool:
    for module in modules:
        if module._forward_hooks or module._forward_pre_hooks:
            return True
    return False


def _output_hooks_only(modules: tuple[nn.Module, ...]) -> bool:
    """Does the layer (`modules[0]`, then everything inside it) carry forward hooks on its output and no other hook
    (none before it, none inside it, no backward hook, none that must run on an exception)? Then a written-out
    block calls them itself, as torch would."""
    layer = modules[0]
    return (bool(layer._forward_hooks) and not layer._forward_pre_hooks and not layer._forward_hooks_always_called
            and not layer._backward_hooks and not layer._backward_pre_hooks and not _hooked(modules[1:]))


def _call_output_hooks(layer: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> Tensor:
    """`layer`'s forward hooks on `output`, in order, as `nn.Module.__call__` runs them."""
    for hook_id, hook in tuple(layer._forward_hooks.items()):
        if hook_id in layer._forward_hooks_with_kwargs:
            result = hook(layer, args, kwargs, output)
        else:
            result = hook(layer, args, output)
        if result is not None:
            output = result
    return output


def why_not(model: nn.Module) -> str:
    """Why `model`'s decode steps always go wholly through its forward ("" when its blocks may be written out)."""
    if type(model).__name__ not in ARCHITECTURES:
        return "another architecture"
    config = model.config
    if config._attn_implementation != "sdpa" or any(kind != "full_attention" for kind in
                                                     getattr(config, "layer_types", None) or ()):
        return "another attention"
    weight = model.model.embed_tokens.weight
    if weight.dtype != torch.float32 or not weight.is_cpu:
        return "not float32 on the CPU"
    return ""


def _in_order(members: tuple[nn.Module, ...]) -> packed.SharedCode | None:
    """The shared code of `members` when they hold its columns one after another, in order, from the first."""
    shared, start = members[0].shared, 0
    for member in members:
        if member.shared is None or member.shared[0] is not shared[0] or member.shared[1:] != (
                start, start + member.out_features):
            return None
        start += member.out_features
    return shared[0]


def _block(layer: nn.Module, names: tuple[str, str], groups: int) -> _Block | None:
    """`layer` read for written-out steps, or None (it runs as its module): it holds its architecture's modules and
    no others, and its linears hold packed decoding's layout (q, k and v one shared code, in that order, all with a
    bias or none; gate and up one; o and down their own 4-bit codes), every code current."""
    if type(layer).__name__ != names[0] or len(layer._modules) != 4:
        return None
    attention, mlp = layer.self_attn, layer.mlp
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if len(attention._modules) != 4 or len(mlp._modules) != 4 or any(type(n).__name__ != names[1] for n in norms):
        return None
    linears = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, mlp.gate_proj, mlp.up_proj,
               mlp.down_proj)
    if not all(isinstance(linear, packed.PackedLinear) and linear.current() for linear in linears):
        return None
    q, k, v, o, gate, up, down = linears
    qkv, gate_up = _in_order((q, k, v)), _in_order((gate, up))
    if qkv is None or gate_up is None or len({linear.bias is None for linear in (q, k, v)}) > 1:
        return None
    if o.code is None or down.code is None or o.code.repeats != 1 or down.code.repeats != 1:
        return None
    if attention.num_key_value_groups != groups:
        return None
    dim = attention.head_dim
    return _Block(tuple(layer.modules()), (norms[0].weight, norms[0].variance_epsilon, norms[1].weight,
                                           norms[1].variance_epsilon),
                  ((qkv.code, qkv.wide), (o.code, o.wide), (gate_up.code, gate_up.wide), (down.code, down.wide)),
                  (None if q.bias is None else torch.cat((q.bias, k.bias, v.bias)).detach(), o.bias, down.bias),
                  mlp.act_fn.forward, q.out_features // dim, k.out_features // dim, dim, gate.out_features,
                  attention.scaling, attention.layer_idx)


def _linear(weight: _Weight, x: Tensor, bias: Tensor | None) -> Tensor:
    """A packed linear's step on rows `x` (rows, in): its product (the kernel, or its bfloat16 copy for many rows),
    then float32 and the bias, as `PackedLinear`."""
    y = packed._multiply(*weight, x).to(torch.float32)
    return y if bias is None else y + bias


def _residual(h: Tensor, weight: _Weight, x: Tensor, bias: Tensor | None) -> Tensor:
    """`h` plus a packed linear's step on rows `x`. Without a bias its bfloat16 product is added as it is: the sum
    widens it to float32 exactly, then adds, as adding its float32 copy would."""
    y = packed._multiply(*weight, x) if bias is None else _linear(weight, x, bias)
    return h + y.view(h.shape)


def _written_out(block: _Block, h: Tensor, mask: Tensor | None, gqa: bool, cos: Tensor, sin: Tensor,
                 cache) -> Tensor:
    """One block of one step on `h` (rows, 1, width), as the layer's module computes it: transformers' RMSNorm
    (torch's `rms_norm` runs transformers' operations in their order: square, mean, add epsilon, reciprocal square
    root, two products), `apply_rotary_pos_emb` on q and k together (it works element by element; rolling x by half
    a head and negating the first half of sin gives rotate_half(x) · sin exactly: a sign moves through a product
    unchanged), the cache's update and the SDPA call as `sdpa_attention_forward` makes it for one query. `sin` comes
    with its first half negated."""
    qkv, o, gate_up, down = block.weights
    rows, heads, dim, turned_heads = h.shape[0], block.heads, block.dim, block.heads + block.kv_heads
    x = F.rms_norm(h, (h.shape[-1],), block.norms[0], block.norms[1])
    y = _linear(qkv, x.view(rows, -1), block.biases[0]).view(rows, -1, 1, dim)  # (rows, heads, 1, dim): q, k, v
    turning = y[:, :turned_heads]
    turned = turning * cos + turning.roll(dim // 2, -1) * sin
    keys, values = cache.update(turned[:, heads:], y[:, turned_heads:], block.index)
    query = turned[:, :heads]
    if gqa:
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=0.0, scale=block.scaling,
                                             is_causal=False, enable_gqa=True)
    else:
        if heads != block.kv_heads:
            query = pack_gqa(query, heads // block.kv_heads)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=0.0, scale=block.scaling,
                                             is_causal=False)
    h = _residual(h, o, out.reshape(rows, -1), block.biases[1])  # the heads in transformers' order
    x = F.rms_norm(h, (h.shape[-1],), block.norms[2], block.norms[3])
    y = _linear(gate_up, x.view(rows, -1), None)
    z = block.act(y[:, : block.width]) * y[:, block.width :]
    return _residual(h, down, z, block.biases[2])


class InlineSteps:
    """One batch's decode steps, written out where they can be (see the module docstring): made at the batch's
    start, `logits(...)` at each step."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.why = why_not(model)
        config = model.config
        self._groups = config.num_attention_heads // config.num_key_value_heads
        self._blocks = [] if self.why else [_block(layer, ARCHITECTURES[type(model).__name__], self._groups)
                                            for layer in model.model.layers[: config.num_hidden_layers]]
        self._outer = () if self.why else (model, model.model, model.model.rotary_emb)
        self._epoch = -1  # hooks were last looked at when torch had numbered this many handles
        self._written: list[_Block | None] = []
        self._writes = False  # does any block of a step run written out
        self._counts = _COUNTS.setdefault(model, Counter())
        if self._blocks:  # as transformers decides it (an environment variable may force it)
            dim = next((block.dim for block in self._blocks if block is not None), 1)
            empty = torch.empty(0, dim)
            self._gqa = (use_gqa_in_sdpa(None, empty, empty), use_gqa_in_sdpa(torch.ones(1, dtype=torch.bool),
                                                                                    empty, empty))

    @property
    def writable(self) -> int:
        """How many blocks hold packed decoding's layout (written out at a step where no hook sits on them)."""
        return sum(block is not None for block in self._blocks)

    def _look_at_hooks(self) -> None:
        epoch = RemovableHandle.next_id
        if epoch != self._epoch:
            self._epoch = epoch
            around = _hooked(self._outer) or any(getattr(torch_module, name) for name in _GLOBAL_HOOKS)
            self._written = [None if around or block is None or (_hooked(block.modules) and not _output_hooks_only(
                block.modules)) else block for block in self._blocks]
            self._writes = any(block is not None for block in self._written)

    def logits(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache) -> Tensor:
        """The logits (rows, vocabulary) at the last position of one forward over `input_ids` with `cache`."""
        model = self.model
        step = not self.why and input_ids.shape[1] == 1 and packed._PACKED_ON.get() and not packed._PROMPTS.get() \
            and not torch.is_grad_enabled() and not _THROUGH_MODULES.get()  # a packed step that may be written out
        if step:
            self._look_at_hooks()
        if not step or not self._writes:
            if step:
                self._counts["module"] += len(self._written)
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                        use_cache=True, logits_to_keep=1)
            return out.logits[:, -1, :]
        decoder = model.model
        h = decoder.embed_tokens(input_ids)
        mask = create_causal_mask(config=decoder.config, inputs_embeds=h, attention_mask=attention_mask, cache=cache,
                                  position_ids=position_ids)
        cos, sin = decoder.rotary_emb(h, position_ids=position_ids)
        half = sin.shape[-1] // 2  # rotate_half(x) · sin is x rolled by half · sin with its first half negated
        angles = (cos.unsqueeze(1), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1))
        gqa = self._groups > 1 and self._gqa[mask is not None]
        packed_mask = mask if gqa or self._groups == 1 else pack_gqa(mask, self._groups)
        count = 0
        for layer, block in zip(decoder.layers, self._written):
            if block is None:
                h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=position_ids,
                          cache=cache, use_cache=True)
                continue
            out = _written_out(block, h, packed_mask, gqa, *angles, cache)
            if layer._forward_hooks:  # hooks on its output only (`_output_hooks_only`)
                out = _call_output_hooks(layer, (h,), dict(attention_mask=mask, position_embeddings=(cos, sin),
                                                           position_ids=position_ids, cache=cache, use_cache=True), out)
            h = out
            count += 1
        self._counts["inline"] += count
        self._counts["module"] += len(self._written) - count
        h = decoder.norm(h)
        return model.lm_head(h[:, -1:, :])[:, -1, :]

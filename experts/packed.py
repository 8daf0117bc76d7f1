"""Packed weights for fast CPU decoding: the linears of an expert whose GGUF stores them in 4 or 8 bits run in
PyTorch's int4 weight-only kernel while tokens are generated, and every other computation stays as it was.

A packaged expert's weights are quantized: SmolLM2's block linears are Q4_1, i.e. 16 levels per block of 32 values
with a scale and an offset, and its lm_head (the tied embedding) is Q8_0, 255 levels symmetric about zero with a
scale per block of 32. `pack_linears` finds each `nn.Linear` whose float32 weight is exactly such a 4-bit affine
code per group of 32, or exactly such an 8-bit symmetric code (checked value by value, so nothing is approximated
by choice), and packs it for `aten._weight_int4pack_mm_for_cpu`: an 8-bit code as two 4-bit codes, its high and
low nibbles, over the input repeated twice (w = d · (16·high + low - 128), exact but for the kernel's bfloat16
scales). It keeps the float32 weight where it was (reading, capture, the bridge and training all use it). Inside
`packed_decoding()` a packed linear computes with the packed weight: a quarter of the memory traffic of float32
(half for an 8-bit code), which bounds a small expert's decoding on a CPU. The generation loop enters it for
every step of a batch of at most `MAX_PACKED_ROWS` rows: with more rows the kernel gains little or loses against
float32 and the batch decodes exactly. `exact_decoding()` pins exact decoding for a block.
The kernel takes bfloat16 inputs, scales and offsets and accumulates in float32, so the numerics are those of a
bfloat16 matmul; `benchmarks/RESULTS.md` states the change in outputs.

Linears that read the same input (a block's q, k and v projections; its gate and up projections) share one code,
their codes stacked by output (`SharedCode`): the first of them called on an input runs the kernel once for all,
and the others take their columns of that result, bit for bit what their own calls would give (checked when they
are packed), with fewer kernel calls and input conversions per step.

On a CPU with native bfloat16 dot products (`bfloat16_matmuls()`: AVX-512 BF16 or AMX), each packed weight also
keeps a bfloat16 copy, its float32 weight rounded (a shared code's members stacked), laid out once for oneDNN's
matmul (`bfloat16_copy`; 256 MB for SmolLM2, 56 MB of it the lm_head's). Two parts of a packed batch multiply with
it, in bfloat16 (inputs and weights rounded, float32 accumulation: the kernel's numerics), where it beats the kernel:
its prompts' forward (`packed_decoding(prompts=True)`: many rows; 1.7-2x float32, and 1.2-1.7x a weight rounded and
laid out at every call) and its steps of `WIDE_ROWS` rows or more, `WIDE_ROWS_8BIT` for an 8-bit code (the kernel
unpacks every weight again for each 4 rows, an 8-bit code's over the input twice). A step of fewer rows runs the
kernel, which reads a quarter of the copy's bytes (half for an 8-bit code). A copy gives the numbers of rounding the
weight at each call (`F.linear` in bfloat16) bit for bit: `_prepacks()` checks it once, and a stacked copy's
columns are each member's. Elsewhere the prompts' forward is float32, as is a router's reading reused as one
(`generate.Prefill`).

Rounding to bfloat16 turns a difference in the last float32 bit into one of a bfloat16 step, and padding moves the
last bits of a row's attention. So in packed decoding a prompt's greedy text may depend on its batch (the padding
beside it; fewer than 4 rows, 4 to 11, 12 to 16, or more, which decode exactly), where in float32 it seldom does;
`benchmarks/packed_fidelity.py` counts how often.

A Llama-style block whose linears all run packed, q/k/v and gate/up as shared codes, runs its decode steps written
out (`experts.inline`): the same operations without transformers' module calls, bit for bit.

A packed linear falls back to float32 (bit-identical to an unpacked one) outside `packed_decoding()`, with
gradients on, off the CPU, in another dtype, or once its weight was edited in place or replaced (the pack would be
stale).
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from experts.errors import SteerlabError

log = logging.getLogger(__name__)

GROUP = 32  # values per scale and offset (GGUF's 4-bit blocks hold 32)
LEVELS = 15  # a 4-bit code is 0..15
DECODINGS = ("auto", "packed", "compiled", "exact")
CHUNK_ROWS = 4096  # output rows of an 8-bit code worked on at a time
SAMPLE_GROUPS = 256  # groups checked first, so that a weight with no 4-bit code (5- or 8-bit) is refused quickly
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # transformers' linears that read one input

DECODING_ENV = "STEERLAB_DECODING"
MAX_PACKED_ROWS = 16  # rows per decode step up to which the int4 kernel beats float32 here (benchmarks/RESULTS.md)
WIDE_ROWS = 12  # rows from which a step multiplies a 4-bit code's bfloat16 copy, faster there (benchmarks/RESULTS.md)
WIDE_ROWS_8BIT = 4  # the same for an 8-bit code, which the kernel runs over the input twice

_PACKED_ON: ContextVar[bool] = ContextVar("steerlab_packed_decoding", default=False)
_PROMPTS: ContextVar[bool] = ContextVar("steerlab_packed_prompts", default=False)
_EXACT_PINNED: ContextVar[bool] = ContextVar("steerlab_exact_decoding", default=False)
_IN_COMPILED_STEP = False  # what a packed linear does inside a graph being traced: set by `experts.compiled` only


def resolve_decoding(decoding: str | None) -> str:
    """`decoding` as given, else `$STEERLAB_DECODING`, else "auto"; a typed error names the choices."""
    chosen = decoding or os.environ.get(DECODING_ENV) or "auto"
    if chosen not in DECODINGS:
        source = f"${DECODING_ENV}" if decoding is None else "decoding"
        raise SteerlabError(f"unknown {source} {chosen!r}; choose one of {', '.join(DECODINGS)}")
    return chosen


@contextmanager
def exact_decoding() -> Iterator[None]:
    """Decode every batch in the block exactly, packed weights or not (the audit pins it: twins decoded alike)."""
    token = _EXACT_PINNED.set(True)
    try:
        yield
    finally:
        _EXACT_PINNED.reset(token)


def packs_batch(rows: int) -> bool:
    """Does a batch of `rows` rows decode packed? Not above `MAX_PACKED_ROWS` (float32 is faster there), nor
    inside `exact_decoding()`. The choice is per batch, so all its rows decode alike."""
    return rows <= MAX_PACKED_ROWS and not _EXACT_PINNED.get()


@contextmanager
def packed_decoding(on: bool = True, *, prompts: bool = False) -> Iterator[None]:
    """Let packed linears use their packed weights for the duration of the block (the generation loop's steps), or
    with `prompts=True` multiply in bfloat16 (a prompts' forward); `on=False` keeps them in float32 there."""
    token, prompts_token = _PACKED_ON.set(on), _PROMPTS.set(prompts)
    try:
        yield
    finally:
        _PROMPTS.reset(prompts_token)
        _PACKED_ON.reset(token)


@dataclass(frozen=True)
class Int4Code:
    """A weight as a 4-bit affine code per group of `GROUP` inputs: w = scale · (q - 8) + offset."""

    packed: Tensor  # the kernel's layout of q
    scales_and_offsets: Tensor  # (repeats · in_features / GROUP, out_features, 2), bfloat16
    repeats: int = 1  # 2: an 8-bit code, its high nibbles over the input's first copy and its low over the second


def _on_grid(groups: Tensor, low: Tensor | float, step: Tensor, code: Tensor) -> Tensor:
    error = (code * step).add_(low).sub_(groups).abs_()  # in place: no full-size temporaries but two
    return (error <= groups.abs().mul_(1e-6).add_(1e-4 * step)).all(-1)


def _grid(groups: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per group (rows of `groups`): the finest grid of at most 16 evenly spaced levels from its minimum that holds
    every value (that minimum, the step and the codes), and whether one does (beyond float32 rounding)."""
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    step = (high - low) / LEVELS
    step[high == low] = 1.0  # a constant group is code 0
    code = ((groups - low) / step).round_().clamp_(0, LEVELS)
    fits = _on_grid(groups, low, step, code)
    for levels in range(LEVELS - 1, 0, -1):  # a group whose codes span fewer than 16 levels has a coarser step
        todo = torch.nonzero(~fits).flatten()
        if not len(todo):
            break
        values, floor = groups[todo], low[todo]
        trial = (high[todo] - floor) / levels
        trial_code = ((values - floor) / trial).round_().clamp_(0, levels)
        ok = _on_grid(values, floor, trial, trial_code)
        step[todo[ok]], code[todo[ok]], fits[todo[ok]] = trial[ok], trial_code[ok], True
    return low, step, code, fits


def _suits_kernel(weight: Tensor) -> bool:
    """A float32 weight (out, in) whose inputs are whole groups of 32 and outputs a multiple of 8."""
    out_features, in_features = weight.shape
    return weight.dtype == torch.float32 and not in_features % GROUP and not out_features % 8


def int4_code(weight: Tensor) -> Int4Code | None:
    """The exact 4-bit code of `weight` (out, in) per group of 32 inputs, or None when it has none (a value off its
    group's grid of 16 evenly spaced levels, beyond float32 rounding) or its shape does not suit the kernel."""
    if not _suits_kernel(weight):
        return None
    out_features, in_features = weight.shape
    groups = weight.reshape(-1, GROUP)
    sample = groups[:: max(1, len(groups) // SAMPLE_GROUPS)]
    if not bool(_grid(sample)[3].all()):
        return None
    low, step, code, fits = _grid(groups)
    if not bool(fits.all()):
        return None
    q = code.to(torch.int32).reshape(out_features, in_features)
    step = step.reshape(out_features, in_features // GROUP)
    offsets = low.reshape(out_features, in_features // GROUP) + 8 * step  # the kernel's form: scale · (q - 8) + offset
    return _kernel_code(q, step, offsets)


def _kernel_code(q: Tensor, scales: Tensor, offsets: Tensor, repeats: int = 1) -> Int4Code:
    """Pack codes q (out, in) in 0..15 with per-group `scales` and `offsets` (out, in / GROUP) for the kernel."""
    scales_and_offsets = torch.stack([scales.T, offsets.T], dim=-1).contiguous().to(torch.bfloat16)
    return Int4Code(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), scales_and_offsets, repeats)


def _symmetric(groups: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Per group (rows of `groups`): the scale d = largest |w| / 127, the codes round(w / d), and whether every
    group is exactly d · code (beyond float32 rounding, as `_on_grid` judges a 4-bit grid)."""
    scale = groups.abs().amax(-1, keepdim=True).div_(127)
    scale[scale == 0] = 1.0  # a zero group is code 0
    code = (groups / scale).round_()
    return scale, code, bool(_on_grid(groups, 0.0, scale, code).all())


def int8_code(weight: Tensor) -> Int4Code | None:
    """The exact 8-bit symmetric code of `weight` (out, in) per group of 32 inputs (Q8_0's: w = d · q, q in
    -127..127, d = the group's largest |w| / 127) split into two 4-bit codes, or None when it has none. Computed
    `CHUNK_ROWS` rows at a time: an embedding of 168M values costs no full-size temporaries."""
    if not _suits_kernel(weight):
        return None
    out_features, in_features = weight.shape
    groups = weight.reshape(-1, GROUP)
    if not _symmetric(groups[:: max(1, len(groups) // SAMPLE_GROUPS)])[2]:
        return None
    q = torch.empty(out_features, 2 * in_features, dtype=torch.int32)  # high nibbles, then low nibbles
    d = torch.empty(out_features, in_features // GROUP)
    for start in range(0, out_features, CHUNK_ROWS):
        rows = weight[start : start + CHUNK_ROWS]
        scale, code, fits = _symmetric(rows.reshape(-1, GROUP))
        if not fits:
            return None
        unsigned = code.add_(128).to(torch.int32).reshape(rows.shape)  # 1..255
        q[start : start + len(rows), :in_features] = unsigned >> 4
        q[start : start + len(rows), in_features:] = unsigned & 15
        d[start : start + len(rows)] = scale.reshape(len(rows), -1)
    # w = d·(16·high + low - 128) = 16d·(high - 8) + d·(low - 8) + 8d
    return _kernel_code(q, torch.cat([16 * d, d], dim=1), torch.cat([torch.zeros_like(d), 8 * d], dim=1), 2)


try:  # the overload itself: no overload resolution per call on the decode path
    _INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default
except AttributeError:  # a build without the kernel: `kernel_works()` is False and nothing is packed
    _INT4_MM = None


def _rows(x: Tensor) -> Tensor:
    """`x` (..., in_features) as (rows, in_features): a bfloat16 linear of one row given in 3-D takes a batched
    path 17x slower than the same matmul in 2-D (53 against 3.1 ms for SmolLM2's lm_head). Rows already in 2-D are
    taken as they are (a written-out step's, `experts.inline`: no reshape call per linear)."""
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1])


def _run(code: Int4Code, x: Tensor) -> Tensor:
    """The kernel on the rows of `x` (..., in_features): (rows, out_features), bfloat16."""
    rows = _rows(x).to(torch.bfloat16)
    if code.repeats > 1:
        rows = rows.repeat(1, code.repeats)
    return _INT4_MM(rows, code.packed, GROUP, code.scales_and_offsets)


try:
    _LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise.default
except AttributeError:  # a build without oneDNN: bfloat16 copies stay as they are, for `F.linear`
    _LINEAR_POINTWISE = None


def _linear_bf16(rows: Tensor, laid_out: Tensor) -> Tensor:
    return _LINEAR_POINTWISE(rows, laid_out, None, "none", [None], "")


@functools.cache
def _prepacks() -> bool:
    """Does oneDNN's linear take a bfloat16 weight laid out once for it (`_reorder_linear_weight`) and give
    `F.linear`'s numbers bit for bit? (A layout that oneDNN alone can read: nothing else may touch the copy.)"""
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 2 * GROUP, generator=generator).to(torch.bfloat16)
        laid_out = torch.ops.mkldnn._reorder_linear_weight(weight)
        for rows in (1, 5, 33):
            x = torch.randn(rows, 2 * GROUP, generator=generator).to(torch.bfloat16)
            if not torch.equal(_linear_bf16(x, laid_out), F.linear(x, weight)):
                return False
        return True
    except (AttributeError, TypeError, RuntimeError, NotImplementedError):  # TypeError: no `_LINEAR_POINTWISE`
        return False


@dataclass(frozen=True, eq=False)
class BFloat16Copy:
    """A packed weight's bfloat16 copy, in oneDNN's own layout where `laid_out` (which nothing else can read or
    copy). A deep copy of its module shares it: the copied module's pack is stale anyway (`PackedLinear.current`)."""

    weight: Tensor
    laid_out: bool

    def __deepcopy__(self, memo: dict) -> BFloat16Copy:
        return self


def bfloat16_copy(weight: Tensor) -> BFloat16Copy:
    """`weight` in bfloat16 for `_multiply`: laid out once for oneDNN where `_prepacks()`."""
    copy = weight.detach().to(torch.bfloat16)
    laid_out = _prepacks()
    return BFloat16Copy(torch.ops.mkldnn._reorder_linear_weight(copy) if laid_out else copy, laid_out)


def has_bfloat16_copies(model: nn.Module) -> bool:
    """Do `model`'s packed weights keep bfloat16 copies (`bfloat16_copy`: on a CPU with native bfloat16)?"""
    return any(isinstance(m, PackedLinear) and (m.wide is not None or (m.shared is not None and m.shared[0].wide
                                                                       is not None)) for m in model.modules())


def _multiply(code: Int4Code, wide: BFloat16Copy | None, x: Tensor, prompts: bool = False) -> Tensor:
    """The rows of `x` (..., in_features) times a packed weight: (rows, out_features), bfloat16. From its bfloat16
    copy `wide` (when it has one) for a prompts' forward and for `WIDE_ROWS` rows or more (`WIDE_ROWS_8BIT` for an
    8-bit code), else by the kernel, as in a compiled step (a graph cannot hold the copy's layout)."""
    wide_rows = WIDE_ROWS if code.repeats == 1 else WIDE_ROWS_8BIT
    if wide is None or not (prompts or x.numel() >= wide_rows * x.shape[-1]) or torch.compiler.is_compiling():
        return _run(code, x)
    rows = _rows(x).to(torch.bfloat16)
    return _linear_bf16(rows, wide.weight) if wide.laid_out else F.linear(rows, wide.weight)


class SharedCode:
    """One 4-bit code for linears that read the same input, stacked by output: the first of them called on an
    input runs the kernel for all, the others take their columns while their input is that same tensor object
    (an input edited in place between their calls is not seen; no steerlab hook does that)."""

    def __init__(self, code: Int4Code, members: int):
        self.code = code
        self.members = members
        self.wide: BFloat16Copy | None = None  # the members' weights stacked (`bfloat16_copy`), on such a CPU
        self._last: tuple[Tensor, Tensor, int] | None = None  # (input, output, members still to take theirs), as one

    def columns(self, x: Tensor, start: int, stop: int, prompts: bool = False) -> Tensor:
        last = self._last
        if last is None or last[0] is not x:
            last = (x, _multiply(self.code, self.wide, x, prompts), self.members)
        output, waiting = last[1], last[2] - 1
        self._last = (x, output, waiting) if waiting else None  # when every member had its columns, hold nothing
        return output[:, start:stop]


class PackedLinear(nn.Linear):
    """An `nn.Linear` that also holds its weight's code (4-bit, or 8-bit as two 4-bit codes; see the module
    docstring), or its columns of a `SharedCode`; made by `pack_linears`."""

    code: Int4Code | None  # None when the linear's code is part of a shared one
    shared: tuple[SharedCode, int, int] | None = None  # the shared code and this linear's columns of it
    wide: BFloat16Copy | None = None  # its weight's `bfloat16_copy` on such a CPU, unless the code is shared
    _packed_from: weakref.ref  # the weight the code was made from (a weak reference: no second parameter)
    _packed_version: int

    def attach(self, code: Int4Code) -> None:
        self.code, self.shared = code, None
        self._packed_from = weakref.ref(self.weight)
        self._packed_version = self.weight._version

    def uses_code(self, x: Tensor) -> bool:
        if torch.compiler.is_compiling():  # a `ContextVar` breaks the graph; `experts.compiled` checked the rest
            return _IN_COMPILED_STEP
        if not (_PACKED_ON.get() and x.dtype == torch.float32 and x.is_cpu and not torch.is_grad_enabled()):
            return False
        return self.current()

    def current(self) -> bool:
        """Is the code still that of the weight (not edited in place, nor replaced, since it was packed)?"""
        weight = self._parameters["weight"]  # not `self.weight`: Module.__getattr__ costs on the decode path
        return self._packed_from() is weight and weight._version == self._packed_version

    def forward(self, x: Tensor) -> Tensor:
        if not self.uses_code(x):
            return F.linear(x, self.weight, self.bias)
        prompts = not torch.compiler.is_compiling() and _PROMPTS.get()  # a prompts' forward: bfloat16 (docstring)
        shared = self.shared
        if prompts and not bfloat16_matmuls():
            return F.linear(x, self.weight, self.bias)
        if shared is None:
            y = _multiply(self.code, self.wide, x, prompts)
        else:
            y = shared[0].columns(x, shared[1], shared[2], prompts)
        y = y.to(torch.float32).view(*x.shape[:-1], self.out_features)
        bias = self._parameters["bias"]
        return y if bias is None else y + bias


@dataclass(frozen=True)
class PackingReport:
    """What `pack_linears` did: how many linears (and of their weights' values) run packed while decoding."""

    decoding: str  # "packed" or "exact"
    packed_linears: int
    linears: int
    packed_share: float  # share of all linear weight values that are packed
    reason: str = ""  # why nothing was packed, when nothing was
    shared_codes: int = 0  # groups of linears that read one input and run as one kernel call
    compiled_steps: bool = False  # decode steps compiled whole where they can be (`experts.compiled`)
    inline_blocks: int = 0  # blocks that a decode step writes out when no hook sits on them (`experts.inline`)
    bfloat16: bool = False  # native bfloat16: prompts' forward and steps of many rows multiply in it
    bfloat16_copies_mb: float = 0.0  # the packed weights' bfloat16 copies that those multiply with

    def to_dict(self) -> dict:
        return {"decoding": self.decoding, "packed_linears": self.packed_linears, "linears": self.linears,
                "packed_share": round(self.packed_share, 4), "shared_codes": self.shared_codes,
                "compiled_steps": self.compiled_steps, "inline_blocks": self.inline_blocks, "bfloat16": self.bfloat16,
                "bfloat16_copies_mb": self.bfloat16_copies_mb,
                **({"reason": self.reason} if self.reason else {})}


@functools.cache
def bfloat16_matmuls() -> bool:
    """Does this CPU multiply bfloat16 natively (oneDNN's bfloat16 path: AVX-512 BF16 or AMX)? Elsewhere a
    bfloat16 matmul is emulated, slower than the kernel, and 8-bit codes keep no bfloat16 copy."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def kernel_works() -> bool:
    """Does this build's int4 CPU kernel exist and agree with float32 on a small exact code?"""
    try:
        generator = torch.Generator().manual_seed(0)
        q = torch.randint(0, LEVELS + 1, (16, 2 * GROUP), generator=generator).float()
        q[:, ::GROUP], q[:, 1::GROUP] = 0, LEVELS  # every group spans the 16 levels
        weight = q * 0.25 - 1.0
        code = int4_code(weight)
        x = torch.randn(2, 2 * GROUP, generator=generator)
        got = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), code.packed, GROUP,
                                                         code.scales_and_offsets).float()
        want = x.to(torch.bfloat16).float() @ weight.T
        return bool(torch.allclose(got, want, rtol=2e-2, atol=2e-2))
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        log.info("the int4 CPU kernel is unavailable here (%s); decoding stays exact", error)
        return False


def unpacked(model: nn.Module, reason: str) -> PackingReport:
    """The report of a model that decodes exactly, and why."""
    return PackingReport("exact", 0, sum(isinstance(m, nn.Linear) for m in model.modules()), 0.0, reason)


def pack_linears(model: nn.Module) -> PackingReport:
    """Give every linear of `model` with an exact 4- or 8-bit code that code (in place: it becomes a `PackedLinear`)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    total = sum(m.weight.numel() for m in linears)
    if not linears:
        return unpacked(model, "no linear layers")
    if next(model.parameters()).device.type != "cpu":
        return unpacked(model, "not on the CPU")
    if next(model.parameters()).dtype != torch.float32:
        return unpacked(model, "not in float32")
    if not kernel_works():
        return unpacked(model, "no int4 CPU kernel in this torch build")
    packed = []
    for module in linears:
        weight = module.weight.detach()
        code = int4_code(weight) or int8_code(weight)
        if code is not None:
            module.__class__ = PackedLinear
            module.attach(code)
            packed.append(module)
    if not packed:
        return unpacked(model, "no linear holds 4- or 8-bit weights")
    shared = share_inputs(model)
    copies = _bfloat16_copies(packed) if bfloat16_matmuls() else 0
    return PackingReport("packed", len(packed), len(linears), sum(m.weight.numel() for m in packed) / total,
                         shared_codes=shared, bfloat16=bfloat16_matmuls(), bfloat16_copies_mb=round(copies / 2**20, 1))


def _bfloat16_copies(linears: list[PackedLinear]) -> int:
    """Give each packed linear its weight's `bfloat16_copy`, or each shared code its members' weights stacked in
    column order; returns their bytes."""
    groups: dict[SharedCode, list[PackedLinear]] = {}
    for linear in linears:
        if linear.shared is None:
            linear.wide = bfloat16_copy(linear.weight)
        else:
            groups.setdefault(linear.shared[0], []).append(linear)
    for group, members in groups.items():
        members.sort(key=lambda member: member.shared[1])
        group.wide = bfloat16_copy(torch.cat([member.weight.detach() for member in members]))
    return 2 * sum(linear.weight.numel() for linear in linears)


def _stacked_codes(members: list[PackedLinear]) -> Iterator[Int4Code]:
    """The members' codes stacked by output: their packed rows concatenated (the kernel's layout is in blocks of
    output rows, so this holds when each member fills whole blocks), else packed again from their stacked weights."""
    yield Int4Code(torch.cat([m.code.packed for m in members]),
                   torch.cat([m.code.scales_and_offsets for m in members], dim=1))
    code = int4_code(torch.cat([m.weight.detach() for m in members]))
    if code is not None:
        yield code


def _gives_columns(code: Int4Code, x: Tensor, alone: list[Tensor], bounds: list[int]) -> bool:
    """Does one kernel call of the stacked `code` on `x` hold each member's own output (`alone`) in its columns?"""
    whole = _run(code, x)
    return all(torch.equal(whole[:, start:stop], y) for y, start, stop in zip(alone, bounds, bounds[1:]))


def share_inputs(model: nn.Module) -> int:
    """Give each group of packed 4-bit linears that read one input (two or more of a `SHARED_INPUTS` set, children
    of one module) a `SharedCode`, where its columns equal each member's own kernel call bit for bit on a probe
    input; returns how many groups share one."""
    generator = torch.Generator().manual_seed(0)
    shared = 0
    for module in model.modules():
        for names in SHARED_INPUTS:
            members = [m for m in (getattr(module, name, None) for name in names)
                       if isinstance(m, PackedLinear) and m.shared is None and m.code.repeats == 1]
            if len(members) < 2 or len({m.in_features for m in members}) > 1:
                continue
            bounds = [0, *accumulate(m.out_features for m in members)]
            x = torch.randn(2, members[0].in_features, generator=generator)
            alone = [_run(m.code, x) for m in members]
            code = next((code for code in _stacked_codes(members) if _gives_columns(code, x, alone, bounds)), None)
            if code is None:
                continue
            group = SharedCode(code, len(members))
            for member, start, stop in zip(members, bounds, bounds[1:]):
                member.shared, member.code = (group, start, stop), None
            shared += 1
    return shared

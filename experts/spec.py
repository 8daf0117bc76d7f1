"""`ExpertSpec`: what an expert is and where its weights come from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SourceKind = Literal["gguf", "gguf-parts", "hf-folder", "tiny"]


@dataclass(frozen=True)
class WeightPart:
    """One file inside an installed Python package: `package` is its import name, `path` relative."""

    package: str
    path: str


@dataclass(frozen=True)
class ExpertSpec:
    """A named expert: its weights' source, checksum, architecture and declared capabilities.

    `source` is `gguf` (one GGUF file in a package), `gguf-parts` (parts concatenated in order),
    `hf-folder` (a local Hugging Face folder) or `tiny` (random weights built in-process).
    """

    name: str
    source: SourceKind
    architecture: str
    file: str = ""
    sha256: str = ""
    parts: tuple[WeightPart, ...] = ()
    packages: tuple[str, ...] = ()
    chat_template: bool = False
    capabilities: tuple[str, ...] = ()
    description: str = ""
    folder: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages) if self.packages else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpertSpec:
        data = dict(data)
        data["parts"] = tuple(WeightPart(**p) for p in data.get("parts", ()))
        for key in ("packages", "capabilities"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)

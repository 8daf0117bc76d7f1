"""Weights to a transformers model: locate the packaged GGUF, verify its sha256, convert once to a
cached safetensors folder (atomically), and load that folder afterwards.

The cache lives in `$STEERLAB_CACHE` (default `~/.cache/steerlab`), one folder per expert and
checksum. Its manifest records each file's sha256; a cache folder whose content no longer matches
(or that fails to load) is rebuilt. Models load in float32 on the CPU, the dtype of the source, so
the caller can fingerprint the weights before casting them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from experts.errors import ChecksumMismatchError, ModelPackageMissingError, NonFiniteError, SteerlabError
from experts.files import file_sha256, ordinary_permissions
from experts.spec import ExpertSpec, WeightPart

log = logging.getLogger(__name__)

CACHE_ENV = "STEERLAB_CACHE"
MANIFEST = "steerlab-manifest.json"
CACHE_FORMAT = 2
_CHUNK = 1 << 20


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "steerlab")


def cache_folder(spec: ExpertSpec) -> Path:
    return cache_root() / "experts" / f"{spec.name}-{spec.sha256[:12]}"


def locate_part(spec: ExpertSpec, part: WeightPart) -> Path:
    """Path of one weights file inside its installed package (found without importing it)."""
    found = importlib.util.find_spec(part.package)
    path = Path(found.origin).parent / part.path if found and found.origin else None
    if path is None or not path.is_file():
        raise ModelPackageMissingError(spec.name, spec.install_command)
    return path


def _assemble_and_verify(spec: ExpertSpec, workdir: Path) -> Path:
    """Concatenate the parts (one part: use it in place), hashing as we go; refuse a mismatch."""
    paths = [locate_part(spec, part) for part in spec.parts]
    digest = hashlib.sha256()
    if len(paths) == 1:
        target = paths[0]
        with target.open("rb") as src:
            while block := src.read(_CHUNK):
                digest.update(block)
    else:
        target = workdir / spec.file
        with target.open("wb") as out:
            for path in paths:
                with path.open("rb") as src:
                    while block := src.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
    if digest.hexdigest() != spec.sha256:
        raise ChecksumMismatchError(str(target), spec.sha256, digest.hexdigest())
    return target


def verified_gguf(spec: ExpertSpec, workdir: Path) -> Path:
    """A packaged expert's GGUF file, assembled in `workdir` if it comes in parts, its sha256 checked (for peers that
    read GGUF themselves, e.g. llama.cpp in `benchmarks/llamacpp_peer.py`)."""
    return _assemble_and_verify(spec, Path(workdir))


def check_finite(model: PreTrainedModel, name: str) -> None:
    """Refuse weights holding NaN or infinite values (a corrupt file), naming the first such tensor."""
    for param_name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"weight {param_name} of expert {name!r}")


def _strip_gguf_marker(model: PreTrainedModel) -> None:
    """transformers de-quantizes GGUF to plain tensors but marks the model unsaveable; unmark it."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert(spec: ExpertSpec, target: Path) -> None:
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as workdir:
            gguf = _assemble_and_verify(spec, Path(workdir))
            log.info("converting %s (%s) to safetensors in %s", spec.name, gguf.name, target)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        _strip_gguf_marker(model)
        check_finite(model, spec.name)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        manifest = {
            "format": CACHE_FORMAT,
            "expert": spec.name,
            "source_sha256": spec.sha256,
            "files": {p.name: file_sha256(p) for p in staging.iterdir() if p.is_file()},
            "seconds": round(time.perf_counter() - started, 2),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        ordinary_permissions(staging, folder=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cache_is_intact(spec: ExpertSpec, folder: Path) -> bool:
    """The manifest matches this expert and every file's content still has its recorded sha256."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return (
            manifest["format"] == CACHE_FORMAT
            and manifest["source_sha256"] == spec.sha256
            and all(file_sha256(folder / name) == digest for name, digest in manifest["files"].items())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _load_folder(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model.eval(), tokenizer


def load_cached(spec: ExpertSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
    """Load a GGUF-backed expert through its safetensors cache, building or rebuilding it as needed."""
    folder = cache_folder(spec)
    if not _cache_is_intact(spec, folder):
        if folder.exists():
            log.warning("cache %s is incomplete, corrupt or changed; rebuilding it", folder)
        _convert(spec, folder)
    try:
        model, tokenizer = _load_folder(folder)
    except Exception as error:  # a body that does not load: rebuild once
        log.warning("cache %s failed to load (%s); rebuilding it", folder, error)
        _convert(spec, folder)
        model, tokenizer = _load_folder(folder)
    return model, tokenizer, folder


def load_folder(spec: ExpertSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
    folder = Path(spec.folder)
    try:
        model, tokenizer = _load_folder(folder)
    except (OSError, ValueError) as error:
        raise SteerlabError(f"cannot load the model folder {folder}: {error}") from None
    check_finite(model, spec.name)
    return model, tokenizer, folder

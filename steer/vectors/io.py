"""llama.cpp control vectors (GGUF): export and import.

Layer convention, pinned by a test: llama.cpp adds tensor `direction.k` to the output of block k
(0-based) at every position, which is steerlab's `blocks.k.hook_resid_post`. llama.cpp rejects
k = 0, so block 0 cannot be exported. Metadata: arch `controlvector`, `controlvector.model_hint`,
`controlvector.layer_count`; steerlab also stores its provenance as JSON under `steerlab.provenance`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from experts.files import atomic_path
from steer.errors import BadVectorFileError
from steer.vectors.vector import Provenance, SteeringVector

if TYPE_CHECKING:
    from experts.expert import Expert

ARCH = "controlvector"


def export_gguf(vector: SteeringVector, path: str | Path, model_hint: str | None = None) -> Path:
    import gguf

    if vector.hook != "hook_resid_post":
        raise BadVectorFileError(f"llama.cpp control vectors act on block outputs (hook_resid_post), not {vector.hook}")
    if 0 in vector.directions:
        raise BadVectorFileError("llama.cpp cannot steer block 0 (direction.0 is rejected); restrict the vector to layers >= 1")
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint or vector.provenance.expert or "unknown")
        writer.add_uint32(f"{ARCH}.layer_count", len(vector.layers))
        writer.add_string("steerlab.provenance", json.dumps(asdict(vector.provenance)))
        for layer in vector.layers:
            writer.add_tensor(f"direction.{layer}", vector.directions[layer].float().cpu().numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def _string_field(reader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def import_gguf(path: str | Path, expert: Expert | None = None, *, force: bool = False) -> SteeringVector:
    """Read a control vector (ours, repeng's or llama.cpp's generator's) as a `SteeringVector`."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as error:
        raise BadVectorFileError(f"{path} is not a readable GGUF file ({error})") from None
    arch = _string_field(reader, "general.architecture")
    if arch != ARCH:
        raise BadVectorFileError(f"{path} is a GGUF of architecture {arch!r}, not a control vector ({ARCH!r})")
    directions = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise BadVectorFileError(f"{path}: unexpected tensor {tensor.name!r} (expected direction.<layer>)")
        directions[int(index)] = torch.from_numpy(np.array(tensor.data, dtype=np.float32)).flatten()
    raw = _string_field(reader, "steerlab.provenance")
    provenance = Provenance(expert=_string_field(reader, f"{ARCH}.model_hint") or "")
    if raw:
        data = json.loads(raw)
        data["typical_norms"] = {int(k): v for k, v in data.get("typical_norms", {}).items()}
        data["coef_range"] = tuple(data["coef_range"]) if data.get("coef_range") else None
        provenance = Provenance(**data)
    vector = SteeringVector(directions=directions, hook="hook_resid_post", provenance=provenance)
    if expert is not None:
        vector.check_compatible(expert, force=force)
    return vector

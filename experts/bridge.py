"""A TransformerBridge over a twin of the expert's HF model that shares its parameters.

Booting a bridge wraps the model it is given in place and forces eager attention. Building it
over a twin keeps the expert's own model untouched (sdpa, no wrappers), so generation keeps HF
speed, while the twin shares every weight and buffer (no copy, and no weight processing).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def parameter_sharing_twin(model: PreTrainedModel) -> PreTrainedModel:
    """A second module tree over the same parameter and buffer storage, with eager attention."""
    config = copy.deepcopy(model.config)
    config._attn_implementation = "eager"
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    twin.load_state_dict(model.state_dict(), assign=True, strict=False)
    for name, buffer in model.named_buffers():
        owner, _, attr = name.rpartition(".")
        twin.get_submodule(owner)._buffers[attr] = buffer
    twin.tie_weights()
    twin.generation_config = model.generation_config
    return twin.eval()


def boot_bridge(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path, device: torch.device):
    """Boot a TransformerBridge for analysis (attention patterns, `hook_z`...) over a twin."""
    from transformer_lens.model_bridge import TransformerBridge

    twin = parameter_sharing_twin(model)
    log.info("booting TransformerBridge over a parameter-sharing twin of %s", folder)
    return TransformerBridge.boot_transformers(
        str(folder), hf_model=twin, tokenizer=tokenizer, device=device, dtype=model.dtype
    )

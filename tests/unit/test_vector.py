import dataclasses

import pytest
import torch

from steer.errors import BadVectorFileError, VectorMismatchError
from steer.vectors.vector import Provenance, SteeringVector


def make(expert, layers=(0, 1), scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        {layer: scale * torch.randn(expert.d_model, generator=g) for layer in layers},
        provenance=Provenance(expert=expert.name, fingerprint=expert.fingerprint, method="test", seed=seed),
    )


def test_arithmetic(tiny_llama):
    v, w = make(tiny_llama, seed=1), make(tiny_llama, layers=(1,), seed=2)
    assert torch.equal((v + w).directions[1], v.directions[1] + w.directions[1])
    assert torch.equal((v + w).directions[0], v.directions[0])
    assert torch.equal((2 * v - w).directions[1], 2 * v.directions[1] - w.directions[1])
    assert torch.equal((-v).directions[0], -v.directions[0])
    assert all(abs(n - 1) < 1e-6 for n in v.normalized().norms.values())
    assert v.restrict([1]).layers == [1]
    with pytest.raises(VectorMismatchError, match=r"layers \[5\]"):
        v.restrict([5])


def test_save_load_round_trip_keeps_provenance(tmp_path, tiny_llama):
    v = dataclasses.replace(make(tiny_llama), provenance=Provenance(
        expert="tiny-llama", fingerprint=tiny_llama.fingerprint, method="mean_diff", typical_norms={0: 3.5},
        coef_range=(1.0, 4.0), seed=3))
    loaded = SteeringVector.load(v.save(tmp_path / "v.safetensors"), tiny_llama)
    assert loaded.provenance == v.provenance
    assert all(torch.equal(loaded.directions[k], v.directions[k]) for k in v.layers)


def test_wrong_expert_is_refused_unless_forced(tmp_path, tiny_llama):
    other = dataclasses.replace(make(tiny_llama), provenance=Provenance(expert="x", fingerprint="deadbeef"))
    path = other.save(tmp_path / "v.safetensors")
    with pytest.raises(VectorMismatchError, match="made for 'x'.*force"):
        SteeringVector.load(path, tiny_llama)
    assert SteeringVector.load(path, tiny_llama, force=True).layers == [0, 1]
    narrow = SteeringVector({0: torch.ones(8)})
    with pytest.raises(VectorMismatchError, match=r"width 8 does not match .* \(d_model 64\)"):
        narrow.check_compatible(tiny_llama)


def test_bad_vectors_and_files(tmp_path):
    with pytest.raises(BadVectorFileError, match="NaN"):
        SteeringVector({0: torch.tensor([1.0, float("nan")])})
    with pytest.raises(BadVectorFileError, match="not steerable"):
        SteeringVector({0: torch.ones(4)}, hook="hook_z")
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"not a file at all")
    with pytest.raises(BadVectorFileError, match="not a readable safetensors"):
        SteeringVector.load(garbage)
    from safetensors.torch import save_file

    save_file({"x": torch.ones(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(BadVectorFileError, match="not a steerlab vector"):
        SteeringVector.load(tmp_path / "foreign.safetensors")


def test_repr_is_short_and_signatures_are_explicit(tiny_llama):
    import inspect

    v = SteeringVector({1: torch.ones(tiny_llama.d_model) * 2, 0: torch.ones(tiny_llama.d_model)},
                       provenance=Provenance(method="mean_diff", dataset="sentiment", expert="tiny-llama"))
    text = repr(v)
    assert text == ("SteeringVector(hook_resid_post, d_model=64, norms={0: 8, 1: 16}, method='mean_diff', "
                    "dataset='sentiment', expert='tiny-llama')") and "tensor" not in text
    from experts.expert import Expert

    for method, names in ((Expert.generate, {"max_new_tokens", "do_sample", "seed", "batch_size", "chat"}),
                          (Expert.run_with_cache, {"reduce", "return_logits", "batch_size", "chat"})):
        assert names <= set(inspect.signature(method).parameters)
        assert "kwargs" not in inspect.signature(method).parameters


def test_apply_and_patch_conveniences_equal_steer_apply(tiny_llama):
    from steer.vectors.apply import Steering, apply

    v = SteeringVector({1: torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0)) * 8})
    with apply(tiny_llama, Steering(v, coef=2.0, positions="generated")):
        reference = tiny_llama.generate("Kelly is", max_new_tokens=5).token_ids
    with v.apply(tiny_llama, coef=2.0, positions="generated"):
        assert tiny_llama.generate("Kelly is", max_new_tokens=5).token_ids == reference
    handle = v.patch(tiny_llama, coef=2.0, positions="generated")
    try:
        assert tiny_llama.generate("Kelly is", max_new_tokens=5).token_ids == reference
    finally:
        handle.remove()
    assert tiny_llama.hooks() == []

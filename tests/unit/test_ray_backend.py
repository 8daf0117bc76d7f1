"""The Ray backend on a real local Ray cluster (2 CPUs, fractional-CPU actors) with tiny experts."""

import json
import shutil
from dataclasses import replace

import pandas as pd
import pytest

from analysis.audit import LETTERS, MANIFEST, AuditConfig, generate_letters, open_run, plan_shards
from experts.errors import SteerlabError
from steer.scale.backends import executor_for
from steer.scale.checkpoint import read_rows
from steer.scale.jobs import LocalExecutor
from steer.vectors.extract import compute_vector

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install 'steerlab[ray]'")

from steer.scale.ray_backend import RayExecutor  # noqa: E402


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    return ray_cluster


def _vector(expert, path):
    from steer.datasets import load_pairs

    pairs, sha = load_pairs("gender")
    compute_vector(expert, pairs[:8], [1], dataset="gender", dataset_sha256=sha).save(path)
    return str(path)


def test_ray_rows_equal_local_rows_row_for_row_and_resume_without_redoing(cluster, tiny_llama, tmp_path):
    config = AuditConfig(expert="tiny-llama", names_per_gender=1, max_new_tokens=8, samples=1,
                         vector=_vector(tiny_llama, tmp_path / "v.safetensors"), coefs=(0.0, 1.0))
    local = open_run(config, tmp_path / "local", tiny_llama)
    generate_letters(tiny_llama, local, batch_size=3, progress=False)
    expected = (tmp_path / "local" / LETTERS).read_text(encoding="utf-8")

    remote = open_run(config, tmp_path / "ray", tiny_llama)
    generate_letters(None, remote, batch_size=3, progress=False, executor=RayExecutor(workers=2, cpus_per_worker=0.5))
    assert (tmp_path / "ray" / LETTERS).read_text(encoding="utf-8") == expected  # same rows, same order, same files

    # a crash after some shards: the rows written stay, only the missing shards run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(tmp_path / "local" / MANIFEST, resumed / MANIFEST)
    lines = expected.splitlines(keepends=True)
    (resumed / LETTERS).write_text("".join(lines[:5]), encoding="utf-8")
    run = open_run(config, resumed, tiny_llama)
    missing = sum(len(s["items"]) for s in plan_shards(run, batch_size=3))
    assert missing == len(lines) - 5
    generate_letters(None, run, batch_size=3, progress=False, executor=RayExecutor(workers=2))
    rows = read_rows(resumed / LETTERS)
    assert len(rows) == len(lines)
    assert rows[:5] == [json.loads(line) for line in lines[:5]]  # untouched
    by_key = {(r["condition"], r["prompt_id"], r["sample"]): r for r in map(json.loads, lines)}
    assert all(by_key[(r["condition"], r["prompt_id"], r["sample"])] == r for r in rows)


def test_local_executor_runs_nothing_for_no_shards_and_bad_settings_are_refused():
    assert list(LocalExecutor().run(None, [])) == []
    with pytest.raises(SteerlabError, match="unknown backend 'spark'"):
        executor_for("spark")
    with pytest.raises(SteerlabError, match="needs --backend ray"):
        executor_for("local", address="auto")
    with pytest.raises(SteerlabError, match="at least 1"):
        RayExecutor(workers=0)


def test_audit_cli_takes_the_ray_backend(cluster, tmp_path, capsys):
    from analysis.cli import main

    out = tmp_path / "audit"
    assert main(["audit", "letters", "--expert", "tiny-llama", "--names-per-gender", "1", "--bios", "4", "--samples", "0",
                 "--max-new-tokens", "6", "--out", str(out), "--backend", "ray", "--workers", "1",
                 "--judge", "tiny-gemma", "--judge-threshold", "100", "--json"]) == 0
    streams = capsys.readouterr()
    record = json.loads(streams.out)
    assert "report:" in streams.err and record["report"] == str(out / "report.md") and "bias_index" in record
    assert len(read_rows(out / LETTERS)) == 8 and (out / "report.md").exists()
    assert main(["audit", "report", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bias_index"] == record["bias_index"]


def _resume_half(src, dst, rows_name, keep):
    """A crash after `keep` rows: the manifest and the first rows of a finished run."""
    dst.mkdir()
    shutil.copy(src / MANIFEST, dst / MANIFEST)
    lines = (src / rows_name).read_text(encoding="utf-8").splitlines(keepends=True)
    (dst / rows_name).write_text("".join(lines[:keep]), encoding="utf-8")
    return lines


def test_steering_sweep_on_ray_equals_local_row_for_row_and_resumes(cluster, tiny_llama, tmp_path):
    from steer.datasets import load_prompts
    from steer.evaluate.scorers import pronouns
    from steer.evaluate.sweep import ROWS, SweepConfig, sweep
    from steer.vectors.vector import SteeringVector

    vector = SteeringVector.load(_vector(tiny_llama, tmp_path / "v.safetensors"), tiny_llama)
    config = SweepConfig(coefs=(-2.0, 0.0, 2.0), max_new_tokens=6, batch_size=2, samples=2,
                         instructions=("Write kindly.", "Write rudely."))
    prompts = load_prompts()[:3]
    local_rows, local_summary = sweep(tiny_llama, vector, prompts, pronouns, config, progress=False, out=tmp_path / "local")
    ray_rows, ray_summary = sweep(tiny_llama, vector, prompts, pronouns, config, progress=False, out=tmp_path / "ray",
                                  executor=RayExecutor(workers=2))
    assert (tmp_path / "ray" / ROWS).read_bytes() == (tmp_path / "local" / ROWS).read_bytes()
    pd.testing.assert_frame_equal(ray_rows, local_rows)
    pd.testing.assert_frame_equal(ray_summary, local_summary)
    assert len(local_rows) == 7 * 3 * 2  # baseline, vector ±2, random ±2, prompting ±1; 3 prompts × 2 samples

    lines = _resume_half(tmp_path / "local", tmp_path / "resumed", ROWS, keep=9)
    resumed_rows, _ = sweep(tiny_llama, vector, prompts, pronouns, config, progress=False, out=tmp_path / "resumed",
                            executor=RayExecutor(workers=2))
    written = (tmp_path / "resumed" / ROWS).read_text(encoding="utf-8").splitlines(keepends=True)
    assert written[:9] == lines[:9] and len(written) == len(lines)  # the first rows untouched, nothing redone
    pd.testing.assert_frame_equal(resumed_rows, local_rows)
    with pytest.raises(SteerlabError, match="another run's results"):
        sweep(tiny_llama, vector, prompts, pronouns, replace(config, seed=1), progress=False, out=tmp_path / "local")


def test_rad_comparison_on_ray_equals_local_row_for_row(cluster, tiny_llama, tmp_path):
    import torch

    from steer.evaluate.scorers import pronouns
    from steer.rad.rewards import ActivationReward, RewardInfo
    from steer.rad.sweep import ROWS, compare, rad_method, steering_method
    from steer.vectors.vector import SteeringVector

    g, d = torch.Generator().manual_seed(0), tiny_llama.d_model
    reward = ActivationReward(torch.randn(d, generator=g), torch.randn(d, 2, generator=g), torch.randn(d, 2, generator=g),
                              0.1, RewardInfo(expert=tiny_llama.name, fingerprint=tiny_llama.fingerprint))
    reward = ActivationReward.load(reward.save(tmp_path / "r.safetensors"), tiny_llama)  # as the CLI has it: from a file
    vector = SteeringVector.load(_vector(tiny_llama, tmp_path / "v.safetensors"), tiny_llama)
    methods = [rad_method(reward, top_k=4), steering_method(vector)]
    strengths = {"activation": [5.0], "steering": [2.0]}
    prompts = ["The weather today", "My neighbour said"]
    kwargs = dict(top_k=4, max_new_tokens=6, samples=2, batch_size=3, progress=False)
    local = compare(tiny_llama, methods, strengths, prompts, pronouns, out=tmp_path / "local", **kwargs)
    remote = compare(tiny_llama, methods, strengths, prompts, pronouns, out=tmp_path / "ray",
                     executor=RayExecutor(workers=2), **kwargs)
    assert (tmp_path / "ray" / ROWS).read_bytes() == (tmp_path / "local" / ROWS).read_bytes()
    for a, b in zip(remote, local):
        pd.testing.assert_frame_equal(a, b)
    assert local[0].tv_distance[local[0].strength == 5.0].gt(0).all()  # the reward moved the distribution

    lines = _resume_half(tmp_path / "local", tmp_path / "resumed", ROWS, keep=5)
    resumed = compare(tiny_llama, methods, strengths, prompts, pronouns, out=tmp_path / "resumed", **kwargs)
    assert (tmp_path / "resumed" / ROWS).read_text(encoding="utf-8").splitlines(keepends=True)[:5] == lines[:5]
    pd.testing.assert_frame_equal(resumed[0], local[0])


def test_sweep_cli_takes_the_ray_backend(cluster, tiny_llama, tmp_path, capsys):
    from analysis.cli import main

    vector = _vector(tiny_llama, tmp_path / "v.safetensors")
    assert main(["vector", "sweep", "--expert", "tiny-llama", "--vector", vector, "--max-prompts", "2", "--coefs", "0,2",
                 "--max-new-tokens", "4", "--scorer", "pronouns", "--out", str(tmp_path / "sweep"),
                 "--backend", "ray", "--workers", "1"]) == 0
    # baseline, vector and random at 2, prompting both ways (the gender set ships instructions); 2 prompts
    assert len(read_rows(tmp_path / "sweep" / "sweep_rows.jsonl")) == 5 * 2 and (tmp_path / "sweep" / "sweep.png").exists()
    capsys.readouterr()

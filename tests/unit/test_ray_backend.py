"""The Ray backend on a real local Ray cluster (2 CPUs, fractional-CPU actors) with tiny experts."""

import json
import shutil

import pytest

from analysis.audit import LETTERS, MANIFEST, AuditConfig, generate_letters, open_run, plan_shards, read_letters
from experts.errors import SteerlabError
from steer.executor import LocalExecutor, executor_for
from steer.extract import compute_vector

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install 'steerlab[ray]'")

from steer.ray_backend import RayExecutor  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


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
    missing = sum(len(s["letters"]) for s in plan_shards(run, batch_size=3))
    assert missing == len(lines) - 5
    generate_letters(None, run, batch_size=3, progress=False, executor=RayExecutor(workers=2))
    rows = read_letters(resumed / LETTERS)
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
    from steer.cli import main

    out = tmp_path / "audit"
    assert main(["audit", "letters", "--expert", "tiny-llama", "--names-per-gender", "1", "--samples", "0",
                 "--max-new-tokens", "6", "--out", str(out), "--backend", "ray", "--workers", "1"]) == 0
    assert "report:" in capsys.readouterr().out
    assert len(read_letters(out / LETTERS)) == 8 and (out / "report.md").exists()

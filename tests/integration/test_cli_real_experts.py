"""Every CLI command of the foundation works on all three real experts."""

import json

import pytest
from safetensors import safe_open

from analysis.cli import main
from experts.registry import REAL_EXPERTS

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(REAL_EXPERTS))
def test_cli_on_real_expert(name, capsys, tmp_path):
    assert main(["experts", "info", "--expert", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_layers"] > 10 and info["d_model"] >= 576

    prompt = "def fibonacci(n):" if "coder" in name else "The capital of France is"
    assert main(["generate", "--expert", name, "--max-new-tokens", "6", "--json", prompt]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["n_tokens"] >= 1 and row["text"].strip()

    out = tmp_path / "acts.safetensors"
    last = f"blocks.{info['n_layers'] - 1}.hook_resid_post"
    assert main(["cache", "--expert", name, "--names", f"blocks.0.hook_resid_pre,{last}", "-o", str(out), prompt]) == 0
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor(f"act.{last}").shape[-1] == info["d_model"]

import json

import pandas as pd

from analysis.cli import main
from steer.vectors.vector import SteeringVector


def _json_record(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_vector_workflow(capsys, tmp_path):
    vector = tmp_path / "v.safetensors"
    made = _json_record(capsys, ["vector", "compute", "--expert", "tiny-llama", "--pairs", "sentiment", "--layers", "1",
                                 "-o", str(vector)])
    assert SteeringVector.load(vector).layers == [1] == made["layers"] and made["pairs"] == "sentiment"
    assert made["fingerprint"] and len(made["sha256"]) == 64 and made["method"] == "mean_diff"
    assert main(["generate", "--expert", "tiny-llama", "--vector", str(vector), "--coef", "2",
                 "--positions", "generated", "--max-new-tokens", "3", "hi"]) == 0
    capsys.readouterr()
    gguf = tmp_path / "v.gguf"
    assert _json_record(capsys, ["vector", "export-gguf", str(vector), str(gguf)])["layers"] == [1]
    imported = _json_record(capsys, ["vector", "import-gguf", "--expert", "tiny-llama", str(gguf),
                                     "-o", str(tmp_path / "w.safetensors")])
    assert imported["layers"] == [1] and imported["expert"] == "tiny-llama"
    out = tmp_path / "sweep"
    swept = _json_record(capsys, ["vector", "sweep", "--expert", "tiny-llama", "--vector", str(vector), "--max-prompts",
                                  "2", "--coefs=-2,0,2", "--max-new-tokens", "4", "--out", str(out)])
    assert {-2, 0, 2} <= {row["coef"] for row in swept["summary"]} and swept["out"] == str(out)
    rows = pd.read_csv(out / "sweep.csv")
    assert {"coef", "score", "perplexity"} <= set(rows.columns) and (out / "sweep.png").stat().st_size > 0


def test_vector_for_another_expert_is_refused(capsys, tmp_path):
    vector = tmp_path / "v.safetensors"
    assert main(["vector", "compute", "--expert", "tiny-llama", "--pairs", "sentiment", "--layers", "1", "-o", str(vector)]) == 0
    capsys.readouterr()
    assert main(["generate", "--expert", "tiny-gemma", "--vector", str(vector), "hi"]) == 2
    assert "made for 'tiny-llama'" in capsys.readouterr().err
    assert main(["vector", "compute", "--expert", "tiny-llama", "--pairs", "sentiment", "--layers", "x", "-o", "y"]) == 2
    assert "bad --layers 'x'" in capsys.readouterr().err

import pandas as pd

from steer.cli import main
from steer.vector import SteeringVector


def test_vector_workflow(capsys, tmp_path):
    vector = tmp_path / "v.safetensors"
    assert main(["vector", "compute", "--expert", "tiny-llama", "--pairs", "sentiment", "--layers", "1",
                 "-o", str(vector)]) == 0
    assert SteeringVector.load(vector).layers == [1]
    assert main(["generate", "--expert", "tiny-llama", "--vector", str(vector), "--coef", "2",
                 "--positions", "generated", "--max-new-tokens", "3", "hi"]) == 0
    gguf = tmp_path / "v.gguf"
    assert main(["vector", "export-gguf", str(vector), str(gguf)]) == 0
    assert main(["vector", "import-gguf", "--expert", "tiny-llama", str(gguf), "-o", str(tmp_path / "w.safetensors")]) == 0
    out = tmp_path / "sweep"
    assert main(["vector", "sweep", "--expert", "tiny-llama", "--vector", str(vector), "--max-prompts", "2",
                 "--coefs=-2,0,2", "--max-new-tokens", "4", "--out", str(out)]) == 0
    rows = pd.read_csv(out / "sweep.csv")
    assert {"coef", "score", "perplexity"} <= set(rows.columns) and (out / "sweep.png").stat().st_size > 0
    capsys.readouterr()


def test_vector_for_another_expert_is_refused(capsys, tmp_path):
    vector = tmp_path / "v.safetensors"
    assert main(["vector", "compute", "--expert", "tiny-llama", "--pairs", "sentiment", "--layers", "1", "-o", str(vector)]) == 0
    capsys.readouterr()
    assert main(["generate", "--expert", "tiny-gemma", "--vector", str(vector), "hi"]) == 2
    assert "made for 'tiny-llama'" in capsys.readouterr().err
    assert main(["vector", "compute", "--expert", "tiny-llama", "--pairs", "sentiment", "--layers", "x", "-o", "y"]) == 2
    assert "bad --layers 'x'" in capsys.readouterr().err

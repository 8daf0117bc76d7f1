import json

import pandas as pd

from analysis.cli import main


def test_lexicon_command(capsys, tmp_path):
    csv = tmp_path / "letters.csv"
    pd.DataFrame({"body": ["He is a natural leader and leads well.", "She is warm and kind."], "g": ["m", "f"]}).to_csv(csv)
    assert main(["audit", "lexicon", "--letters", str(csv), "--text-column", "body", "--group-column", "g",
                 "--groups", "m,f", "--json"]) == 0
    ors = json.loads(capsys.readouterr().out)
    assert len(ors) == 9 and ors["leadership"] > 1 > ors["communal"]
    assert main(["audit", "lexicon", "--letters", str(csv), "--text-column", "body", "--group-column", "g",
                 "--groups", "m,f", "--mode", "legacy"]) == 0
    assert "leans towards 'm'" in capsys.readouterr().out


def test_lexicon_command_bad_input(capsys, tmp_path):
    csv = tmp_path / "letters.csv"
    pd.DataFrame({"body": ["x"], "g": ["m"]}).to_csv(csv)
    assert main(["audit", "lexicon", "--letters", str(csv), "--text-column", "text", "--group-column", "g"]) == 2
    assert "has no column 'text'; its columns are" in capsys.readouterr().err
    assert main(["audit", "lexicon", "--letters", str(csv), "--text-column", "body", "--group-column", "g",
                 "--groups", "m,f"]) == 2
    assert "group 'f' has no rows in column 'g'; values present: m" in capsys.readouterr().err
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"body,g\ncaf\xe9,m\n")
    assert main(["audit", "lexicon", "--letters", str(latin), "--text-column", "body", "--group-column", "g"]) == 2
    assert "is not UTF-8" in capsys.readouterr().err
    assert main(["audit", "report", str(tmp_path)]) == 2
    assert "holds no scored audit" in capsys.readouterr().err


def test_mitigate_runs_the_study_side_by_side(capsys, tmp_path):
    assert main(["audit", "mitigate", "--expert", "tiny-llama", "--out", str(tmp_path / "study"), "--names-per-gender",
                 "1", "--bios", "2", "--max-new-tokens", "4", "--coefs", "1,2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [row["condition"] for row in record["conditions"]] == [
        "unsteered", "planted", "planted+counter@1,women@0.5", "planted+counter@2,women@1", "planted+random@2,women@1",
        "planted+prompt", "planted+bias@4", "planted+erase"]
    assert record["reference"] == "planted" and record["manifest"]["config"]["plant_coef"] == 2.0
    assert record["manifest"]["config"]["female_scale"] == 0.5 and record["manifest"]["config"]["state_pronouns"]
    letters = [json.loads(line) for line in (tmp_path / "study" / "audit" / "letters.jsonl").read_text().splitlines()]
    said = {r["condition"]: r["instruction"] for r in letters if r["gender"] == "female"}
    assert said["planted"] == "" and said["planted+counter@1,women@0.5"].startswith("Refer to ")
    assert said["planted+prompt"].endswith("as she/her.") and len(said["planted+prompt"]) > len(said["planted+erase"])
    assert record["manifest"]["config"]["logit_biases"] == [4.0]
    assert {"content_direction.safetensors", "planted_skew.safetensors", "gender_eraser.safetensors",
            "gender_eraser_check.json", "audit"} <= {p.name for p in (tmp_path / "study").iterdir()}
    check = json.loads((tmp_path / "study" / "gender_eraser_check.json").read_text())
    assert check["layers"] == [1] and check["name_pairs"] == 22 and set(check) >= {"gap_before", "gap_after", "share_left"}
    assert main(["audit", "mitigate", "--expert", "tiny-llama", "--out", str(tmp_path / "bad"), "--coefs", "x"]) == 2
    assert "--coefs" in capsys.readouterr().err
    assert main(["audit", "mitigate", "--expert", "tiny-llama", "--out", str(tmp_path / "bad"), "--logit-bias", "-2"]) == 2
    assert "logit bias strengths must be finite and > 0" in capsys.readouterr().err

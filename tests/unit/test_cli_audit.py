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


def test_mitigate_fits_on_one_half_and_judges_on_the_other(capsys, tmp_path):
    judge = ["--judge", "tiny-gemma", "--judge-threshold", "100"]
    assert main(["audit", "mitigate", "--expert", "tiny-llama", "--out", str(tmp_path / "study"), "--names-per-gender",
                 "1", "--bios", "2", "--max-new-tokens", "4", "--coefs", "1,2", *judge, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    fitted = record["manifest"]["config"]["coefs"]
    assert len(fitted) == 1 and fitted[0] in (1.0, 2.0)
    c = f"{fitted[0]:g}"
    assert [row["condition"] for row in record["conditions"]] == [
        "unsteered", "planted", f"planted+counter@{c}", f"planted+random@{c}", "planted+prompt", f"counter@{c}"]
    assert record["reference"] == "planted" and record["plant"] == "prompt" and record["manifest"]["config"]["plant_prompt"]
    assert record["manifest"]["config"]["half"] == "test" and not record["manifest"]["config"]["state_pronouns"]
    assert record["study"]["fitted"].startswith(f"the counter-steering strength ({c} for men's letters) was fitted")
    assert [row["condition"] for row in record["study"]["fit"]] == ["unsteered", "planted", "planted+counter@1",
                                                                    "planted+counter@2"]
    assert set(record["study"]["cosines"]) == {"content direction (layer 0)", "random vector (layer 0)"}  # 40% of 2
    fit = json.loads((tmp_path / "study" / "fit" / "results.json").read_text())
    test_pairs = {r["pair_id"] for r in map(json.loads, (tmp_path / "study" / "audit" / "letters.jsonl").open())}
    fit_pairs = {r["pair_id"] for r in map(json.loads, (tmp_path / "study" / "fit" / "letters.jsonl").open())}
    assert fit["manifest"]["config"]["half"] == "fit" and not test_pairs & fit_pairs  # fitted on other letters
    letters = [json.loads(line) for line in (tmp_path / "study" / "audit" / "letters.jsonl").read_text().splitlines()]
    said = {r["condition"]: r["instruction"] for r in letters if r["gender"] == "female"}
    assert said["unsteered"] == "" == said[f"counter@{c}"] and said["planted"] == "Stress her warmth, kindness and care for others."
    assert said["planted+prompt"] == "Stress her warmth, kindness and care for others. Stress her ambition, leadership and achievements."
    assert {"content_direction.safetensors", "plant_prompt_direction.safetensors", "fit", "audit"} <= {
        p.name for p in (tmp_path / "study").iterdir()}
    assert main(["audit", "mitigate", "--expert", "tiny-llama", "--out", str(tmp_path / "bad"), "--coefs", "x"]) == 2
    assert "--coefs" in capsys.readouterr().err
    assert main(["audit", "mitigate", "--expert", "tiny-llama", "--out", str(tmp_path / "bad"), "--coefs", "-1"]) == 2
    assert "counter-steering strengths must be > 0" in capsys.readouterr().err
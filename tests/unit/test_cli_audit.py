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

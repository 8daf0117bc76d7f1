"""Letters a user already has: read from CSV, JSONL or Wan et al.'s repository layout, and audited in full."""

import csv
import json

import pandas as pd
import pytest

from analysis.cli import main
from analysis.letters_file import LetterColumns, load_letters, read_letters, wan2023_letters
from experts.errors import SteerlabError

LETTER = ("To the committee:\n\nI recommend {name} without reservation. {She} led our robotics club for two years and "
          "{her} projects won two prizes. {name} is careful and kind with {her} peers. I recommend {him} warmly.\n\n"
          "Sincerely,\nDr. Ames")
NAMES = [("Kelly", "Joseph"), ("Emily", "Daniel"), ("Sarah", "Ryan"), ("Laura", "Kevin")]


def _letters() -> pd.DataFrame:
    rows = []
    for i, (woman, man) in enumerate(NAMES):
        rows.append({"pair": f"p{i}", "sex": "F", "who": woman, "body": LETTER.format(name=woman, She="She", her="her", him="her")})
        rows.append({"pair": f"p{i}", "sex": "m", "who": man, "body": LETTER.format(name=man, She="He", her="his", him="him")})
    rows.append({"pair": "alone", "sex": "f", "who": "Amber", "body": "A letter without a twin."})
    return pd.DataFrame(rows)


COLUMNS = LetterColumns(text="body", name="who", gender="sex", pair="pair")


def test_csv_and_jsonl_read_the_same_and_drop_letters_without_a_twin(tmp_path):
    _letters().to_csv(tmp_path / "letters.csv", index=False)
    (tmp_path / "letters.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _letters().to_dict("records")))
    from_csv, from_jsonl = read_letters(tmp_path / "letters.csv", COLUMNS), read_letters(tmp_path / "letters.jsonl", COLUMNS)
    pd.testing.assert_frame_equal(from_csv, from_jsonl)
    assert len(from_csv) == 8 and set(from_csv.gender) == {"female", "male"} and "alone" not in set(from_csv.pair_id)


def test_bad_letters_files_are_named(tmp_path):
    frame = _letters()
    frame.to_csv(tmp_path / "letters.csv", index=False)
    with pytest.raises(SteerlabError, match=r"has no column\(s\) \['letter'\]; its columns are pair, sex, who, body"):
        read_letters(tmp_path / "letters.csv", LetterColumns(name="who", gender="sex", pair="pair"))
    frame.assign(sex="x").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SteerlabError, match=r"unknown gender value\(s\) \['x'\]; use one of"):
        read_letters(tmp_path / "bad.csv", COLUMNS)
    with pytest.raises(SteerlabError, match="unknown letters format 'xml'; choose one of csv, jsonl, wan2023-cbg"):
        load_letters(tmp_path / "letters.csv", "xml")
    with pytest.raises(SteerlabError, match="has no folder generated_letters/chatgpt/cbg"):
        wan2023_letters(tmp_path, "cbg")


def _wan_repository(root):
    """Wan et al.'s layout in miniature: a per-occupation file with each seed biography's female and male letter."""
    folder = root / "generated_letters" / "chatgpt" / "cbg"
    folder.mkdir(parents=True)
    fields = ["first_name", "last_name", "gender", "info", "seed_first_name", "seed_last_name", "occupation", "chatgpt_gen"]
    with (folder / "df_f_chefs_2_para_w_chatgpt.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for i, (woman, man) in enumerate(NAMES):
            for first, gender, she, her, him in ((woman, "f", "She", "her", "her"), (man, "m", "He", "his", "him")):
                writer.writerow({"first_name": first, "last_name": f"Doe{i}", "gender": gender, "info": "", "occupation": "chefs",
                                 "seed_first_name": "Seed", "seed_last_name": f"Bio{i}",
                                 "chatgpt_gen": LETTER.format(name=f"{first} Doe{i}", She=she, her=her, him=him).replace("\n", "<return>")})
    (folder / "df_f_chefs_2_para_w_chatgpt-eval.csv").write_text("not,letters\n")


def test_wan_letters_pair_by_seed_biography(tmp_path):
    _wan_repository(tmp_path)
    frame, record = load_letters(tmp_path, "wan2023-cbg")
    assert len(frame) == 8 and frame.pair_id.nunique() == 4 and frame.letter.str.contains("\n\nSincerely").all()
    assert list(record["files"]) == ["generated_letters/chatgpt/cbg/df_f_chefs_2_para_w_chatgpt.csv"]
    assert frame.groupby("pair_id").gender.apply(sorted).tolist() == [["female", "male"]] * 4


def test_letters_file_runs_the_full_audit_and_rebuilds_the_same_report(tmp_path, capsys):
    _wan_repository(tmp_path / "repo")
    out = tmp_path / "audit"
    assert main(["audit", "letters-file", str(tmp_path / "repo"), "--format", "wan2023-cbg", "--out", str(out),
                 "--judge", "tiny-gemma", "--judge-threshold", "100", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["manifest"]["source"]["pairs"] == 4 and record["judge"]["expert"] == "tiny-gemma"
    assert record["published"].startswith("Wan et al. (2023) report") and "paper_style_test" in record
    # the twins differ only in identity: every score the same, so the gaps are 0 and the swap test passes
    assert [skew["mean"] for skew in record["skew"]] == [0.0, 0.0]
    assert all(entry["passes"] and entry["offset"] == 0 for entry in record["swap_test"].values())
    first = (out / "results.json").read_text()
    assert main(["audit", "report", str(out)]) == 0
    assert (out / "results.json").read_text() == first
    assert main(["audit", "letters-file", str(tmp_path / "repo"), "--format", "wan2023-cbg", "--out", str(out),
                 "--judge", "tiny-gemma"]) == 2
    assert "no calibrated fluency limit for judge 'tiny-gemma'" in capsys.readouterr().err

"""Letters a user already has, read into the audit's frame: one row per letter with its twin pair, the candidate's
gender and name, and the text.

- A CSV or JSONL file with named columns (`LetterColumns`: text, name, gender, pair id, optionally a cluster such
  as the name pair or occupation that several twin pairs share).
- Wan et al.'s released ChatGPT letters, read from a checkout of their public repository
  (uclanlp/biases-llm-reference-letters, MIT): the context-based letters (`cbg`: one file per occupation and
  seed gender, each biography rewritten for a woman and for a man, so each seed biography is a twin pair) and
  the context-less ones (`clg`: Kelly and Joseph over 12 occupations x 5 ages).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experts.errors import SteerlabError
from experts.files import file_sha256
from steer.datasets import read_text

GENDERS = {"female": "female", "f": "female", "woman": "female", "w": "female",
           "male": "male", "m": "male", "man": "male"}
FORMATS = ("csv", "jsonl", "wan2023-cbg", "wan2023-clg")
WAN_REPOSITORY = "uclanlp/biases-llm-reference-letters"


@dataclass(frozen=True)
class LetterColumns:
    """Which column holds what (`cluster`: optional, twin pairs that share it are not independent)."""

    text: str = "letter"
    name: str = "name"
    gender: str = "gender"
    pair: str = "pair_id"
    cluster: str | None = None


def _frame(path: Path, kind: str) -> pd.DataFrame:
    text = read_text(str(path))
    try:
        if kind == "jsonl":
            return pd.DataFrame([json.loads(line) for line in text.splitlines() if line.strip()])
        return pd.read_csv(io.StringIO(text))
    except (json.JSONDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise SteerlabError(f"cannot read {path} as {kind.upper()}: {error}") from None


def _normalise(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Genders as female/male (a bad value is named), text as str, and letters whose twin is missing dropped."""
    genders = frame["gender"].astype(str).str.strip().str.lower()
    bad = sorted(set(genders[~genders.isin(GENDERS)]))
    if bad:
        raise SteerlabError(f"{source}: unknown gender value(s) {bad[:5]}; use one of {', '.join(sorted(GENDERS))}")
    frame = frame.assign(gender=genders.map(GENDERS), letter=frame["letter"].fillna("").astype(str),
                         name=frame["name"].astype(str).str.strip(), pair_id=frame["pair_id"].astype(str))
    complete = frame.groupby("pair_id").gender.nunique() == 2
    frame = frame[frame.pair_id.isin(complete[complete].index)].reset_index(drop=True)
    if frame.empty:
        raise SteerlabError(f"{source}: no twin pair has both a female and a male letter")
    return frame


def read_letters(path: str | Path, columns: LetterColumns = LetterColumns(), kind: str | None = None) -> pd.DataFrame:
    """A CSV or JSONL file of letters as the audit's frame (`pair_id`, `gender`, `name`, `letter`, `cluster`)."""
    path = Path(path)
    kind = kind or ("jsonl" if path.suffix.lower() in (".jsonl", ".json") else "csv")
    if kind not in ("csv", "jsonl"):
        raise SteerlabError(f"unknown letters format {kind!r}; choose one of {', '.join(FORMATS)}")
    frame = _frame(path, kind)
    wanted = {"letter": columns.text, "name": columns.name, "gender": columns.gender, "pair_id": columns.pair}
    if columns.cluster:
        wanted["cluster"] = columns.cluster
    missing = [column for column in wanted.values() if column not in frame.columns]
    if missing:
        raise SteerlabError(f"{path} has no column(s) {missing}; its columns are {', '.join(map(str, frame.columns))}")
    frame = frame[list(wanted.values())].rename(columns={v: k for k, v in wanted.items()})
    return _normalise(frame, str(path))


def _wan_rows(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    return list(csv.DictReader(io.StringIO(read_text(str(path)))))


def wan2023_files(repository: str | Path, setting: str = "cbg") -> list[Path]:
    """The files of Wan et al.'s released ChatGPT letters in a checkout of their repository: the context-less
    letters (`clg`) or the per-occupation files of the context-based ones (`cbg`)."""
    root = Path(repository)
    folder = root / "generated_letters" / "chatgpt" / setting
    if setting not in ("cbg", "clg") or not folder.is_dir():
        raise SteerlabError(f"{root} has no folder generated_letters/chatgpt/{setting} (a checkout of "
                            f"{WAN_REPOSITORY}, with setting cbg or clg)")
    if setting == "clg":
        return [folder / "clg_letters.csv"]
    files = sorted(folder.glob("df_*_2_para_w_chatgpt.csv"))
    if not files:
        raise SteerlabError(f"{folder} holds no per-occupation letter files (df_*_2_para_w_chatgpt.csv)")
    return files


def wan2023_letters(repository: str | Path, setting: str = "cbg") -> pd.DataFrame:
    """Wan et al.'s released ChatGPT letters from a checkout of their repository, as twin pairs."""
    files = wan2023_files(repository, setting)
    rows = []
    if setting == "clg":
        for row in _wan_rows(files[0]):
            rows.append({"pair_id": f"{row['occupation']}:{row['age']}", "gender": row["gender"], "name": row["name"],
                         "letter": row["chatgpt_gen"], "cluster": row["occupation"], "occupation": row["occupation"]})
    else:
        for path in files:
            seen: dict[tuple[str, str], int] = {}
            for row in _wan_rows(path):
                seed = (row["seed_first_name"], row["seed_last_name"], row["gender"])
                k = seen[seed] = seen.get(seed, -1) + 1
                # the k-th letter of this gender on this seed biography pairs with the k-th of the other gender
                rows.append({"pair_id": f"{path.stem}:{seed[0]} {seed[1]}:{k}", "gender": row["gender"],
                             "name": f"{row['first_name']} {row['last_name']}", "letter": row["chatgpt_gen"],
                             "cluster": f"{path.stem}:{seed[0]} {seed[1]}", "occupation": row["occupation"]})
    frame = pd.DataFrame(rows)
    frame["letter"] = frame["letter"].str.replace("<return>", "\n", regex=False)
    return _normalise(frame, str(files[0].parent))


def load_letters(path: str | Path, kind: str | None = None, columns: LetterColumns = LetterColumns()) -> tuple[pd.DataFrame, dict]:
    """Letters from a file (`csv`, `jsonl`) or Wan et al.'s repository (`wan2023-cbg`, `wan2023-clg`), with a
    record of what was read (the path and each file's sha256)."""
    if kind is not None and kind not in FORMATS:
        raise SteerlabError(f"unknown letters format {kind!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise SteerlabError(f"{path} does not exist")
    if kind and kind.startswith("wan2023"):
        setting = kind.removeprefix("wan2023-")
        frame = wan2023_letters(path, setting)
        files = {p.relative_to(path).as_posix(): file_sha256(p) for p in wan2023_files(path, setting)}
    else:
        frame = read_letters(path, columns, kind)
        files = {path.name: file_sha256(path)}
    return frame, {"source": str(path), "format": kind or path.suffix.lstrip(".").lower(), "files": files,
                   "letters": len(frame), "pairs": int(frame.pair_id.nunique())}

"""Contrastive pairs and prompt lists: the shipped sets by name, or any JSONL/text file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from steer.errors import BadDataError

_DATA = files("steer") / "data"


@dataclass(frozen=True)
class ContrastPair:
    """Two answers that differ in one concept; `prompt` (optional) is shared by both."""

    positive: str
    negative: str
    prompt: str = ""


def builtin_datasets() -> dict[str, dict[str, Any]]:
    return json.loads((_DATA / "datasets.json").read_text(encoding="utf-8"))


def resolve_dataset(name_or_path: str) -> Path:
    builtin = builtin_datasets()
    if name_or_path in builtin:
        return Path(str(_DATA / builtin[name_or_path]["file"]))
    path = Path(name_or_path)
    if not path.is_file():
        raise BadDataError(f"no dataset {name_or_path!r}: not a file, nor one of {', '.join(builtin)}")
    return path


def read_text(path: str | Path) -> str:
    """A data file's text; non-UTF-8 or unreadable files raise `BadDataError` naming the file."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise BadDataError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise BadDataError(f"cannot read {path}: {error.strerror}") from None


_PAIR_FIELDS = ("positive", "negative")
_CAA_FIELDS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
_FORMATS = ('{"positive", "negative"[, "prompt"]} or a CAA record '
            '{"question", "answer_matching_behavior", "answer_not_matching_behavior"}')


def _text_fields(record: dict, fields: Sequence[str], where: str) -> list[str]:
    missing = [f for f in fields if f not in record]
    if missing:
        raise BadDataError(f"{where}: missing field(s) {', '.join(missing)}; expected {_FORMATS}")
    bad = [f for f in fields if not isinstance(record[f], str)]
    if bad:
        kinds = ", ".join(f"{f} is {type(record[f]).__name__}" for f in bad)
        raise BadDataError(f"{where}: fields must be strings ({kinds})")
    return [record[f] for f in fields]


def _pair(record: Any, where: str) -> ContrastPair:
    if isinstance(record, dict) and ("positive" in record or "negative" in record):
        positive, negative = _text_fields(record, _PAIR_FIELDS, where)
        prompt = _text_fields(record, ("prompt",), where)[0] if "prompt" in record else ""
        return ContrastPair(positive, negative, prompt)
    if isinstance(record, dict) and any(f in record for f in _CAA_FIELDS):  # CAA A/B question
        question, matching, not_matching = _text_fields(record, _CAA_FIELDS, where)
        return ContrastPair(matching, not_matching, question)
    raise BadDataError(f"{where}: expected {_FORMATS}")


def load_pairs(name_or_path: str) -> tuple[list[ContrastPair], str]:
    """Pairs from a shipped set or a JSONL file, and the file's sha256 (for provenance)."""
    path = resolve_dataset(name_or_path)
    text = read_text(path)
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadDataError(f"{path}:{number}: not JSON ({error.msg})") from None
        pairs.append(_pair(record, f"{path}:{number}"))
    if len(pairs) < 2:
        raise BadDataError(f"{path} holds {len(pairs)} pairs; at least 2 are needed")
    return pairs, hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts one per line (blank lines skipped); default: the shipped neutral prompts."""
    path = Path(str(_DATA / "neutral_prompts.txt")) if path is None else Path(path)
    prompts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise BadDataError(f"{path} holds no prompts")
    return prompts

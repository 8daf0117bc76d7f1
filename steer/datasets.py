"""Contrastive pairs and prompt lists: the shipped sets by name, or any JSONL/text file."""

from __future__ import annotations

import hashlib
import json
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


def _pair(record: Any, where: str) -> ContrastPair:
    if isinstance(record, dict) and "positive" in record and "negative" in record:
        return ContrastPair(str(record["positive"]), str(record["negative"]), str(record.get("prompt", "")))
    if isinstance(record, dict) and "answer_matching_behavior" in record:  # CAA A/B question
        return ContrastPair(
            str(record["answer_matching_behavior"]),
            str(record["answer_not_matching_behavior"]),
            str(record["question"]),
        )
    raise BadDataError(
        f"{where}: expected {{\"positive\", \"negative\"[, \"prompt\"]}} or a CAA record "
        "{\"question\", \"answer_matching_behavior\", \"answer_not_matching_behavior\"}"
    )


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

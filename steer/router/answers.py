"""Each expert's greedy answer to each task, appended to a JSONL file per expert as batches finish, so that a
long run resumes where it stopped and a finished one is read back instead of generated again."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from steer.router.tasks import Task

if TYPE_CHECKING:
    from experts.expert import Expert

# New tokens an answer may take, by domain: a whole function, a letter, a story; short answers elsewhere.
ANSWER_TOKENS = {"code": 256, "writing": 224, "stories": 160, "knowledge": 64, "languages": 48, "math": 96}
DEFAULT_ANSWER_TOKENS = 128


@dataclass(frozen=True)
class Answer:
    task_id: str
    query_sha256: str  # the query answered: an answer is reused only for the same query and weights
    expert: str
    fingerprint: str
    text: str
    new_tokens: int
    finish_reason: str
    seconds: float  # wall time of its batch, shared out per row


def query_sha256(query: str) -> str:
    return hashlib.sha256(query.encode("utf-8")).hexdigest()


def read_answers(path: Path) -> dict[str, Answer]:
    """The answers written so far (a torn last line from an interrupted run is ignored)."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = Answer(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        out[row.task_id] = row
    return out


def _append(path: Path, rows: Sequence[Answer]) -> None:
    """Append rows, each on its own line (after a torn last line from an interrupted run, on a fresh one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as f:
        if torn:
            f.write("\n")
        f.writelines(json.dumps(asdict(row)) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())


def answer_budget(task: Task, cap: int | None = None) -> int:
    budget = ANSWER_TOKENS.get(task.domain, DEFAULT_ANSWER_TOKENS)
    return budget if cap is None else min(budget, cap)


def generate_answers(expert: Expert, tasks: Sequence[Task], path: str | Path, *, batch_size: int = 8,
                     max_new_tokens: int | None = None, progress: bool = True) -> dict[str, Answer]:
    """Greedy answers of `expert` to every task not yet in `path` (batched by domain, longest budget last; budgets
    capped at `max_new_tokens` when given); returns all answers for `tasks` (the last one written per task wins)."""
    path = Path(path)
    done = read_answers(path)
    todo = [t for t in tasks if t.id not in done or done[t.id].fingerprint != expert.fingerprint
            or done[t.id].query_sha256 != query_sha256(t.query)]
    todo.sort(key=lambda t: (answer_budget(t, max_new_tokens), t.domain))
    bar = tqdm(total=len(todo), disable=not progress, desc=f"answers {expert.name}", unit="task")
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        budget = max(answer_budget(t, max_new_tokens) for t in batch)
        began = time.perf_counter()
        result = expert.generate([t.query for t in batch], max_new_tokens=budget, batch_size=len(batch))
        seconds = (time.perf_counter() - began) / len(batch)
        rows = [Answer(t.id, query_sha256(t.query), expert.name, expert.fingerprint, text, len(ids), reason, round(seconds, 3))
                for t, text, ids, reason in zip(batch, result.texts, result.token_ids, result.finish_reasons)]
        _append(path, rows)
        done.update({row.task_id: row for row in rows})
        bar.update(len(batch))
    bar.close()
    return {t.id: done[t.id] for t in tasks}

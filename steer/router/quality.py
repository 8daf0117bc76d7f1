"""Per-query quality of every expert: bits per byte of the reference answer under the expert
(comparable across tokenizers) and, for code, pass@1 of its greedy answer against the task's unit
tests (run in a subprocess with a timeout). Results are checkpointed per expert, so a long run
resumes where it stopped."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from tqdm.auto import tqdm

from experts.files import atomic_path
from experts.likelihood import continuation_nll
from steer.router.tasks import Task

if TYPE_CHECKING:
    from experts.expert import Expert


def bits_per_byte(expert: Expert, tasks: Sequence[Task], batch_size: int = 8) -> list[float]:
    """Total NLL of each reference after its (chat-formatted) query, in bits per UTF-8 byte."""
    formatted = expert.format_prompts([t.query for t in tasks])
    references = [expert.tokenizer(t.reference, add_special_tokens=False)["input_ids"] for t in tasks]
    mean_nll = continuation_nll(expert, formatted, references, batch_size=batch_size)
    return [m * len(ids) / math.log(2) / len(t.reference.encode("utf-8"))
            for m, ids, t in zip(mean_nll, references, tasks)]


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(answer: str) -> str:
    """The first fenced code block of an answer, or the whole answer when it has none."""
    match = _FENCE.search(answer)
    return match.group(1) if match else answer


def passes_tests(code: str, tests: str, timeout: float = 5.0) -> bool:
    """Run `code` then `tests` in a fresh Python process; True when it exits cleanly in time."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "check.py"
        script.write_text(f"{code}\n\n{tests}\n", encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, timeout=timeout, cwd=folder)
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def pass_at_1(expert: Expert, tasks: Sequence[Task], max_new_tokens: int = 160, batch_size: int = 8) -> list[float]:
    """Greedy answer per code task, 1.0 when its code passes the task's tests (nan for non-code tasks)."""
    code_tasks = [t for t in tasks if t.tests]
    if not code_tasks:
        return [float("nan")] * len(tasks)
    answers = expert.generate([t.query for t in code_tasks], max_new_tokens=max_new_tokens,
                       batch_size=batch_size).texts
    passed = {t.id: float(passes_tests(extract_code(a), t.tests)) for t, a in zip(code_tasks, answers)}
    return [passed.get(t.id, float("nan")) for t in tasks]


def quality_table(experts: Sequence[str], tasks: Sequence[Task], out: str | Path, *, with_pass_at_1: bool = True,
                  progress: bool = True) -> pd.DataFrame:
    """Rows (task, expert) with `bpb`, `pass_at_1`, `n_params`, `answer_tokens`; one CSV per expert
    under `out` (reused when present: delete it to recompute)."""
    from experts.expert import Expert

    frames = []
    for name in tqdm(experts, disable=not progress, desc="quality", unit="expert"):
        path = Path(out) / f"quality_{name}.csv"
        if path.exists():
            frame = pd.read_csv(path)
            if set(frame.task_id) >= {t.id for t in tasks}:
                frames.append(frame[frame.task_id.isin({t.id for t in tasks})])
                continue
        expert = Expert.load(name)
        frame = pd.DataFrame({
            "task_id": [t.id for t in tasks], "expert": name, "bpb": bits_per_byte(expert, tasks),
            "pass_at_1": pass_at_1(expert, tasks) if with_pass_at_1 else float("nan"),
            "n_params": sum(p.numel() for p in expert.model.parameters()), "fingerprint": expert.fingerprint,
            "answer_tokens": [len(expert.tokenizer(t.reference, add_special_tokens=False)["input_ids"]) for t in tasks],
            "prompt_tokens": [len(ids) for ids in map(expert.encode, expert.format_prompts([t.query for t in tasks]))],
        })
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)

"""Per-query quality of every expert, measured on its own greedy answer (`steer.router.answers`): graded by what
the task is (`steer.router.grading`), code by running the task's unit tests in a sandboxed subprocess. Answers are
checkpointed per expert as they are written, so a long run resumes where it stopped."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from experts.files import atomic_path
from steer.router.answers import Answer, generate_answers
from steer.router.grading import Grade, grade
from steer.router.humaneval import is_humaneval, program
from steer.router.tasks import Task

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(answer: str) -> str:
    """The first fenced code block of an answer, or the whole answer when it has none."""
    match = _FENCE.search(answer)
    return match.group(1) if match else answer


SANDBOX_MEMORY = 1 << 30  # bytes of address space a test run may take
SANDBOX_FILE_SIZE = 1 << 20  # bytes a test run may write to one file


def _sandbox_limits(timeout: float) -> None:
    """In the child, before exec: its own session, and limits on memory, CPU time, file size and processes."""
    import resource

    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (SANDBOX_MEMORY, SANDBOX_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(timeout) + 1, math.ceil(timeout) + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (SANDBOX_FILE_SIZE, SANDBOX_FILE_SIZE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def passes_tests(code: str, tests: str, timeout: float = 5.0) -> bool:
    """Run `code` then `tests` in a fresh, isolated Python process (`-I`, an empty temporary folder, a bare
    environment, limits on memory, CPU, files and a wall-clock timeout); True when it exits cleanly in time."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "check.py"
        script.write_text(f"{code}\n\n{tests}\n", encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, timeout=timeout, cwd=folder,
                                  env={"PATH": os.defpath, "PYTHONHASHSEED": "0"}, stdin=subprocess.DEVNULL,
                                  preexec_fn=lambda: _sandbox_limits(timeout))
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def code_to_run(task: Task, answer: str) -> str:
    """The program a code task's tests run against: the answer's code (for a HumanEval problem, completed with the
    problem's own prompt where the answer leaves it out)."""
    code = extract_code(answer)
    return program(task, code) if is_humaneval(task) else code


def grade_answer(task: Task, text: str, finish_reason: str, timeout: float = 5.0) -> Grade:
    """One answer graded (`steer.router.grading`); code runs against the task's tests in the sandbox."""
    return grade(task, text, finish_reason, passes_tests(code_to_run(task, text), task.tests, timeout) if task.tests else None)


def grade_answers(tasks: Sequence[Task], answers: dict[str, Answer], timeout: float = 5.0) -> list[Grade]:
    """Each task's answer graded (`grade_answer`)."""
    return [grade_answer(t, answers[t.id].text, answers[t.id].finish_reason, timeout) for t in tasks]


def _table_path(out: str | Path, expert: str) -> Path:
    return Path(out) / f"quality_{expert}.csv"


def stored_quality(out: str | Path, expert: str) -> pd.DataFrame | None:
    """The quality table `quality_table` wrote for `expert` in `out`, or None where there is none."""
    path = _table_path(out, expert)
    return pd.read_csv(path) if path.exists() else None


def quality_table(experts: Sequence[str], tasks: Sequence[Task], out: str | Path, *, batch_size: int = 8,
                  max_new_tokens: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Rows (task, expert) graded on the expert's own greedy answer: `score` in [0, 1] (`pass_at_1` on code
    tasks, NaN elsewhere) and the `detail` that decided it, the answer's `answer_tokens` and `seconds_per_token`,
    `prompt_tokens`, `n_params` and the weights' `fingerprint`. Answers are kept in `answers_<expert>.jsonl`
    (resumable) and the table in `quality_<expert>.csv` (reused while it covers the tasks); `max_new_tokens` caps
    the answers' budgets (`steer.router.answers.ANSWER_TOKENS`)."""
    from experts.expert import Expert

    frames = []
    for name in tqdm(experts, disable=not progress, desc="quality", unit="expert"):
        frame = stored_quality(out, name)
        if frame is not None and {"score"} <= set(frame.columns) and set(frame.task_id) >= {t.id for t in tasks}:
            frames.append(frame[frame.task_id.isin({t.id for t in tasks})])
            continue
        expert = Expert.load(name)
        answers = generate_answers(expert, tasks, Path(out) / f"answers_{name}.jsonl", batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, progress=progress)
        grades = grade_answers(tasks, answers)
        frame = pd.DataFrame({
            "task_id": [t.id for t in tasks], "expert": name, "score": [g.score for g in grades],
            "pass_at_1": [g.score if t.tests else float("nan") for t, g in zip(tasks, grades)],
            "detail": [g.detail for g in grades],
            "answer_tokens": [answers[t.id].new_tokens for t in tasks],
            "seconds_per_token": [answers[t.id].seconds / max(answers[t.id].new_tokens, 1) for t in tasks],
            "prompt_tokens": [len(ids) for ids in map(expert.encode, expert.format_prompts([t.query for t in tasks]))],
            "n_params": sum(p.numel() for p in expert.model.parameters()), "fingerprint": expert.fingerprint,
        })
        with atomic_path(_table_path(out, name)) as tmp:
            frame.to_csv(tmp, index=False)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)

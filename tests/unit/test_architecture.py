"""The layout's promises, read from the code's imports (an AST walk, nothing imported).

Every import counts: module level, inside functions, and under `if TYPE_CHECKING:` (an annotation is a
dependency too). Layers point one way: `experts` <- `steer` <- `analysis` <- `analysis.cli`.
"""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("experts", "steer", "analysis")
LAYER = {"experts": 0, "steer": 1, "analysis": 2}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        return [target] + [f"{target}.{alias.name}" for alias in node.names]
    return []


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from package import module` counts as the module)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            for name in _imported(node, module, path.name == "__init__.py"):
                # `from experts import hookpoints` names the module; `from experts.x import f` names x
                target = name if name in modules else name.rpartition(".")[0]
                if target in modules and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(_modules())


def test_the_walk_sees_every_kind_of_import():
    """The checker itself: a planted cycle through a function-level and a TYPE_CHECKING import is found."""
    planted = {
        "a": ast.parse("def f():\n    from b import g\n"),
        "b": ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import f\n"),
    }
    graph = {m: {t for node in ast.walk(tree) for t in _imported(node, m, False) if t in planted} for m, tree in planted.items()}
    assert cycles(graph) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules(graph):
    assert cycles(graph) == []


def test_no_import_cycles_between_rooms(graph):
    """The rooms (sub-packages such as `steer.rad`, `steer.router`) depend on each other one way too."""
    def room(module: str) -> str:
        return ".".join(module.split(".")[:2])

    rooms: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        rooms[room(source)] |= {room(t) for t in targets if room(t) != room(source)}
    assert cycles(rooms) == []


def test_layers_point_one_way(graph):
    upward = sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                    if LAYER[target.split(".")[0]] > LAYER[source.split(".")[0]])
    assert upward == [], "experts imports nothing from steer/analysis, steer nothing from analysis"


def test_only_the_command_line_imports_the_command_line(graph):
    callers = sorted(source for source, targets in graph.items() for target in targets
                     if target.startswith("analysis.cli") and not source.startswith("analysis.cli"))
    assert callers == []


def test_the_generation_loop_and_the_capture_do_not_know_the_expert(graph):
    """`Expert` formats and tokenizes, then hands token ids down: data flows down once."""
    for module in ("experts.generate", "experts.capture", "experts.tokens", "experts.hooks", "experts.hookpoints"):
        assert "experts.expert" not in graph.get(module, set()), module

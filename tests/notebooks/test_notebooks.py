"""Every numbered notebook runs end to end on the real default expert, and its .ipynb matches its .py twin."""

from __future__ import annotations

import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 600  # notebook 03's comparison cell ran past 300 s on this machine on 2026-11-30 (with and without
# rows leaving the decode batch); the cause is not yet found


def test_there_are_five_numbered_notebooks():
    assert [path.stem[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_paired_with_its_script(path):
    stored = nbformat.read(path, as_version=4)
    script = jupytext.read(path.with_suffix(".py"))
    assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in script.cells], (
        f"{path.name} and {path.with_suffix('.py').name} differ: run `make notebooks`"
    )
    assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code"), f"{path.name} is stored with outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_end_to_end(path, tmp_path, smollm2, monkeypatch):
    """Executed in a scratch folder (notebooks write under runs/ relative to where they run)."""
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - started
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    print(f"{path.name}: {seconds:.0f} s")  # the budget is 3 minutes on 2 CPU cores; see benchmarks/RESULTS.md

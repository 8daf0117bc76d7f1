"""Every numbered notebook runs end to end on the real default expert, and its .ipynb is its .py twin executed
(stored with outputs by `make notebooks`)."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LANES = 2  # notebooks executed at once: on 2 cores, 02 and 05 side by side (one torch thread each) took 145 s, one
# after the other (two threads each) 209 s, on 2026-12-07
SECONDS = {"01": 65, "02": 127, "03": 53, "04": 146, "05": 145}  # how long each took so (2026-12-07)
CELL_TIMEOUT_S = 600  # notebook 03's comparison cell ran past 300 s on this machine on 2026-11-30 (with and without
# rows leaving the decode batch); the cause is not yet found


def test_there_are_five_numbered_notebooks():
    assert [path.stem[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_with_the_outputs_of_its_committed_script(path):
    """The .ipynb is the .py twin executed: the same cells, every code cell run, and the sha256 of the twin it was
    run from in its metadata (so the outputs on the repository page come from the code committed beside them)."""
    stored = nbformat.read(path, as_version=4)
    twin = path.with_suffix(".py")
    script = jupytext.read(twin)
    assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in script.cells], (
        f"{path.name} and {twin.name} differ: run `make notebooks`"
    )
    recorded = stored.metadata.get("steerlab", {}).get("source_sha256")
    assert recorded == hashlib.sha256(twin.read_bytes()).hexdigest(), (
        f"{path.name}'s outputs come from another version of {twin.name}: run `make notebooks`")
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} has cells that were not run"
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]


def test_the_notebooks_show_their_plots():
    images = {p.stem: sum("image/png" in o.get("data", {}) for c in nbformat.read(p, as_version=4).cells
                          if c.cell_type == "code" for o in c.outputs) for p in NOTEBOOKS}
    assert all(images.values()), f"notebooks stored without a plot: {[k for k, v in images.items() if not v]}"


@pytest.fixture(scope="module")
def executed(smollm2, tmp_path_factory) -> dict[Path, tuple[nbformat.NotebookNode, Exception | None, float]]:
    """Every notebook executed in a scratch folder (notebooks write under runs/ relative to where they run), at the
    notebooks' smaller size (`STEERLAB_NOTEBOOKS=small`: fewer prompts, pairs and problems; the same cells), each in
    a kernel of its own with one torch thread, `LANES` at a time, the longest first."""

    def execute(path: Path) -> tuple[nbformat.NotebookNode, Exception | None, float]:
        notebook = nbformat.read(path, as_version=4)
        folder = tmp_path_factory.mktemp(path.stem)
        started = time.perf_counter()
        try:
            NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                           resources={"metadata": {"path": str(folder)}}).execute()
        except Exception as error:  # the notebook's own test reports it
            return notebook, error, time.perf_counter() - started
        return notebook, None, time.perf_counter() - started

    order = sorted(NOTEBOOKS, key=lambda p: -SECONDS.get(p.stem[:2], 0))
    with pytest.MonkeyPatch.context() as env, ThreadPoolExecutor(LANES) as pool:
        env.setenv("STEERLAB_NOTEBOOKS", "small")
        env.setenv("OMP_NUM_THREADS", "1")  # the kernels' torch: two kernels of one thread on two cores
        return dict(zip(order, pool.map(execute, order)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_end_to_end(path, executed):
    """The stored outputs are the full size's (`make notebooks`); this runs the smaller size from a fresh kernel."""
    notebook, error, seconds = executed[path]
    if error is not None:
        raise error
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    print(f"{path.name}: {seconds:.0f} s")  # two at a time, one thread each, on 2 CPU cores; see benchmarks/RESULTS.md

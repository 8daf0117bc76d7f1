"""Execute each numbered notebook from its `.py` twin on the real experts and save it with its outputs (plots
visible on the repository page). The notebook's metadata records the sha256 of the twin it was executed from, so
the suite can check that committed outputs come from the committed code. Run by `make notebooks`.

    python scripts/execute_notebooks.py [NN ...]   # default: every notebook; e.g. 02 04 for two of them
"""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
WORKDIR = ROOT  # the notebooks write their own files under runs/notebooks/ (not committed)
CELL_TIMEOUT_S = 900


def source_sha256(twin: Path) -> str:
    return hashlib.sha256(twin.read_bytes()).hexdigest()


def execute(twin: Path) -> float:
    """Execute one notebook from its twin and write the `.ipynb` beside it (atomically); returns its seconds."""
    from experts.files import atomic_path

    notebook = jupytext.read(twin)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(WORKDIR)}}).execute()
    seconds = time.perf_counter() - started
    notebook.metadata["steerlab"] = {
        "source": twin.name, "source_sha256": source_sha256(twin), "executed": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds), "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
    }
    with atomic_path(twin.with_suffix(".ipynb")) as tmp:
        nbformat.write(notebook, str(tmp))
    return seconds


def main(argv: list[str]) -> int:
    twins = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    if argv:
        twins = [t for t in twins if t.name[:2] in argv]
    for twin in twins:
        print(f"{twin.name}: executing ...", flush=True)
        print(f"{twin.with_suffix('.ipynb').name}: {execute(twin):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Resumable result folders, shared by every batch job (audits, steering sweeps, RAD sweeps).

A folder holds `run.json`, which names the run (its settings and the expert's weights), and a JSONL row log
appended shard by shard (flushed and fsynced). A killed run resumes: the rows already written stay, only the
missing ones are planned again, whichever backend wrote them. A folder holding another run is refused.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from experts.errors import SteerlabError
from experts.files import append_jsonl, provenance, write_json
from steer.scale.jobs import Executor, LocalExecutor, Shard, ShardJob

if TYPE_CHECKING:
    from experts.expert import Expert

log = logging.getLogger(__name__)
MANIFEST = "run.json"
Row = dict[str, Any]


def claim_folder(out: Path, identity: dict[str, Any], fingerprint: str, rows_name: str) -> None:
    """Create `out` for this run, or accept it if it holds this very run; refuse another run's folder."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    if manifest.exists():
        previous = json.loads(manifest.read_text(encoding="utf-8"))
        if previous.get("config") != identity or previous.get("fingerprint") != fingerprint:
            differing = sorted(k for k in identity if previous.get("config", {}).get(k) != identity[k])
            raise SteerlabError(
                f"{out} holds another run's results (differs in {', '.join(differing) or 'expert weights'}); "
                "choose another --out, or repeat that run's settings to resume it"
            )
    elif (out / rows_name).exists():
        raise SteerlabError(f"{out} holds {rows_name} without a {MANIFEST}; choose another --out")
    else:
        write_json(manifest, {"config": identity, "fingerprint": fingerprint,
                              **provenance(**identity, fingerprint=fingerprint)})


def read_rows(path: Path) -> list[Row]:
    """Rows written so far; a torn last line (a run killed mid-write) is cut off the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(keep)
        log.warning("cut a torn last line off %s", path)
        raw = raw[:keep]
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def missing_shards(settings: Sequence[dict[str, Any]], items: Sequence[tuple[int, int]], done: set[tuple],
                   batch_size: int) -> list[Shard]:
    """One shard per setting and batch of its (prompt_id, sample) items not yet `done`. A row is done when
    `(*setting.values(), prompt_id, sample)` is in `done`."""
    shards = []
    for setting in settings:
        todo = [[p, s] for p, s in items if (*setting.values(), p, s) not in done]
        shards += [{**setting, "items": todo[start : start + batch_size]} for start in range(0, len(todo), batch_size)]
    return shards


def run_shards(executor: Executor | None, job: ShardJob, shards: Sequence[Shard], expert: Expert | None, path: Path, *,
               finish: Callable[[list[Row]], list[Row]] | None = None, progress: bool = True, desc: str = "rows") -> None:
    """Run `shards` on `executor` (default: this process) and append each shard's rows, `finish`ed (e.g. scored
    here), to `path` as it arrives."""
    bar = tqdm(total=sum(len(s["items"]) for s in shards), disable=not progress, desc=desc, unit="row")
    for rows in (executor or LocalExecutor()).run(job, shards, expert):
        append_jsonl(path, finish(rows) if finish else rows)
        bar.update(len(rows))
    bar.close()


def run_grid(job: ShardJob, expert: Expert, out: Path | None, rows_name: str, identity: dict[str, Any],
             plan: Sequence[dict[str, Any]], items: Sequence[tuple[int, int]], batch_size: int, *,
             executor: Executor | None = None, finish: Callable[[list[Row]], list[Row]] | None = None,
             progress: bool = True, desc: str = "rows") -> list[Row]:
    """Every row of `plan` (settings such as a condition and a coefficient) × (prompt_id, sample) `items`. Rows
    not yet in `out`'s checkpoint run on `executor` in batches of `batch_size` items; all come back in plan
    order, so a resumed run's tables equal an uninterrupted run's. Without `out`, the checkpoint lives in a
    temporary folder."""
    def key(row: Row) -> tuple:
        return (*(row[name] for name in plan[0]), row["prompt_id"], row["sample"])

    with tempfile.TemporaryDirectory(prefix="steerlab-run-") as scratch:
        folder = Path(out) if out is not None else Path(scratch)
        claim_folder(folder, json.loads(json.dumps(identity)), expert.fingerprint, rows_name)
        done = {key(r) for r in read_rows(folder / rows_name)}
        run_shards(executor, job, missing_shards(plan, items, done, batch_size), expert, folder / rows_name,
                   finish=finish, progress=progress, desc=desc)
        rank = {k: n for n, k in enumerate((*setting.values(), i, s) for setting in plan for i, s in items)}
        return sorted(read_rows(folder / rows_name), key=lambda r: rank[key(r)])

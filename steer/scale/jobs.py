"""Where batch work runs. A job is split into shards (plain JSON dicts); an executor runs each shard on a
worker that set the job up once (loaded the expert, its vector or reward) and yields the rows of every shard
in shard order. The caller writes the rows, so both backends fill the same files and resume alike.

`LocalExecutor` runs in this process (the default). `RayExecutor` (`steer.scale.ray_backend`, the optional
`steerlab[ray]` extra) runs the shards on a Ray cluster's actor pool.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from experts.errors import SteerlabError

if TYPE_CHECKING:
    from experts.expert import Expert

Shard = dict[str, Any]


class ShardJob(Protocol):
    """Picklable: it travels to every worker. `setup` runs once per worker; `run` once per shard."""

    def setup(self, expert: Expert | None = None) -> Any: ...

    def run(self, state: Any, shard: Shard) -> list[dict[str, Any]]: ...


class Executor(Protocol):
    def run(self, job: ShardJob, shards: Sequence[Shard], expert: Expert | None = None) -> Iterator[list[dict[str, Any]]]:
        """The rows of each shard, in shard order; `expert` is an already loaded expert a local worker may reuse."""
        ...


@dataclass(frozen=True)
class LocalExecutor:
    """Every shard in this process, one after another."""

    def run(self, job: ShardJob, shards: Sequence[Shard], expert: Expert | None = None) -> Iterator[list[dict[str, Any]]]:
        if not shards:
            return
        state = job.setup(expert)
        for shard in shards:
            yield job.run(state, shard)


def worker_expert(name: str, fingerprint: str, expert: Expert | None = None) -> Expert:
    """The expert a worker runs: the caller's own (local) or loaded by name, and checked to be the same weights
    the run's manifest names (a cluster node with other weights under that name is refused)."""
    from experts.expert import Expert

    expert = expert or Expert.load(name)
    if expert.fingerprint != fingerprint:
        raise SteerlabError(f"this worker's {name!r} has weights {expert.fingerprint}; the run was planned with {fingerprint}")
    return expert


@contextmanager
def carried_files(files: dict[str, bytes]) -> Iterator[dict[str, Path]]:
    """A job's files (vectors, rewards: their bytes travel with the job) written to a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="steerlab-job-") as folder:
        paths = {}
        for name, data in files.items():
            paths[name] = Path(folder) / f"{len(paths)}.safetensors"
            paths[name].write_bytes(data)
        yield paths


def saved_bytes(artefact: Any) -> bytes:
    """A vector's or reward's file contents (anything with `.save(path)`), to travel with a job."""
    with tempfile.TemporaryDirectory(prefix="steerlab-job-") as folder:
        path = Path(folder) / "artefact.safetensors"
        artefact.save(path)
        return path.read_bytes()

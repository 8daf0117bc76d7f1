"""The Ray backend: shards as one Ray Data job over an actor pool. The only module that imports `ray`.

Each actor sets the job up once (importing torch and loading the expert are the expensive part), then
runs shard after shard. Results stream back in shard order (`preserve_order`), so the caller appends them
to the same files, in the same order, as the local backend. Actors take a fraction of a CPU by default
(whole-CPU actors can starve a 2-CPU machine) and one GPU each when the cluster has GPUs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from experts.errors import SteerlabError
from steer.scale.jobs import Shard, ShardJob

if TYPE_CHECKING:
    from experts.expert import Expert

INSTALL_HINT = "pip install 'steerlab[ray]'"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SteerlabError(f"the ray backend needs the optional Ray extra; install it with: {INSTALL_HINT}") from None
    return ray


class _Worker:
    """One actor: the job set up once, then one shard per call."""

    def __init__(self, job: ShardJob, threads: int):
        import torch

        torch.set_num_threads(threads)  # Ray gives an actor one thread per whole CPU it holds (at least one)
        self.job = job
        self.state = job.setup(None)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [json.dumps(self.job.run(self.state, json.loads(shard))) for shard in batch["shard"]]
        return {"index": list(batch["index"]), "rows": rows}


@dataclass(frozen=True)
class RayExecutor:
    """`address=None` joins the cluster of `RAY_ADDRESS` or starts a local one; `"auto"` or `ray://host:port`
    joins an existing one. `gpus_per_worker=None` gives each actor a whole GPU when the cluster has GPUs.
    `threads_per_worker=None` gives each actor this process's torch thread count, so that its rows equal the
    local backend's bit for bit; on a cluster, set it to the CPUs each worker has (metrics then agree to float
    precision)."""

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 0.5
    gpus_per_worker: float | None = None
    threads_per_worker: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise SteerlabError(f"--workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise SteerlabError(f"CPUs per worker must be positive, got {self.cpus_per_worker}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise SteerlabError(f"--threads-per-worker must be at least 1, got {self.threads_per_worker}")

    def _threads(self) -> int:
        """This process's torch thread count unless told otherwise: a float sum split over another number of
        threads differs in its last bits, and rows must equal the local backend's bit for bit."""
        import torch

        return self.threads_per_worker or torch.get_num_threads()

    def _connect(self):
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return ray

    def run(self, job: ShardJob, shards: Sequence[Shard], expert: Expert | None = None) -> Iterator[list[dict[str, Any]]]:
        if not shards:
            return
        ray = self._connect()
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        items = [{"index": i, "shard": json.dumps(shard)} for i, shard in enumerate(shards)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _Worker, fn_constructor_args=(job, self._threads()), batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(items))),
            num_cpus=self.cpus_per_worker, num_gpus=gpus or None)
        expected = 0
        for row in dataset.iter_rows():
            if row["index"] != expected:
                raise SteerlabError(f"the Ray backend returned shard {row['index']} where shard {expected} was due")
            expected += 1
            yield json.loads(row["rows"])

"""Choosing where batch work runs, by name: `local` (this process) or `ray` (an actor pool)."""

from __future__ import annotations

from experts.errors import SteerlabError
from steer.scale.jobs import Executor, LocalExecutor

BACKENDS = ("local", "ray")


def executor_for(backend: str = "local", *, address: str | None = None, workers: int = 2, cpus_per_worker: float = 0.5,
                 gpus_per_worker: float | None = None, threads_per_worker: int | None = None) -> Executor:
    """The executor a command asked for (`--backend`, `--address`, `--workers`, `--*-per-worker`)."""
    if backend == "local":
        if address:
            raise SteerlabError("--address names a Ray cluster; it needs --backend ray")
        return LocalExecutor()
    if backend == "ray":
        from steer.scale.ray_backend import RayExecutor

        return RayExecutor(address=address, workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                           threads_per_worker=threads_per_worker)
    raise SteerlabError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")

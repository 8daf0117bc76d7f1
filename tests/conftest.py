"""Shared fixtures: tiny experts built in-process (milliseconds), one real expert per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from experts.expert import Expert  # noqa: E402
from experts.hooks import count_forward_hooks  # noqa: E402

TINY_NAMES = ("tiny-llama", "tiny-gemma")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", params=TINY_NAMES)
def tiny(request) -> Expert:
    return Expert.load(request.param)


@pytest.fixture(scope="session")
def tiny_llama() -> Expert:
    return Expert.load("tiny-llama")


@pytest.fixture(scope="session")
def smollm2() -> Expert:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return Expert.load("smollm2-135m-instruct")


@pytest.fixture
def no_leak():
    """Asserts after the test that no forward hook is left on the experts it used."""
    experts: list[Expert] = []
    yield experts.append
    for expert in experts:
        assert count_forward_hooks(expert.model) == 0


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the session: 2 CPUs, as CI has (actors take fractional CPUs)."""
    ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install 'steerlab[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()

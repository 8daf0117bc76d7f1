"""The stack installs the same way twice: pyproject's pins agree with requirements.lock, which pins
everything but torch, and the demo's install leaves out what only the tests use."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines):
    pins = {}
    for line in lines:
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_pyproject_pins_equal_the_lock():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        direct += [d for d in extra if not d.startswith("steerlab[")]
    declared = _pins(direct)
    assert len(declared) == len(direct), "every direct dependency is pinned with =="
    locked = _pins((ROOT / "requirements.lock").read_text().splitlines())
    assert "torch" not in locked and declared.pop("torch") == "2.13.0"
    assert {name: locked.get(name) for name in declared} == declared


def test_the_demo_install_has_no_ray_or_jupyter():
    makefile = (ROOT / "Makefile").read_text()
    demo = re.search(r"^\$\(DEMO_STAMP\):.*?\n\n", makefile, re.S | re.M).group(0)
    assert "'.[stats]'" in demo and "dev" not in demo and "ray" not in demo
    assert "-c $(LOCK)" in makefile and "TORCH_INDEX" in makefile


def test_license_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_warnings_from_our_modules_are_errors_in_the_suite():
    import warnings

    import pytest

    for category in (DeprecationWarning, UserWarning, FutureWarning):
        with pytest.raises(category):
            warnings.warn_explicit("from our code", category, "steer/x.py", 1, module="steer.x")
    with pytest.raises(FutureWarning):  # FutureWarnings from anywhere: transformers' removals come through torch
        warnings.warn_explicit("a removal", FutureWarning, "torch/nn/modules/module.py", 1, module="torch.nn.modules.module")
    with warnings.catch_warnings(record=True):
        warnings.warn_explicit("theirs", DeprecationWarning, "ray/data/context.py", 1, module="ray.data.context")

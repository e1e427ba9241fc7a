# Quick start: `make bench` (the main job) and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv test conformance conformance-update bench bench-quick demo clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# mpi4py 4.1.2's own test suite on driller.MPI at 1, 2 and 3 ranks (fetched once into
# .cache/conformance/); fails below tests/conformance_baseline.json, on a hang or a crash
conformance: $(STAMP)
	$(PY) tools/conformance.py

conformance-update: $(STAMP)
	$(PY) tools/conformance.py --update-baseline

bench: $(STAMP)
	$(VENV)/bin/driller bench

bench-quick: $(STAMP)
	$(VENV)/bin/driller bench --quick

demo: $(STAMP)
	$(PY) -m driller demo

clean:
	rm -rf $(VENV) build src/*.egg-info bench-results .pytest_cache conformance-results.json
